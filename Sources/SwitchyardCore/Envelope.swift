// SwitchyardCore: the values every layer shares (envelope, lanes, instances, trace
// context, configuration model) and the protocols the adapters implement.
public import NIOCore

/// One message on its way through Switchyard: what a channel received, plus what the
/// controller learned about it (identity, tags, lane).
///
/// A copy-on-write value: copies (into closures, retries, dead letters) cost one retain,
/// not one per field.
public struct Envelope: Sendable {
    @usableFromInline
    final class Storage: @unchecked Sendable {
        // @unchecked: only mutated through `Envelope`'s copy-on-write setters.
        @usableFromInline var id: String
        @usableFromInline var channel: String
        @usableFromInline var topic: String
        @usableFromInline var product: String?
        @usableFromInline var device: String?
        @usableFromInline var payload: ByteBuffer
        @usableFromInline var headers: [HeaderField]
        @usableFromInline var tags: [String: String]
        @usableFromInline var lane: String?
        @usableFromInline var receivedAt: UInt64
        @usableFromInline var trace: TraceContext
        @usableFromInline var clientAddress: SocketAddress?
        @usableFromInline var idFromSender: Bool

        init(
            id: String,
            channel: String,
            topic: String,
            product: String?,
            device: String?,
            payload: ByteBuffer,
            headers: [HeaderField],
            tags: [String: String],
            lane: String?,
            receivedAt: UInt64,
            trace: TraceContext,
            clientAddress: SocketAddress?,
            idFromSender: Bool
        ) {
            self.id = id
            self.channel = channel
            self.topic = topic
            self.product = product
            self.device = device
            self.payload = payload
            self.headers = headers
            self.tags = tags
            self.lane = lane
            self.receivedAt = receivedAt
            self.trace = trace
            self.clientAddress = clientAddress
            self.idFromSender = idFromSender
        }

        @usableFromInline
        func copy() -> Storage {
            Storage(
                id: id,
                channel: channel,
                topic: topic,
                product: product,
                device: device,
                payload: payload,
                headers: headers,
                tags: tags,
                lane: lane,
                receivedAt: receivedAt,
                trace: trace,
                clientAddress: clientAddress,
                idFromSender: idFromSender
            )
        }
    }

    @usableFromInline var storage: Storage

    @inlinable
    mutating func unique() -> Storage {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        return storage
    }

    public init(
        id: String,
        channel: String,
        topic: String,
        product: String? = nil,
        device: String? = nil,
        payload: ByteBuffer,
        headers: [HeaderField] = [],
        tags: [String: String] = [:],
        lane: String? = nil,
        receivedAt: UInt64,
        trace: TraceContext,
        clientAddress: SocketAddress? = nil,
        idFromSender: Bool = false
    ) {
        storage = Storage(
            id: id,
            channel: channel,
            topic: topic,
            product: product,
            device: device,
            payload: payload,
            headers: headers,
            tags: tags,
            lane: lane,
            receivedAt: receivedAt,
            trace: trace,
            clientAddress: clientAddress,
            idFromSender: idFromSender
        )
    }

    /// Stable id: the sender's message id when given, otherwise generated.
    @inlinable public var id: String {
        get { storage.id }
        set { unique().id = newValue }
    }
    /// The channel it arrived on (`http`, later `mqtt`, `amqp`, `http2`).
    @inlinable public var channel: String {
        get { storage.channel }
        set { unique().channel = newValue }
    }
    @inlinable public var topic: String {
        get { storage.topic }
        set { unique().topic = newValue }
    }
    @inlinable public var product: String? {
        get { storage.product }
        set { unique().product = newValue }
    }
    @inlinable public var device: String? {
        get { storage.device }
        set { unique().device = newValue }
    }
    @inlinable public var payload: ByteBuffer {
        get { storage.payload }
        set { unique().payload = newValue }
    }
    /// Sender headers as received (lower-cased names), minus those Switchyard owns.
    @inlinable public var headers: [HeaderField] {
        get { storage.headers }
        set { unique().headers = newValue }
        _modify { yield &unique().headers }  // in place: no copy of the array per change
    }
    @inlinable public var tags: [String: String] {
        get { storage.tags }
        set { unique().tags = newValue }
        _modify { yield &unique().tags }  // in place: setting one tag does not copy the dictionary
    }
    /// Assigned lane; `nil` is the baseline.
    @inlinable public var lane: String? {
        get { storage.lane }
        set { unique().lane = newValue }
    }
    /// Wall-clock receive time, nanoseconds since the Unix epoch.
    @inlinable public var receivedAt: UInt64 {
        get { storage.receivedAt }
        set { unique().receivedAt = newValue }
    }
    @inlinable public var trace: TraceContext {
        get { storage.trace }
        set { unique().trace = newValue }
    }
    /// Address of the peer that sent it, when the channel knows it.
    @inlinable public var clientAddress: SocketAddress? {
        get { storage.clientAddress }
        set { unique().clientAddress = newValue }
    }
    /// True when `id` came from the sender (only those ids are checked for duplicates).
    @inlinable public var idFromSender: Bool {
        get { storage.idFromSender }
        set { unique().idFromSender = newValue }
    }

    /// Each tag in key order (a single tag, the common case, without sorting): the order
    /// every encoding of the tags uses (journal records, forwarded headers, batch bodies).
    public func forEachTagInKeyOrder(_ body: (_ name: String, _ value: String) -> Void) {
        let tags = storage.tags
        if tags.count == 1, let (name, value) = tags.first { return body(name, value) }
        for (name, value) in tags.sorted(by: { $0.key < $1.key }) { body(name, value) }
    }

    /// The first header with this (lower-case) name.
    public func header(_ name: String) -> String? {
        storage.headers.first { $0.name == name }?.value
    }
}
