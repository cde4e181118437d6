import Logging
import Metrics
import NIOConcurrencyHelpers
public import SwitchyardCore
import Synchronization

/// One circuit breaker per instance, shared by every router snapshot (like the balancer).
/// Closed: messages flow. After `failures` consecutive failed attempts it opens: the instance
/// gets nothing for the open period. When that is up, one message probes it (half open):
/// success closes the circuit, failure opens it again for twice as long (up to the maximum).
/// When every instance of a service is open, messages wait in the journal, as for a service
/// that refuses connections: the service is down, which is not an error of the message.
public final class CircuitBreakers: Sendable {
    public enum State: String, Sendable, Encodable {
        case closed
        case open
        case halfOpen = "half_open"
    }

    struct Breaker {
        var service: String
        var failures = 0
        var state = State.closed
        var openUntil: UInt64 = 0
        var openSeconds = 0.0
        /// Half open: the probe is out; nothing else goes until it answers.
        var probing = false
    }

    private let breakers = NIOLockedValueBox([String: Breaker]())
    /// Entries in `breakers`. Zero, the usual case, means every circuit is closed with no
    /// failure counted, and the delivery path takes no lock.
    private let tracked = Atomic<Int>(0)
    private let clock: any MonotonicClock
    private let logger: Logger
    /// At most this share (percent) of a service's candidates may be kept out by open circuits.
    private let maxEjectionPercent = Atomic<Int>(50)

    public init(clock: any MonotonicClock = SystemMonotonicClock(), logger: Logger = Logger(label: "switchyard.circuit")) {
        self.clock = clock
        self.logger = logger
    }

    public func setMaxEjectionPercent(_ percent: Double) {
        maxEjectionPercent.store(Int(percent.rounded()), ordering: .relaxed)
    }

    /// The instances that may get a message now: closed circuits, and open ones whose time is
    /// up and whose probe is not out yet. When open circuits would keep more than the maximum
    /// ejection share of the candidates out while others still serve, the ones opened longest
    /// ago may probe now.
    public func admitted(_ candidates: [ServiceInstance]) -> [ServiceInstance] {
        if tracked.load(ordering: .relaxed) == 0 { return candidates }
        let now = clock.nowNanos()
        let cap = candidates.count * maxEjectionPercent.load(ordering: .relaxed) / 100
        return breakers.withLockedValue { breakers in
            var out: [ServiceInstance] = []
            var ejected: [(ServiceInstance, UInt64)] = []
            for instance in candidates {
                guard let b = breakers[instance.key] else {
                    out.append(instance)
                    continue
                }
                switch b.state {
                case .closed: out.append(instance)
                case .open where now >= b.openUntil: out.append(instance)
                case .open: ejected.append((instance, b.openUntil))
                case .halfOpen where !b.probing: out.append(instance)
                case .halfOpen: break
                }
            }
            // Every instance out is the service being down (messages wait, requests get 503); some
            // still serving but too many out at once: take the longest-out ones back early.
            if ejected.count > cap && !out.isEmpty {
                for (instance, _) in ejected.sorted(by: { $0.1 < $1.1 }).prefix(ejected.count - cap) {
                    breakers[instance.key]?.openUntil = now
                    out.append(instance)
                }
            }
            return out
        }
    }

    /// Claims `instance` for one attempt; false when its circuit turned out not to admit it
    /// (another loop took the probe meanwhile).
    public func claim(_ instance: ServiceInstance) -> Bool {
        if tracked.load(ordering: .relaxed) == 0 { return true }
        let now = clock.nowNanos()
        return breakers.withLockedValue { breakers in
            guard var b = breakers[instance.key] else { return true }
            switch b.state {
            case .closed:
                return true
            case .open where now >= b.openUntil, .halfOpen where !b.probing:
                b.state = .halfOpen
                b.probing = true
                breakers[instance.key] = b
                return true
            case .open, .halfOpen:
                return false
            }
        }
    }

    /// Records the result of an attempt on `instance`: whether the service answered (2xx–4xx)
    /// or failed (refused, timed out, broke the connection, 5xx).
    public func record(_ instance: ServiceInstance, failed: Bool, rule: SwitchyardConfiguration.CircuitRule) {
        if !failed && tracked.load(ordering: .relaxed) == 0 { return }
        if failed && rule.failures == 0 { return }
        let now = clock.nowNanos()
        let change: (State, Breaker)? = breakers.withLockedValue { breakers in
            if !failed {
                guard let b = breakers.removeValue(forKey: instance.key) else { return nil }
                tracked.wrappingSubtract(1, ordering: .relaxed)
                return b.state == .closed ? nil : (.closed, b)
            }
            var b: Breaker
            if let existing = breakers[instance.key] {
                b = existing
            } else {
                b = Breaker(service: instance.service)
                tracked.wrappingAdd(1, ordering: .relaxed)
            }
            b.failures += 1
            var opened = false
            switch b.state {
            case .closed where b.failures >= rule.failures:
                b.openSeconds = rule.openSeconds
                opened = true
            case .halfOpen:
                b.openSeconds = min(rule.maxOpenSeconds, max(rule.openSeconds, b.openSeconds * 2))
                opened = true
            case .closed, .open:
                break
            }
            if opened {
                b.state = .open
                b.probing = false
                b.openUntil = now + UInt64(b.openSeconds * 1e9)
            }
            breakers[instance.key] = b
            return opened ? (.open, b) : nil
        }
        guard let (state, b) = change else { return }
        let dimensions = [("service", instance.service), ("instance", instance.key)]
        Gauge(label: "switchyard_circuit_open", dimensions: dimensions).record(state == .open ? 1 : 0)
        if state == .open {
            Counter(label: "switchyard_circuit_opened_total", dimensions: [("service", instance.service)]).increment()
            logger.warning(
                "circuit opened: the instance gets no messages for a while",
                metadata: [
                    "service": "\(instance.service)", "instance": "\(instance.key)",
                    "consecutive_failures": "\(b.failures)", "open_for_seconds": "\(b.openSeconds)",
                ]
            )
        } else {
            logger.notice("circuit closed: the instance answered again", metadata: ["service": "\(instance.service)", "instance": "\(instance.key)"])
        }
    }

    /// A shutdown cut the probe off: let the next message probe instead.
    public func abandon(_ instance: ServiceInstance) {
        if tracked.load(ordering: .relaxed) == 0 { return }
        breakers.withLockedValue { breakers in
            if breakers[instance.key]?.probing == true { breakers[instance.key]?.probing = false }
        }
    }

    public struct Status: Sendable, Encodable {
        public var service: String
        public var instance: String
        public var state: State
        public var consecutiveFailures: Int
        /// Seconds until an open circuit lets a probe through (0 when it may probe now).
        public var retryInSeconds: Double
    }

    /// Every instance with a failure counted or a circuit not closed.
    public func status() -> [Status] {
        let now = clock.nowNanos()
        return breakers.withLockedValue { breakers in
            breakers.map { key, b in
                Status(
                    service: b.service,
                    instance: key,
                    state: b.state,
                    consecutiveFailures: b.failures,
                    retryInSeconds: b.state == .open && b.openUntil > now ? Double(b.openUntil - now) / 1e9 : 0
                )
            }.sorted { ($0.service, $0.instance) < ($1.service, $1.instance) }
        }
    }
}
