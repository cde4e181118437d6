import NIOConcurrencyHelpers
public import SwitchyardCore

/// Token buckets per key (device, product, channel or one global key).
///
/// Keys are spread over lock-striped shards so event loops rarely contend. Memory is
/// bounded: buckets that have refilled completely are indistinguishable from new ones
/// and are swept away; past `maxKeys` the oldest-touched keys of a shard are evicted.
public final class KeyedRateLimiter: Sendable {
    public let rate: Double
    public let burst: Double
    public let maxKeys: Int
    private let clock: any MonotonicClock
    private let shards: [NIOLockedValueBox<Shard>]

    struct Shard {
        var buckets: [String: TokenBucket] = [:]
        var opsSinceSweep = 0
    }

    public init(rate: Double, burst: Double, maxKeys: Int = 1_000_000, clock: any MonotonicClock) {
        self.rate = rate
        self.burst = max(1, burst)
        self.maxKeys = max(16, maxKeys)
        self.clock = clock
        self.shards = (0..<16).map { _ in NIOLockedValueBox(Shard()) }
    }

    /// Takes a token for `key`. Returns 0 when allowed, else seconds until retry makes sense.
    public func acquire(_ key: String, consume: Bool = true) -> Double {
        let now = clock.nowNanos()
        let perShard = maxKeys / shards.count
        return shards[shardIndex(key)].withLockedValue { shard in
            shard.opsSinceSweep += 1
            if shard.opsSinceSweep >= 4096 || shard.buckets.count >= perShard {
                sweep(&shard, now: now, limit: perShard)
            }
            if var bucket = shard.buckets[key] {
                let wait = bucket.take(rate: rate, burst: burst, now: now, consume: consume)
                shard.buckets[key] = bucket
                return wait
            }
            var bucket = TokenBucket(burst: burst, now: now)
            let wait = bucket.take(rate: rate, burst: burst, now: now, consume: consume)
            if consume { shard.buckets[key] = bucket }
            return wait
        }
    }

    /// Number of buckets currently held (for metrics and tests).
    public var trackedKeys: Int { shards.reduce(0) { $0 + $1.withLockedValue { $0.buckets.count } } }

    private func sweep(_ shard: inout Shard, now: UInt64, limit: Int) {
        shard.opsSinceSweep = 0
        shard.buckets = shard.buckets.filter { !$0.value.isFull(rate: rate, burst: burst, now: now) }
        if shard.buckets.count >= limit {
            // Every key is active: drop the least recently touched quarter (bounded memory wins).
            let keep = shard.buckets.sorted { $0.value.last > $1.value.last }.prefix(limit * 3 / 4)
            shard.buckets = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
    }

    private func shardIndex(_ key: String) -> Int {
        Int(StableHash.fnv1a(key) % UInt64(shards.count))
    }
}
