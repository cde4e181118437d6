import NIOConcurrencyHelpers
import NIOCore
public import SwitchyardCore

/// Remembers message ids for a window and reports repeats. Bounded: past `maxEntries`
/// the oldest ids are forgotten first.
public final class DuplicateFilter: Sendable {
    public let windowNanos: UInt64
    public let maxEntries: Int
    private let clock: any MonotonicClock
    private let shards: [NIOLockedValueBox<Shard>]

    struct Shard {
        var expiry: [String: UInt64] = [:]
        var order = CircularBuffer<(String, UInt64)>()
    }

    public init(windowSeconds: Double, maxEntries: Int, clock: any MonotonicClock) {
        self.windowNanos = UInt64(max(0, windowSeconds) * 1e9)
        self.maxEntries = max(16, maxEntries)
        self.clock = clock
        self.shards = (0..<16).map { _ in NIOLockedValueBox(Shard()) }
    }

    /// Records `key` and returns true when it was new; false when seen within the window.
    public func insertIfNew(_ key: String, record: Bool = true) -> Bool {
        let now = clock.nowNanos()
        let perShard = maxEntries / shards.count
        return shards[Int(StableHash.fnv1a(key) % UInt64(shards.count))].withLockedValue { shard in
            while let (oldKey, exp) = shard.order.first, exp <= now || shard.order.count > perShard {
                shard.order.removeFirst()
                if shard.expiry[oldKey] == exp { shard.expiry.removeValue(forKey: oldKey) }
            }
            if let exp = shard.expiry[key], exp > now { return false }
            if record {
                shard.expiry[key] = now + windowNanos
                shard.order.append((key, now + windowNanos))
            }
            return true
        }
    }

    /// Forgets `key` (a later filter rejected the message, so a resend must not count as duplicate).
    public func remove(_ key: String) {
        shards[Int(StableHash.fnv1a(key) % UInt64(shards.count))].withLockedValue {
            _ = $0.expiry.removeValue(forKey: key)
        }
    }

    public var trackedIDs: Int { shards.reduce(0) { $0 + $1.withLockedValue { $0.expiry.count } } }
}
