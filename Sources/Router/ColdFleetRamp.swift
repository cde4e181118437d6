import Logging
import Metrics
import NIOConcurrencyHelpers
import Synchronization

/// A full redeploy leaves a service with only new instances: besides each instance's weight,
/// the service's admitted concurrency ramps — one third of its usual peak at first, then up
/// the warm-up curve — so a cold fleet is not flooded. Attempts past the limit wait (messages
/// in the journal, gateway requests briefly at the edge).
public final class ColdFleetRamp: Sendable {
    /// Per cold service, its peak concurrency when it turned cold (frozen: the capped traffic
    /// during the ramp must not lower it).
    private let frozen = NIOLockedValueBox([String: Int]())
    /// Whether any service has a frozen peak (checked without the lock on every attempt).
    private let ramping = Atomic<Bool>(false)
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// Whether another attempt to `service` may start now.
    func admits(_ service: String, health: InstanceHealth, budget: RetryBudget) -> Bool {
        guard let fraction = health.coldFraction(service) else {
            guard ramping.load(ordering: .relaxed) else { return true }
            let ended = frozen.withLockedValue { all -> Bool in
                let removed = all.removeValue(forKey: service) != nil
                ramping.store(!all.isEmpty, ordering: .relaxed)
                return removed
            }
            if ended {
                InstanceHealth.count("cold_ramp_ended", service: service)
                logger.info("cold-fleet ramp ended: the service takes its full concurrency", metadata: ["service": "\(service)"])
            }
            return true
        }
        let (peak, started) = frozen.withLockedValue { all -> (Int, Bool) in
            if let peak = all[service] { return (peak, false) }
            let peak = budget.peak(service)
            all[service] = peak
            ramping.store(true, ordering: .relaxed)
            return (peak, true)
        }
        if started {
            InstanceHealth.count("cold_ramp_started", service: service)
            logger.notice(
                "cold fleet: every instance is new; the service's admitted concurrency ramps from one third of its peak",
                metadata: ["service": "\(service)", "peak": "\(peak)"]
            )
        }
        guard peak > 0 else { return true }  // no traffic seen before: nothing to hold back
        let allowed = budget.inFlight(service).active < Self.limit(peak: peak, fraction: fraction)
        if !allowed { Counter(label: "switchyard_cold_ramp_waits_total", dimensions: [("service", service)]).increment() }
        return allowed
    }

    static func limit(peak: Int, fraction: Double) -> Int {
        max(1, Int((Double(peak) * fraction).rounded(.up)))
    }

    /// The limit now, for admin views: nil when the service is not ramping.
    func limit(_ service: String, health: InstanceHealth) -> Int? {
        guard let fraction = health.coldFraction(service), let peak = frozen.withLockedValue({ $0[service] }), peak > 0 else { return nil }
        return Self.limit(peak: peak, fraction: fraction)
    }
}
