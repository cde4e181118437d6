import MQTTWire
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import SwitchyardCore
import Synchronization

/// Broker statistics: bytes and messages in and out (metrics, and `$SYS/broker/…` topics as
/// Mosquitto publishes them), and the listener's connection rate limit.
final class MQTTStats: Sendable {
    let startedAt = SystemMonotonicClock().nowNanos()
    let bytesIn = Atomic<Int>(0)
    let bytesOut = Atomic<Int>(0)
    let messagesIn = Atomic<Int>(0)
    let messagesOut = Atomic<Int>(0)
    let bytesInCounter = Counter(label: "switchyard_mqtt_bytes_in_total")
    let bytesOutCounter = Counter(label: "switchyard_mqtt_bytes_out_total")
    /// PUBLISH packets from clients, by QoS (made once: counted per message).
    let messagesInCounters = (0...2).map { Counter(label: "switchyard_mqtt_messages_in_total", dimensions: [("qos", String($0))]) }

    func received(bytes: Int) {
        bytesIn.wrappingAdd(bytes, ordering: .relaxed)
        bytesInCounter.increment(by: bytes)
    }

    func sent(bytes: Int) {
        bytesOut.wrappingAdd(bytes, ordering: .relaxed)
        bytesOutCounter.increment(by: bytes)
    }

    func publishReceived(qos: QoS) {
        messagesIn.wrappingAdd(1, ordering: .relaxed)
        messagesInCounters[Int(qos.rawValue)].increment()
    }
}

/// New connections per listener: the controller's token bucket, `rate` per second, bursts of `rate`.
final class ConnectionRateLimit: Sendable {
    let rate: Double
    let bucket: Mutex<TokenBucket>

    init(perSecond rate: Double) {
        self.rate = rate
        bucket = Mutex(TokenBucket(burst: rate, now: SystemMonotonicClock().nowNanos()))
    }

    /// Whether one more connection may come now.
    func admit(now: UInt64 = SystemMonotonicClock().nowNanos()) -> Bool {
        guard rate > 0 else { return true }
        return bucket.withLock { $0.take(rate: rate, burst: rate, now: now) == 0 }
    }
}

extension MQTTServer {
    /// `$SYS/broker/…` (retained, QoS 0) with the broker's figures; subscribers of `$SYS/#` see
    /// them change every `channels.mqtt.sys_interval`.
    func publishSystemTopics(version: String) {
        let uptime = (SystemMonotonicClock().nowNanos() - stats.startedAt) / 1_000_000_000
        let (online, offline) = sessions.withLockedValue { table in (table.slots.count - table.offlineCount, table.offlineCount) }
        let figures: [(String, String)] = [
            ("version", "switchyard \(version)"),
            ("uptime", "\(uptime) seconds"),
            ("clients/connected", "\(online)"),
            ("clients/disconnected", "\(offline)"),
            ("connections/open", "\(openConnections)"),
            ("subscriptions/count", "\(trie.withLockedValue { $0.count })"),
            ("retained messages/count", "\(retained.withLockedValue { $0.count })"),
            ("messages/received", "\(stats.messagesIn.load(ordering: .relaxed))"),
            ("messages/sent", "\(stats.messagesOut.load(ordering: .relaxed))"),
            ("bytes/received", "\(stats.bytesIn.load(ordering: .relaxed))"),
            ("bytes/sent", "\(stats.bytesOut.load(ordering: .relaxed))"),
        ]
        for (name, value) in figures {
            let p = MQTTPacket.Publish(topic: "$SYS/broker/\(name)", payload: ByteBuffer(string: value), qos: .atMostOnce, retain: true)
            fanOut(p, from: nil, queueOffline: false)
        }
    }
}
