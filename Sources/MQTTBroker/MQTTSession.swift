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
    public var queued = OutboundQueue()
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
        queued.enqueue(message, limit: limit)
    }
}

/// Messages waiting for a client, oldest first. Taking the first is O(1) (amortised), and the
/// queue counts its QoS 0 messages, so a full queue knows at once whether it has one to drop —
/// a stalled subscriber must not make every publish scan its backlog.
public struct OutboundQueue: Sendable, Equatable, Sequence, ExpressibleByArrayLiteral {
    var items: [MQTTOutbound] = []
    var head = 0
    var atMostOnce = 0

    public init() {}

    public init(arrayLiteral messages: MQTTOutbound...) {
        for m in messages { append(m) }
    }

    public var count: Int { items.count - head }
    public var isEmpty: Bool { head == items.count }
    public var first: MQTTOutbound? { isEmpty ? nil : items[head] }
    public var elements: ArraySlice<MQTTOutbound> { items[head...] }
    public func makeIterator() -> ArraySlice<MQTTOutbound>.Iterator { elements.makeIterator() }

    public mutating func append(_ m: MQTTOutbound) {
        items.append(m)
        if m.publish.qos == .atMostOnce { atMostOnce += 1 }
    }

    public mutating func removeFirst() -> MQTTOutbound {
        let m = items[head]
        head += 1
        if m.publish.qos == .atMostOnce { atMostOnce -= 1 }
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
        return m
    }

    /// Adds a message; past `limit` the oldest QoS 0 message goes first, else the newcomer.
    /// Returns whether one was dropped.
    public mutating func enqueue(_ m: MQTTOutbound, limit: Int) -> Bool {
        guard count >= limit else {
            append(m)
            return false
        }
        guard atMostOnce > 0, let index = items[head...].firstIndex(where: { $0.publish.qos == .atMostOnce }) else { return true }
        items.remove(at: index)
        atMostOnce -= 1
        append(m)
        return true
    }

    public mutating func removeAll(where shouldRemove: (MQTTOutbound) -> Bool) {
        let kept = elements.filter { !shouldRemove($0) }
        self = OutboundQueue()
        for m in kept { append(m) }
    }

    public static func == (a: OutboundQueue, b: OutboundQueue) -> Bool { a.elements.elementsEqual(b.elements) }
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
