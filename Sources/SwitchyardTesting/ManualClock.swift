// SwitchyardTesting: the test kit — a manual clock, an in-memory forwarder and sink, and
// a real loopback HTTP service that records what it receives.
import NIOConcurrencyHelpers
public import SwitchyardCore

/// A clock that moves only when told to.
public final class ManualClock: MonotonicClock {
    private let now = NIOLockedValueBox<UInt64>(1_000_000_000)
    public init() {}
    public func nowNanos() -> UInt64 { now.withLockedValue { $0 } }
    public func advance(seconds: Double) { now.withLockedValue { $0 += UInt64(seconds * 1e9) } }
}
