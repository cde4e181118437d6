public import NIOCore
import NIOHTTP1
public import SwitchyardCore

/// The HTTP message channel: `POST /v1/messages/{topic…}` with the payload as body.
///
/// Answers 202 with the message id once the sink accepted it; 400 for malformed input,
/// 403 when a filter refuses, 413 too large, 429 rate-limited (with `Retry-After`).
public struct MessageIngestResponder: HTTPResponder {
    public struct Options: Sendable {
        public var deviceHeader = "x-device-id"
        public var productHeader = "x-product-key"
        public var messageIDHeader = "x-message-id"
        public var channelName = "http"
        /// Most messages one `POST /v1/batch` may carry.
        public var maxBatchItems = 1000
        public init() {}
    }

    public static let pathPrefix = MessageEndpoints.messagePrefix
    public static let batchPath = MessageEndpoints.batchPath

    let sink: any MessageSink
    let options: Options
    let onMalformed: @Sendable (String) -> Void

    /// `onMalformed` is told the reason for each request refused before it became an envelope.
    public init(sink: any MessageSink, options: Options, onMalformed: @escaping @Sendable (String) -> Void = { _ in }) {
        self.sink = sink
        self.options = options
        self.onMalformed = onMalformed
    }

    public func respond(to request: IncomingRequest, on loop: any EventLoop) -> EventLoopFuture<OutgoingResponse> {
        if request.path == Self.batchPath { return respondToBatch(request, on: loop) }
        switch makeEnvelope(request) {
        case .failure(let bad):
            onMalformed(bad.code)
            return loop.makeSucceededFuture(bad.response)
        case .success(let envelope):
            let id = envelope.id
            return sink.submit(consume envelope, on: loop).map { result in
                switch result {
                case .accepted:
                    return Self.acceptedResponse(id: id, status: "accepted")
                case .duplicate:
                    return Self.acceptedResponse(id: id, status: "duplicate")
                case .rejected(let r):
                    var headers = HTTPHeaders()
                    if let wait = r.retryAfterSeconds { headers.add(name: "retry-after", value: Self.retryAfter(wait)) }
                    return .json(HTTPResponseStatus(statusCode: r.status), Self.rejectionJSON(r, id: id), headers: headers)
                }
            }
        }
    }

    static let jsonHeaders: HTTPHeaders = ["content-type": "application/json"]

    /// `202 {"id": …, "status": …}`, written straight into its buffer (once per message).
    static func acceptedResponse(id: String, status: StaticString) -> OutgoingResponse {
        var body = ByteBufferAllocator().buffer(capacity: id.utf8.count * 2 + 40)
        body.writeStaticString("{\"id\":")
        JSONText.writeQuoted(id, into: &body)
        body.writeStaticString(",\"status\":\"")
        body.writeStaticString(status)
        body.writeStaticString("\"}")
        return OutgoingResponse(status: .accepted, headers: jsonHeaders, body: body)
    }

    static func retryAfter(_ seconds: Double) -> String { String(max(1, Int(seconds.rounded(.up)))) }

    static func rejectionJSON(_ r: Rejection, id: String) -> String {
        "{\"error\":\(JSONText.quote(r.reason)),\"filter\":\(JSONText.quote(r.filter)),"
            + "\"message\":\(JSONText.quote(r.message)),\"id\":\(JSONText.quote(id))}"
    }

    struct BadRequest: Error {
        var code: String
        var response: OutgoingResponse
        init(_ status: HTTPResponseStatus, _ code: String, _ message: String, headers: HTTPHeaders = [:]) {
            self.code = code
            response = .error(status, code, message, headers: headers)
        }
    }

