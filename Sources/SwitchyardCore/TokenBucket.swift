/// A token bucket: `rate` tokens per second, at most `burst` stored.
public struct TokenBucket: Sendable {
    public var tokens: Double
    public var last: UInt64

    public init(burst: Double, now: UInt64) {
        tokens = burst
        last = now
    }

    /// Refills for the time since the last call, then takes one token if there is one.
    /// Returns 0 when taken, else the seconds until a token will be available.
    public mutating func take(rate: Double, burst: Double, now: UInt64, consume: Bool = true) -> Double {
        refill(rate: rate, burst: burst, now: now)
        if tokens >= 1 {
            if consume { tokens -= 1 }
            return 0
        }
        return rate > 0 ? (1 - tokens) / rate : .infinity
    }

    public mutating func refill(rate: Double, burst: Double, now: UInt64) {
        if now > last {
            tokens = min(burst, tokens + Double(now - last) / 1e9 * rate)
            last = now
        }
    }

    /// A full bucket behaves exactly like a new one, so it can be forgotten.
    public func isFull(rate: Double, burst: Double, now: UInt64) -> Bool {
        now >= last && tokens + Double(now - last) / 1e9 * rate >= burst
    }
}
