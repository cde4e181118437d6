import Controller
import NIOCore
import Router
import SwitchyardCore

/// A dry run of one message through identity, filters, classifier, lanes and router.
public struct ExplainRequest: Sendable, Decodable {
    public var topic: String
    public var device: String?
    public var product: String?
    public var headers: [String: String]?
    public var payload: String?
    public var channel: String?

    public init(
        topic: String,
        device: String? = nil,
        product: String? = nil,
        headers: [String: String]? = nil,
        payload: String? = nil,
        channel: String? = nil
    ) {
        self.topic = topic
        self.device = device
        self.product = product
        self.headers = headers
        self.payload = payload
        self.channel = channel
    }
}

public struct ExplainReport: Sendable, Encodable {
    public struct Message: Sendable, Encodable {
        var topic: String
        var channel: String
        var device: String?
        var product: String?
        var payloadBytes: Int
    }
    var message: Message
    var problems: [String]
    var identity: String
    var strippedHeaders: [String]
    var filters: [FilterVerdict]
    var admission: String
    var tags: [String: String]
    var matchedTagRules: [Int]
    var lane: String
    var laneReason: String
    var route: Router.Explanation?
}

enum Explainer {
    static func explain(_ request: ExplainRequest, snapshot: PipelineSnapshot) -> ExplainReport {
        var problems: [String] = []
        if let p = TopicName.problem(with: request.topic) { problems.append("topic: \(p) (the HTTP channel would answer 400)") }
        let headers = (request.headers ?? [:]).map { HeaderField($0.key.lowercased(), $0.value) }
        let stripped = headers.filter { $0.name.hasPrefix("x-switchyard-") }.map(\.name).sorted()
        var envelope = Envelope(
            id: MessageID.generate(),
            channel: request.channel ?? "http",
            topic: request.topic,
            product: request.product,
            device: request.device,
            payload: ByteBuffer(string: request.payload ?? ""),
            headers: headers.filter { !$0.name.hasPrefix("x-switchyard-") },
            receivedAt: WallClock.nowNanos(),
            trace: .generate()
        )
        var identity = "from the request (no device pattern matched the topic)"
        let (product, device) = snapshot.controller.identify(topic: request.topic)
        if device != nil || product != nil { identity = "from the topic's device pattern" }
        if let rejection = Pipeline.identify(&envelope, controller: snapshot.controller) {
            problems.append(rejection.message + " (the channel would answer 400)")
        }
        let c = snapshot.controller.explain(envelope)
        envelope.tags = c.tags
        envelope.lane = c.lane
        return ExplainReport(
            message: .init(
                topic: envelope.topic,
                channel: envelope.channel,
                device: envelope.device,
                product: envelope.product,
                payloadBytes: envelope.payload.readableBytes
            ),
            problems: problems,
            identity: identity,
            strippedHeaders: stripped,
            filters: c.filters,
            admission: c.admission,
            tags: c.tags,
            matchedTagRules: c.matchedTagRules,
            lane: c.lane ?? "baseline",
            laneReason: c.laneReason,
            route: c.admission == "accepted" ? snapshot.router.explain(envelope) : nil
        )
    }
}
