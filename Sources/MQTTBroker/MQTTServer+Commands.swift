import MQTTWire
import NIOConcurrencyHelpers
public import NIOCore
import SwitchyardCore

/// Downlink: commands to a device, published with QoS 1 on `{command topic}/{id}` (the device
/// subscribes to `{command topic}/+`). The device answers on `{command topic}/{id}/reply` —
/// v5 clients also get that as Response Topic, with the id as Correlation Data.
extension MQTTServer {
    public enum CommandOutcome: Sendable {
        /// Published to this many connections; nobody waits for a reply.
        case sent(id: String, topic: String, connections: Int)
        /// Nobody connected; waiting in this many kept sessions of the device (asked with `queue`).
        case queued(id: String, topic: String, sessions: Int)
        case replied(id: String, payload: ByteBuffer, contentType: String?)
        /// No connection is subscribed to the device's command topic.
        case offline(topic: String)
        case noReply(id: String, waitedSeconds: Double)
    }

    /// Publishes a command; with `wait`, completes with the device's reply or `noReply`. With
    /// `queue`, a device that is away gets it in its kept session when it comes back.
    public func sendCommand(
        product: String,
        device: String,
        payload: ByteBuffer,
        contentType: String?,
        wait: TimeAmount?,
        queue: Bool = false,
        on loop: any EventLoop
    ) -> EventLoopFuture<CommandOutcome> {
        let id = MessageID.generate()
        let base = commandTopic.replacing("{product}", with: product).replacing("{device}", with: device)
        let topic = "\(base)/\(id)"
        var properties = MQTTProperties()
        properties.responseTopic = "\(topic)/reply"
        properties.correlationData = ByteBuffer(string: id)
        properties.contentType = contentType
        let publish = MQTTPacket.Publish(topic: topic, payload: payload, qos: .atLeastOnce, properties: properties)
        var promise: EventLoopPromise<CommandOutcome>?
        if wait != nil {
            let p = loop.makePromise(of: CommandOutcome.self)
            promise = p
            replies.withLockedValue { $0[id] = p }
        }
        let result = fanOut(publish, from: nil, queueOffline: queue)
        let reached = result.online
        guard reached > 0 else {
            replies.withLockedValue { _ = $0.removeValue(forKey: id) }
            if result.queued > 0 {
                let queued = CommandOutcome.queued(id: id, topic: topic, sessions: result.queued)
                promise?.succeed(queued)
                return promise?.futureResult ?? loop.makeSucceededFuture(queued)
            }
            promise?.succeed(.offline(topic: "\(base)/+"))
            return promise?.futureResult ?? loop.makeSucceededFuture(.offline(topic: "\(base)/+"))
        }
        guard let wait, let promise else { return loop.makeSucceededFuture(.sent(id: id, topic: topic, connections: reached)) }
        let timeout = loop.scheduleTask(in: wait) { [self] in
            if replies.withLockedValue({ $0.removeValue(forKey: id) }) != nil {
                promise.succeed(.noReply(id: id, waitedSeconds: Double(wait.nanoseconds) / 1e9))
            }
        }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        return promise.futureResult
    }

    /// A device publish on `{…}/{id}/reply` answers a waiting command.
    func completeCommand(_ publish: MQTTPacket.Publish) {
        guard publish.topic.hasSuffix("/reply") else { return }
        let levels = publish.topic.split(separator: "/")
        guard levels.count >= 2 else { return }
        let id = String(levels[levels.count - 2])
        guard let promise = replies.withLockedValue({ $0.removeValue(forKey: id) }) else { return }
        promise.succeed(.replied(id: id, payload: publish.payload, contentType: publish.properties.contentType))
    }
}
