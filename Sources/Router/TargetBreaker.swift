import Logging
import Metrics
import NIOConcurrencyHelpers
public import SwitchyardCore

/// A circuit breaker for one route target (Sentinel-style): over a sliding window it counts
/// requests, failures and slow calls; with at least `minRequests` in the window, an error ratio,
/// a slow-call ratio or an error count at its threshold opens it. Open, it refuses everything
/// for `openSeconds` (gateway: 503 `circuit_open`; messages wait in the journal); then it lets
/// `halfOpenProbes` requests through, and `closeAfter` successes among them close it — any
/// failure opens it again.
public final class TargetBreaker: Sendable {
    public enum State: String, Sendable, Encodable {
        case closed, open
        case halfOpen = "half_open"
    }

    struct Bucket {
        var start: UInt64 = 0
        var requests = 0
        var failures = 0
        var slow = 0
    }

    struct Inner {
        var state = State.closed
        var buckets = [Bucket](repeating: Bucket(), count: TargetBreaker.bucketCount)
        var openUntil: UInt64 = 0
        var probesOut = 0
        var probeSuccesses = 0
    }

    static let bucketCount = 10
    public let rule: SwitchyardConfiguration.BreakerRule
    public let name: String
    private let clock: any MonotonicClock
    private let logger: Logger
    private let inner = NIOLockedValueBox(Inner())

    public init(name: String, rule: SwitchyardConfiguration.BreakerRule, clock: any MonotonicClock, logger: Logger) {
        self.name = name
        self.rule = rule
        self.clock = clock
        self.logger = logger
    }

    public var state: State { inner.withLockedValue { $0.state } }

    /// Whether a request may go now (a half-open probe counts as taken until recorded).
    public func allow() -> Bool {
        let now = clock.nowNanos()
        var changed: State?
        let allowed = inner.withLockedValue { s -> Bool in
            switch s.state {
            case .closed: return true
            case .open:
                guard now >= s.openUntil else { return false }
                s.state = .halfOpen
                s.probesOut = 1
                s.probeSuccesses = 0
                changed = .halfOpen
                return true
            case .halfOpen:
                guard s.probesOut < rule.halfOpenProbes else { return false }
                s.probesOut += 1
                return true
            }
        }
        if let changed { transition(to: changed) }
        return allowed
    }

    /// One request's outcome: failed (5xx, refused, timed out) and how long it took.
    public func record(failed: Bool, seconds: Double) {
        let now = clock.nowNanos()
        let slow = rule.slowCallSeconds > 0 && seconds >= rule.slowCallSeconds
        var changed: State?
        inner.withLockedValue { s in
            switch s.state {
            case .open:
                return
            case .halfOpen:
                s.probesOut = max(0, s.probesOut - 1)
                if failed || slow {
                    s.state = .open
                    s.openUntil = now + UInt64(rule.openSeconds * 1e9)
                    changed = .open
                } else {
                    s.probeSuccesses += 1
                    if s.probeSuccesses >= rule.closeAfter {
                        s.state = .closed
                        s.buckets = [Bucket](repeating: Bucket(), count: Self.bucketCount)
                        changed = .closed
                    }
                }
            case .closed:
                let width = UInt64(rule.windowSeconds * 1e9) / UInt64(Self.bucketCount)
                let slot = now / max(1, width)
                let index = Int(slot % UInt64(Self.bucketCount))
                if s.buckets[index].start != slot { s.buckets[index] = Bucket(start: slot) }
                s.buckets[index].requests += 1
                if failed { s.buckets[index].failures += 1 }
                if slow { s.buckets[index].slow += 1 }
                let live = s.buckets.filter { $0.start + UInt64(Self.bucketCount) > slot }
                let requests = live.reduce(0) { $0 + $1.requests }
                let failures = live.reduce(0) { $0 + $1.failures }
                let slowCalls = live.reduce(0) { $0 + $1.slow }
                guard requests >= rule.minRequests else { return }
                let trips =
                    (rule.errorRatio > 0 && Double(failures) / Double(requests) >= rule.errorRatio)
                    || (rule.slowRatio > 0 && Double(slowCalls) / Double(requests) >= rule.slowRatio)
                    || (rule.errorCount > 0 && failures >= rule.errorCount)
                if trips {
                    s.state = .open
                    s.openUntil = now + UInt64(rule.openSeconds * 1e9)
                    changed = .open
                }
            }
        }
        if let changed { transition(to: changed) }
    }

    /// A probe cut off without a verdict (shutdown, client gone): it may be sent again.
    public func abandon() {
        inner.withLockedValue { s in if s.state == .halfOpen { s.probesOut = max(0, s.probesOut - 1) } }
    }

    private func transition(to state: State) {
        Counter(label: "switchyard_target_circuit_transitions_total", dimensions: [("target", name), ("state", state.rawValue)]).increment()
        Gauge(label: "switchyard_target_circuit_open", dimensions: [("target", name)]).record(state == .closed ? 0 : 1)
        switch state {
        case .open: logger.warning("route target circuit opened: requests fail fast, messages wait", metadata: ["target": "\(name)"])
        case .halfOpen: logger.notice("route target circuit half open: probing", metadata: ["target": "\(name)"])
        case .closed: logger.notice("route target circuit closed", metadata: ["target": "\(name)"])
        }
    }
}

/// The breakers of every route target, kept across reloads while a target's rule stays the same.
public final class TargetBreakers: Sendable {
    private let breakers = NIOLockedValueBox([String: TargetBreaker]())
    private let clock: any MonotonicClock
    private let logger: Logger

    public init(clock: any MonotonicClock, logger: Logger = Logger(label: "switchyard.circuit")) {
        self.clock = clock
        self.logger = logger
    }

    /// The breaker named `name` (a route and its target) under `rule`; nil without a rule.
    public func breaker(_ name: String, rule: SwitchyardConfiguration.BreakerRule?) -> TargetBreaker? {
        guard let rule else { return nil }
        return breakers.withLockedValue { all in
            if let existing = all[name], existing.rule == rule { return existing }
            let fresh = TargetBreaker(name: name, rule: rule, clock: clock, logger: logger)
            all[name] = fresh
            return fresh
        }
    }

    public func status() -> [(name: String, state: TargetBreaker.State)] {
        breakers.withLockedValue { $0.map { ($0.key, $0.value.state) } }.sorted { $0.name < $1.name }
    }
}
