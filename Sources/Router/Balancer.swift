import NIOConcurrencyHelpers
public import SwitchyardCore

/// Power-of-two-choices on outstanding requests, weighted: two instances are drawn with
/// probability proportional to weight, and the one with fewer outstanding requests per
/// unit of weight wins. Outstanding counts are shared by every router snapshot.
public final class Balancer: Sendable {
    /// Which instances are skipped for now because they keep failing.
    public let breakers: CircuitBreakers
    /// Warm-up and drain state of each instance.
    public let health: InstanceHealth
    /// Retries per service within a share of its active requests.
    public let retryBudget = RetryBudget()
    /// Circuit breakers per route target (ratios over a window).
    public let targetBreakers: TargetBreakers
    /// A service whose every instance is new takes only part of its usual concurrency.
    let coldRamp: ColdFleetRamp

    public init(breakers: CircuitBreakers = CircuitBreakers(), health: InstanceHealth? = nil) {
        self.breakers = breakers
        self.health = health ?? InstanceHealth(clock: SystemMonotonicClock())
        targetBreakers = TargetBreakers(clock: self.health.clock)
        coldRamp = ColdFleetRamp(logger: self.health.logger)
    }

    /// Whether another attempt to `service` may start now (false only while its fleet is cold
    /// and the ramp's limit is reached).
    public func admits(_ service: String) -> Bool {
        coldRamp.admits(service, health: health, budget: retryBudget)
    }

    /// The cold-fleet ramp's limit on `service` now; nil when it is not ramping.
    public func coldLimit(_ service: String) -> Int? {
        coldRamp.limit(service, health: health)
    }

    /// Requests or messages out to `instance` now.
    public func outstanding(_ instance: ServiceInstance) -> Int {
        retryBudget.withInstances { $0[instance.hashedKey] ?? 0 }
    }

    public func pick(from instances: [ServiceInstance]) -> ServiceInstance? {
        var rng = FastRandom()
        return pick(from: instances, using: &rng)
    }

    public func pick<R: RandomNumberGenerator>(from instances: [ServiceInstance], using rng: inout R) -> ServiceInstance? {
        if instances.count == 1 { return instances[0].weight > 0 ? instances[0] : nil }  // the common case, no copy
        let candidates = instances.filter { $0.weight > 0 }
        guard !candidates.isEmpty else { return nil }
        if candidates.count == 1 { return candidates[0] }
        let total = candidates.reduce(0) { $0 + $1.weight }
        func draw(excluding: Int?) -> Int {
            let excludedWeight = excluding.map { candidates[$0].weight } ?? 0
            var x = Int.random(in: 0..<(total - excludedWeight), using: &rng)
            for (i, c) in candidates.enumerated() where i != excluding {
                if x < c.weight { return i }
                x -= c.weight
            }
            return candidates.indices.last { $0 != excluding }!
        }
        let a = draw(excluding: nil)
        let b = draw(excluding: a)
        let (la, lb) = retryBudget.withInstances { ($0[candidates[a].hashedKey] ?? 0, $0[candidates[b].hashedKey] ?? 0) }
        // Compare la/wa with lb/wb without division.
        let scoreA = (la + 1) * candidates[b].weight
        let scoreB = (lb + 1) * candidates[a].weight
        return scoreA <= scoreB ? candidates[a] : candidates[b]
    }

    /// An attempt at `instance` starts (`now`: the monotonic clock's nanoseconds): counted out to
    /// the instance and active for its service's retry budget.
    public func started(_ instance: ServiceInstance, now: UInt64) {
        retryBudget.begin(instance, now: now)
    }

    /// The attempt at `instance` ends; `retry` says whether it was one.
    public func finished(_ instance: ServiceInstance, retry: Bool) {
        retryBudget.end(instance, retry: retry)
    }
}
