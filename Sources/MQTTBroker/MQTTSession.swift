public import MQTTWire
public import NIOCore
import SwitchyardCore

/// A message on its way to one client: queued, or in flight (then `publish.packetID` is set).
public struct MQTTOutbound: Sendable, Equatable {
    public var publish: MQTTPacket.Publish
    /// When the message expires (wall clock, nanoseconds; from its Message Expiry Interval).
    public var expiresAt: UInt64?
    /// The shared subscription (`$share/{group}/{filter}`) it came through: if this client
    /// leaves before acknowledging it, another member of the group gets it.
    public var shareFilter: String?
    /// QoS 2: PUBREC came and PUBREL went (only the PUBREL is resent).
    var released = false
    /// Send order, for resending in order after a reconnect.
    var sequence: UInt64 = 0

    public init(publish: MQTTPacket.Publish, expiresAt: UInt64? = nil, shareFilter: String? = nil) {
        self.publish = publish
        self.expiresAt = expiresAt
        self.shareFilter = shareFilter
    }
}

/// What a client's session holds between connections (MQTT 4.1): subscriptions, messages
/// not yet acknowledged or not yet sent, and QoS 2 messages received but not yet released.
public struct MQTTSession: Sendable, Equatable {
    public var clientID: String
    /// The device that owned it: another device with the same client id starts a new session.
    public var identity: DeviceIdentity?
    public var subscriptions: [String: MQTTPacket.Subscription] = [:]
    /// v5 Subscription Identifier per filter.
    public var identifiers: [String: Int] = [:]
    /// Sent, not acknowledged; in send order.
    public var inflight: [MQTTOutbound] = []
    public var queued: [MQTTOutbound] = []
    public var awaitingRelease: Set<UInt16> = []
    public var nextPacketID: UInt16 = 1
    /// Session Expiry Interval (UInt32.max: never).
    public var expirySeconds: UInt32
    /// When the last connection ended (wall clock, nanoseconds; 0 while connected).
    public var endedAt: UInt64 = 0

    public init(clientID: String, identity: DeviceIdentity?, expirySeconds: UInt32) {
        self.clientID = clientID
        self.identity = identity
        self.expirySeconds = expirySeconds
    }

    /// Whether it has expired at `now` (wall clock, nanoseconds).
    public func hasExpired(now: UInt64) -> Bool {
        guard expirySeconds != UInt32.max else { return false }
        return now >= endedAt + UInt64(expirySeconds) * 1_000_000_000
    }

    /// Adds a message for the client while it is offline: past `limit` the oldest QoS 0 goes
    /// first, else the newcomer. Returns whether something was dropped.
    mutating func enqueue(_ message: MQTTOutbound, limit: Int) -> Bool {
        Self.enqueue(message, into: &queued, limit: limit)
    }

    static func enqueue(_ message: MQTTOutbound, into queue: inout [MQTTOutbound], limit: Int) -> Bool {
        guard queue.count >= limit else {
            queue.append(message)
            return false
        }
        guard let index = queue.firstIndex(where: { $0.publish.qos == .atMostOnce }) else { return true }
        queue.remove(at: index)
        queue.append(message)
        return true
    }
}

/// A retained message and when it expires.
public struct MQTTRetained: Sendable, Equatable {
    public var publish: MQTTPacket.Publish
    public var expiresAt: UInt64?

    public init(publish: MQTTPacket.Publish, expiresAt: UInt64?) {
        self.publish = publish
        self.expiresAt = expiresAt
    }
}
