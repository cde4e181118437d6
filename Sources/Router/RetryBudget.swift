import Metrics
import NIOConcurrencyHelpers
import SwitchyardCore

/// Retries per service stay within a share of its active requests (default 20 %, at least 3 at
/// a time), so retries cannot multiply the load on a service that is already failing.
public final class RetryBudget: Sendable {
    struct Counts {
        var active = 0
        var retrying = 0
        /// The most attempts at once in this minute and the one before (the cold-fleet ramp's reference).
        var peak = 0
        var previousPeak = 0
        var minute: UInt64 = 0
    }

    private let counts = NIOLockedValueBox([HashedKey: Counts]())
    private let settings = NIOLockedValueBox((percent: 20.0, minimum: 3))

    public init() {}

    public func configure(percent: Double, minimum: Int) {
        settings.withLockedValue { $0 = (percent, minimum) }
    }

    /// An attempt (first or retry) to `service` starts (`now`: the monotonic clock's nanoseconds,
    /// when the caller has just read it).
    public func begin(_ service: String, now: UInt64 = SystemMonotonicClock().nowNanos()) {
        begin(HashedKey(service), now: now)
    }

    /// As above, for a service whose name was hashed before (an instance's `hashedService`).
    public func begin(_ service: HashedKey, now: UInt64) {
        let minute = now / 60_000_000_000
        counts.withLockedValue { all in
            Self.begin(&all[service, default: Counts()], minute: minute)
        }
    }

    /// (In place: once per attempt.)
    private static func begin(_ c: inout Counts, minute: UInt64) {
        c.active += 1
        if c.minute != minute {
            c.previousPeak = c.minute + 1 == minute ? c.peak : 0
            (c.peak, c.minute) = (0, minute)
        }
        c.peak = max(c.peak, c.active)
    }

    /// The most attempts to `service` at once over the last one to two minutes.
    public func peak(_ service: String) -> Int {
        let service = HashedKey(service)
        let minute = SystemMonotonicClock().nowNanos() / 60_000_000_000
        return counts.withLockedValue { all in
            guard let c = all[service] else { return 0 }
            if c.minute == minute { return max(c.peak, c.previousPeak) }
            return c.minute + 1 == minute ? c.peak : 0
        }
    }

    /// An attempt ends; `retry` says whether it was one.
    public func end(_ service: String, retry: Bool) {
        end(HashedKey(service), retry: retry)
    }

    /// As above, for a service whose name was hashed before.
    public func end(_ service: HashedKey, retry: Bool) {
        counts.withLockedValue { all in
            // (One lookup, changed in place: once per attempt.)
            guard let i = all.index(forKey: service) else { return }
            all.values[i].active -= 1
            if retry { all.values[i].retrying -= 1 }
        }
    }

    /// Whether another retry to `service` may start now; when it may, it is counted until `end(_:retry: true)`.
    public func allowRetry(_ service: String) -> Bool {
        let (percent, minimum) = settings.withLockedValue { $0 }
        let key = HashedKey(service)
        let allowed = counts.withLockedValue { all -> Bool in
            var c = all[key, default: Counts()]
            let limit = max(minimum, Int(Double(c.active) * percent / 100))
            guard c.retrying < limit else { return false }
            c.retrying += 1
            all[key] = c
            return true
        }
        if !allowed { Counter(label: "switchyard_retry_budget_exhausted_total", dimensions: [("service", service)]).increment() }
        return allowed
    }

    /// Gives back a retry slot that no attempt used.
    public func release(_ service: String) {
        let service = HashedKey(service)
        return counts.withLockedValue { all in
            guard var c = all[service] else { return }
            c.retrying -= 1
            all[service] = c
        }
    }

    /// In flight now (admin views and tests).
    public func inFlight(_ service: String) -> (active: Int, retrying: Int) {
        let service = HashedKey(service)
        return counts.withLockedValue { all in (all[service]?.active ?? 0, all[service]?.retrying ?? 0) }
    }
}
