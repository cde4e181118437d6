public import NIOCore

/// Why the filter chain refused a message, and how the channel should answer.
public struct Rejection: Sendable, Equatable {
    /// The filter that refused (`source`, `max_payload`, `rate_limit(device)`, …).
    public var filter: String
    /// Metric label and machine-readable code (`rate_limited`, `device_denied`, …).
    public var reason: String
    /// The HTTP status a request channel answers with (403, 413, 429).
    public var status: Int
    /// A sentence for the sender.
    public var message: String
    /// Seconds after which a retry can pass (rate limits only).
    public var retryAfterSeconds: Double?

    public init(filter: String, reason: String, status: Int, message: String, retryAfterSeconds: Double? = nil) {
        self.filter = filter
        self.reason = reason
        self.status = status
        self.message = message
        self.retryAfterSeconds = retryAfterSeconds
    }
}

/// What a channel's sink answers for one envelope.
public enum SubmitResult: Sendable, Equatable {
    /// Taken: the sender may consider it delivered to Switchyard.
    case accepted
    /// Seen before within the dedup window: acknowledged, not delivered again.
    case duplicate
    case rejected(Rejection)
}

/// Where channels hand envelopes. Implemented by the server's pipeline (controller →
/// router) and by an in-memory sink in `SwitchyardTesting`.
public protocol MessageSink: Sendable {
    /// (`consuming`, as the others: the sink takes the envelope over and changes it in place.)
    func submit(_ envelope: consuming Envelope, on loop: any EventLoop) -> EventLoopFuture<SubmitResult>
    /// Several envelopes from one request: one result per envelope, in order. Accepted ones
    /// are acknowledged together (one journal commit).
    /// (`consuming`: the sink takes the envelopes over, so admitting one changes it in place.)
    func submit(batch: consuming [Envelope], on loop: any EventLoop) -> EventLoopFuture<[SubmitResult]>
    /// Like `submit`, but an answer known at once (refused by a filter, or taken without the
    /// journal) comes back as a value: no future, no hop (the MQTT hot path).
    func submitting(_ envelope: consuming Envelope, on loop: any EventLoop) -> Submission
    /// For a channel with its own subscribers (MQTT), before it builds an envelope: true when a
    /// message on `topic` from this sender (`product`/`device`: its authenticated identity)
    /// would only be counted and passed to subscribers — no route takes it and no filter could
    /// refuse it. It is then counted (received, outcome `broker_only`) and needs no envelope.
    func takesBrokerOnly(channel: String, topic: String, product: String?, device: String?) -> Bool
}

/// The answer to a submission: now, or once the journal committed.
public enum Submission: Sendable {
    case now(SubmitResult)
    case later(EventLoopFuture<SubmitResult>)
}

extension MessageSink {
    public func submitting(_ envelope: consuming Envelope, on loop: any EventLoop) -> Submission {
        .later(submit(envelope, on: loop))
    }

    /// Sinks without broker-only channels take every message through `submit`.
    public func takesBrokerOnly(channel: String, topic: String, product: String?, device: String?) -> Bool { false }

    /// One by one, for sinks with nothing to gain from a group.
    public func submit(batch: consuming [Envelope], on loop: any EventLoop) -> EventLoopFuture<[SubmitResult]> {
        EventLoopFuture.whenAllSucceed(batch.map { submit($0, on: loop) }, on: loop)
    }
}
