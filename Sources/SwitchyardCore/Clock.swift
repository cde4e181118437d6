#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A monotonic clock in nanoseconds. Injected wherever behaviour depends on time
/// (rate limiters, dedup windows, backoff) so tests can drive it.
public protocol MonotonicClock: Sendable {
    func nowNanos() -> UInt64
}

/// The system's monotonic clock.
public struct SystemMonotonicClock: MonotonicClock {
    public init() {}
    public func nowNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// Wall-clock time for timestamps shown to people.
public enum WallClock {
    public static func nowNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
