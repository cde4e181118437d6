import Metrics
import NIOConcurrencyHelpers
import SwitchyardCore

/// Retries per service stay within a share of its active requests (default 20 %, at least 3 at
/// a time), so retries cannot multiply the load on a service that is already failing.
///
/// Its table also keeps the balancer's count of attempts out to each instance: an attempt's
/// start and end count both, under one lock (twice per request, not four times).
public final class RetryBudget: Sendable {
    struct Counts {
        var active = 0
        var retrying = 0
        /// The most attempts at once in this minute and the one before (the cold-fleet ramp's reference).
        var peak = 0
        var previousPeak = 0
        var minute: UInt64 = 0

        /// An attempt starts in minute `now` (a new minute keeps the last one's peak as the previous).
        mutating func began(minute now: UInt64) {
            active += 1
            if minute != now {
                previousPeak = minute + 1 == now ? peak : 0
                (peak, minute) = (0, now)
            }
            peak = max(peak, active)
        }
    }

    struct Table {
        /// Per service.
        var services: [HashedKey: Counts] = [:]
        /// Attempts out per instance (`service@host:port`), for the balancer; none: absent.
        var instances: [HashedKey: Int] = [:]

        /// (In place: once per attempt.)
        mutating func serviceBegan(_ service: HashedKey, minute: UInt64) {
            services[service, default: Counts()].began(minute: minute)
        }

        /// (One lookup, changed in place: once per attempt.)
        mutating func serviceEnded(_ service: HashedKey, retry: Bool) {
            guard let i = services.index(forKey: service) else { return }
            services.values[i].active -= 1
            if retry { services.values[i].retrying -= 1 }
        }

        mutating func instanceStarted(_ key: HashedKey) { instances[key, default: 0] += 1 }

        mutating func instanceFinished(_ key: HashedKey) {
            // (One lookup: once per request.)
            guard let i = instances.index(forKey: key) else { return }
            if instances.values[i] > 1 { instances.values[i] -= 1 } else { instances.remove(at: i) }
        }
    }

    private let table = NIOLockedValueBox(Table())
    private let settings = NIOLockedValueBox((percent: 20.0, minimum: 3))

    public init() {}

    public func configure(percent: Double, minimum: Int) {
        settings.withLockedValue { $0 = (percent, minimum) }
    }

    /// An attempt (first or retry) to `service` starts, counted for the service only (`now`: the
    /// monotonic clock's nanoseconds, when the caller has just read it).
    public func begin(_ service: String, now: UInt64 = SystemMonotonicClock().nowNanos()) {
        let service = HashedKey(service)
        table.withLockedValue { $0.serviceBegan(service, minute: Self.minute(now)) }
    }

    /// An attempt at `instance` starts: its service's count here and its own for the balancer.
    func begin(_ instance: ServiceInstance, now: UInt64) {
        table.withLockedValue { t in
            t.serviceBegan(instance.hashedService, minute: Self.minute(now))
            t.instanceStarted(instance.hashedKey)
        }
    }

    /// The attempt at `instance` ends; `retry` says whether it was one.
    func end(_ instance: ServiceInstance, retry: Bool) {
        table.withLockedValue { t in
            t.serviceEnded(instance.hashedService, retry: retry)
            t.instanceFinished(instance.hashedKey)
        }
    }

    /// The minute of a monotonic clock reading (peaks are kept per minute).
    private static func minute(_ nanos: UInt64) -> UInt64 { nanos / 60_000_000_000 }

    /// Attempts out to each instance (the balancer's counts).
    func withInstances<T>(_ body: (inout [HashedKey: Int]) -> T) -> T {
        table.withLockedValue { body(&$0.instances) }
    }

    /// The most attempts to `service` at once over the last one to two minutes.
    public func peak(_ service: String) -> Int {
        let service = HashedKey(service)
        let minute = Self.minute(SystemMonotonicClock().nowNanos())
        return table.withLockedValue { t in
            guard let c = t.services[service] else { return 0 }
            if c.minute == minute { return max(c.peak, c.previousPeak) }
            return c.minute + 1 == minute ? c.peak : 0
        }
    }

    /// An attempt ends (counted by `begin(_:now:)`); `retry` says whether it was one.
    public func end(_ service: String, retry: Bool) {
        let service = HashedKey(service)
        table.withLockedValue { $0.serviceEnded(service, retry: retry) }
    }

    /// Whether another retry to `service` may start now; when it may, it is counted until `end(_:retry: true)`.
    public func allowRetry(_ service: String) -> Bool {
        let (percent, minimum) = settings.withLockedValue { $0 }
        let key = HashedKey(service)
        let allowed = table.withLockedValue { t -> Bool in
            var c = t.services[key, default: Counts()]
            let limit = max(minimum, Int(Double(c.active) * percent / 100))
            guard c.retrying < limit else { return false }
            c.retrying += 1
            t.services[key] = c
            return true
        }
        if !allowed { Counter(label: "switchyard_retry_budget_exhausted_total", dimensions: [("service", service)]).increment() }
        return allowed
    }

    /// Gives back a retry slot that no attempt used.
    public func release(_ service: String) {
        let service = HashedKey(service)
        return table.withLockedValue { t in
            guard var c = t.services[service] else { return }
            c.retrying -= 1
            t.services[service] = c
        }
    }

    /// In flight now (admin views and tests).
    public func inFlight(_ service: String) -> (active: Int, retrying: Int) {
        let service = HashedKey(service)
        return table.withLockedValue { t in (t.services[service]?.active ?? 0, t.services[service]?.retrying ?? 0) }
    }
}
