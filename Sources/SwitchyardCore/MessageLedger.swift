import NIOConcurrencyHelpers

/// Counts every message's outcome so that, at every read,
/// `received = forwarded + rejected + dead_lettered + in_flight`.
///
/// Counters live behind one lock so that a snapshot is consistent; Prometheus counters
/// read one by one could not promise the identity at every scrape.
public final class MessageLedger: Sendable {
    public struct Snapshot: Sendable, Equatable {
        public var received: [String: UInt64] = [:]  // channel
        public var rejected: [Pair: UInt64] = [:]  // channel, reason
        public var forwarded: [String: UInt64] = [:]  // route
        public var retried: [String: UInt64] = [:]  // route
        public var deadLettered: [Pair: UInt64] = [:]  // route, reason
        public var inFlight: Int64 = 0

        public var receivedTotal: UInt64 { received.values.reduce(0, +) }
        public var rejectedTotal: UInt64 { rejected.values.reduce(0, +) }
        public var forwardedTotal: UInt64 { forwarded.values.reduce(0, +) }
        public var deadLetteredTotal: UInt64 { deadLettered.values.reduce(0, +) }
        /// True when every received message is accounted for exactly once.
        public var balances: Bool {
            Int64(receivedTotal) == Int64(forwardedTotal + rejectedTotal + deadLetteredTotal) + inFlight
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

    private let state = NIOLockedValueBox(Snapshot())

    public init() {}

    /// A message arrived and was rejected by a filter.
    public func receivedAndRejected(channel: String, reason: String) {
        state.withLockedValue {
            $0.received[channel, default: 0] += 1
            $0.rejected[Pair(channel, reason), default: 0] += 1
        }
    }

    /// A message arrived and was accepted; it is in flight until `forwarded` or `deadLettered`.
    public func receivedAndAccepted(channel: String) {
        state.withLockedValue {
            $0.received[channel, default: 0] += 1
            $0.inFlight += 1
        }
    }

    public func forwarded(route: String) {
        state.withLockedValue {
            $0.forwarded[route, default: 0] += 1
            $0.inFlight -= 1
        }
    }

    public func deadLettered(route: String, reason: String) {
        state.withLockedValue {
            $0.deadLettered[Pair(route, reason), default: 0] += 1
            $0.inFlight -= 1
        }
    }

    public func retried(route: String) {
        state.withLockedValue { $0.retried[route, default: 0] += 1 }
    }

    public func snapshot() -> Snapshot { state.withLockedValue { $0 } }
}
