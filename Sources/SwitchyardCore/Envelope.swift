// SwitchyardCore: the values every layer shares (envelope, lanes, instances, trace
// context, configuration model) and the protocols the adapters implement.
public import NIOCore

/// One message on its way through Switchyard: what a channel received, plus what the
/// controller learned about it (identity, tags, lane).
public struct Envelope: Sendable {
    /// Stable id: the sender's message id when given, otherwise generated.
    public var id: String
    /// The channel it arrived on (`http`, later `mqtt`, `amqp`, `http2`).
    public var channel: String
    public var topic: String
    public var product: String?
    public var device: String?
    public var payload: ByteBuffer
    /// Sender headers as received (lower-cased names), minus those Switchyard owns.
    public var headers: [(name: String, value: String)]
    public var tags: [String: String]
    /// Assigned lane; `nil` is the baseline.
    public var lane: String?
    /// Wall-clock receive time, nanoseconds since the Unix epoch.
    public var receivedAt: UInt64
    public var trace: TraceContext
    /// Address of the peer that sent it, when the channel knows it.
    public var clientAddress: SocketAddress?
    /// True when `id` came from the sender (only those ids are checked for duplicates).
    public var idFromSender: Bool

    public init(
        id: String,
        channel: String,
        topic: String,
        product: String? = nil,
        device: String? = nil,
        payload: ByteBuffer,
        headers: [(name: String, value: String)] = [],
        tags: [String: String] = [:],
        lane: String? = nil,
        receivedAt: UInt64,
        trace: TraceContext,
        clientAddress: SocketAddress? = nil,
        idFromSender: Bool = false
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

    /// The first header with this (lower-case) name.
    public func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value
    }
}
