import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Counts every message's outcome so that, at every read,
/// `received = forwarded + rejected + dead_lettered + broker_only + in_flight`.
///
/// Prometheus counters read one by one could not promise that identity at every scrape,
/// so the counters live here. Updates go to one of a few shards chosen by the calling
/// thread (event loops rarely contend); a snapshot locks every shard at once, so it is
/// consistent.
public final class MessageLedger: Sendable {
    public struct Snapshot: Sendable, Equatable {
        public var received: [String: UInt64] = [:]  // channel
        public var rejected: [Pair: UInt64] = [:]  // channel, reason
        public var forwarded: [String: UInt64] = [:]  // route
        public var retried: [String: UInt64] = [:]  // route
        public var deadLettered: [Pair: UInt64] = [:]  // route, reason
        /// No route takes them: handed to the channel's own subscribers only (MQTT).
        public var brokerOnly: [String: UInt64] = [:]  // channel
        public var inFlight: Int64 = 0

        public var receivedTotal: UInt64 { received.values.reduce(0, +) }
        public var rejectedTotal: UInt64 { rejected.values.reduce(0, +) }
        public var forwardedTotal: UInt64 { forwarded.values.reduce(0, +) }
        public var deadLetteredTotal: UInt64 { deadLettered.values.reduce(0, +) }
        public var brokerOnlyTotal: UInt64 { brokerOnly.values.reduce(0, +) }
        /// True when every received message is accounted for exactly once.
        public var balances: Bool {
            Int64(receivedTotal) == Int64(forwardedTotal + rejectedTotal + deadLetteredTotal + brokerOnlyTotal) + inFlight
        }

        mutating func add(_ other: Snapshot) {
            received.merge(other.received, uniquingKeysWith: +)
            rejected.merge(other.rejected, uniquingKeysWith: +)
            forwarded.merge(other.forwarded, uniquingKeysWith: +)
            retried.merge(other.retried, uniquingKeysWith: +)
            deadLettered.merge(other.deadLettered, uniquingKeysWith: +)
            brokerOnly.merge(other.brokerOnly, uniquingKeysWith: +)
            inFlight += other.inFlight
        }
    }

    public struct Pair: Sendable, Hashable {
        public var first: String
        public var second: String
        public init(_ first: String, _ second: String) {
            self.first = first
            self.second = second
        }
    }

    final class Shard: @unchecked Sendable {
        // @unchecked: `counts` is only touched while `lock` is held.
        let lock = NIOLock()
        var counts = Snapshot()
    }

    private let shards: [Shard] = (0..<8).map { _ in Shard() }

    public init() {}

    private func update(_ body: (inout Snapshot) -> Void) {
        let shard = shards[Int((UInt(bitPattern: Int(bitPattern: UInt(pthread_self()))) >> 12) % UInt(shards.count))]
        shard.lock.withLock { body(&shard.counts) }
    }

    /// A message arrived and was rejected by a filter.
    public func receivedAndRejected(channel: String, reason: String) {
        update {
            $0.received[channel, default: 0] += 1
            $0.rejected[Pair(channel, reason), default: 0] += 1
        }
    }

    /// A message arrived and was accepted; it is in flight until `forwarded` or `deadLettered`.
    public func receivedAndAccepted(channel: String) {
        update {
            $0.received[channel, default: 0] += 1
            $0.inFlight += 1
        }
    }

    /// A message arrived, passed the filters, and no route takes it: the channel's own
    /// subscribers get it (MQTT), and that is its outcome.
    public func receivedBrokerOnly(channel: String) {
        update {
            $0.received[channel, default: 0] += 1
            $0.brokerOnly[channel, default: 0] += 1
        }
    }

    /// An accepted message could not be kept after all (the journal failed): it becomes a rejection.
    public func acceptedThenRejected(channel: String, reason: String) {
        update {
            $0.rejected[Pair(channel, reason), default: 0] += 1
            $0.inFlight -= 1
        }
    }

    public func forwarded(route: String) {
        update {
            $0.forwarded[route, default: 0] += 1
            $0.inFlight -= 1
        }
    }

    public func deadLettered(route: String, reason: String) {
        update {
            $0.deadLettered[Pair(route, reason), default: 0] += 1
            $0.inFlight -= 1
        }
    }

    public func retried(route: String) {
        update { $0.retried[route, default: 0] += 1 }
    }

    /// All shards, read under all their locks at once.
    public func snapshot() -> Snapshot {
        for shard in shards { shard.lock.lock() }
        defer { for shard in shards.reversed() { shard.lock.unlock() } }
        var total = Snapshot()
        for shard in shards { total.add(shard.counts) }
        return total
    }
}