    /// Validates the request and builds the envelope (identity from headers; the sink
    /// adds what the topic patterns say).
    func makeEnvelope(_ request: IncomingRequest) -> Result<Envelope, BadRequest> {
        let path = request.path
        guard path.hasPrefix(Self.pathPrefix) else {
            return .failure(BadRequest(.notFound, "not_found", "no such endpoint; messages go to POST \(Self.pathPrefix){topic}"))
        }
        guard request.method == .POST else {
            return .failure(BadRequest(.methodNotAllowed, "method_not_allowed", "use POST", headers: ["allow": "POST"]))
        }
        guard let topic = PercentDecoding.decode(path.dropFirst(Self.pathPrefix.count)) else {
            return .failure(BadRequest(.badRequest, "malformed_topic", "topic is not valid percent-encoded UTF-8"))
        }
        if let problem = TopicName.problem(with: topic) {
            return .failure(BadRequest(.badRequest, "malformed_topic", problem))
        }
        guard request.body.readableBytes > 0 else {
            return .failure(BadRequest(.badRequest, "empty_payload", "the request body (the message payload) is empty"))
        }
        let device: String?
        let product: String?
        let senderID: String?
        switch (identityHeader(options.deviceHeader, request), identityHeader(options.productHeader, request)) {
        case (.failure(let bad), _), (_, .failure(let bad)): return .failure(bad)
        case (.success(let d), .success(let p)): (device, product) = (d, p)
        }
        switch identityHeader(options.messageIDHeader, request) {
        case .failure(let bad): return .failure(bad)
        case .success(let id): senderID = id
        }
        if let id = senderID, !MessageID.isValid(id) {
            return .failure(
                BadRequest(.badRequest, "malformed_header", "header \(options.messageIDHeader) must be printable ASCII without spaces, ≤ 128 bytes")
            )
        }
        var headers: [HeaderField] = []  // (no storage until a header is kept: often none is)
        for (name, value) in request.headers {
            let lower = name.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) ? name.lowercased() : name
            if Self.isReserved(lower) { continue }
            if headers.isEmpty { headers.reserveCapacity(request.headers.count) }
            headers.append(HeaderField(lower, value))
        }
        let trace = Self.trace(request.headers.first(name: "traceparent"), baggage: request.headers.first(name: "baggage"))
        let now = WallClock.nowNanos()
        return .success(
            Envelope(
                id: senderID ?? MessageID.generate(nowNanos: now),
                channel: options.channelName,
                topic: topic,
                product: product,
                device: device,
                payload: request.body,
                headers: headers,
                receivedAt: now,
                trace: trace,
                clientAddress: request.remoteAddress,
                idFromSender: senderID != nil
            )
        )
    }

    /// An identity header's value (nil when absent): clean text of 1…256 bytes.
    func identityHeader(_ name: String, _ request: IncomingRequest) -> Result<String?, BadRequest> {
        guard let value = request.headers.first(name: name) else { return .success(nil) }
        guard Self.isCleanHeaderValue(value) else {
            return .failure(BadRequest(.badRequest, "malformed_header", "header \(name) is not valid UTF-8 text"))
        }
        if value.isEmpty || value.utf8.count > 256 {
            return .failure(BadRequest(.badRequest, "malformed_header", "header \(name) must be 1…256 bytes"))
        }
        return .success(value)
    }

    /// Switchyard's own headers are assigned here, never taken from the sender; hop-by-hop ones do not travel.
    static func isReserved(_ lowercasedName: String) -> Bool {
        lowercasedName.hasPrefix("x-switchyard-") || lowercasedName == "host" || lowercasedName == "content-length"
            || lowercasedName == "connection"
    }

    static func trace(_ traceparent: String?, baggage: String?) -> TraceContext {
        TraceContext(traceparent: traceparent, baggage: baggage) ?? .generate(baggage: baggage)
    }

    /// NIO decodes header bytes leniently (invalid UTF-8 becomes U+FFFD); refuse those and control characters.
    static func isCleanHeaderValue(_ value: String) -> Bool {
        value.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7F && $0.value != 0xFFFD }
    }
}
