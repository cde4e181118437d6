import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
public import SwitchyardCore
import Synchronization

/// The warm-up curve (Envoy's slow start): an instance first seen healthy `t` seconds ago gets
/// `W · max(minPercent, (t/T)^(1/aggression))` of its weight until `t` reaches `T`.
public struct WarmUp: Sendable, Equatable {
    /// `T`; 0 turns warm-up off.
    public var windowSeconds: Double
    /// Above 1 the weight climbs fast at first, below 1 slowly; 1 is linear.
    public var aggression: Double
    /// The share (0–100) a brand-new instance starts with.
    public var minPercent: Double

    public init(windowSeconds: Double = 60, aggression: Double = 1, minPercent: Double = 10) {
        self.windowSeconds = windowSeconds
        self.aggression = aggression
        self.minPercent = minPercent
    }

    /// The share of its weight an instance gets `elapsed` seconds after it was first seen healthy.
    public func factor(elapsed: Double) -> Double {
        guard windowSeconds > 0, elapsed < windowSeconds else { return 1 }
        return max(minPercent / 100, pow(max(0, elapsed) / windowSeconds, 1 / aggression))
    }
}

/// What the router knows about each instance beyond the registry: when it first saw it healthy
/// (warm-up, by the router's own clock — a provider's clock changes nothing), and whether it is
/// draining (no new requests or messages; in-flight ones finish). Shared by the message router
/// and the gateway; outlives reloads.
public final class InstanceHealth: Sendable {
    struct Entry {
        var service: String
        var seenSince: UInt64
        var warming = true
    }

    /// Why an instance gets nothing new.
    public enum DrainSource: String, Sendable, Encodable {
        /// `POST /admin/instances/{id}/drain` or `switchyard drain` (until undrained).
        case admin
        /// It answered `x-switchyard-draining: true` (for `headerDrainSeconds`).
        case response
    }

    struct Drain {
        var source: DrainSource
        var until: UInt64?
    }

    let clock: any MonotonicClock
    private let logger: Logger
    private let state = NIOLockedValueBox<(entries: [String: Entry], drains: [String: Drain], warmUp: WarmUp, services: Set<String>)>(
        ([:], [:], WarmUp(), [])
    )
    /// Instances still warming or draining: zero (the steady state) means `apply` returns its input untouched.
    private let special = Atomic<Int>(0)
    /// How long a response's `x-switchyard-draining: true` keeps the instance out.
    public let headerDrainSeconds: Double

    public init(clock: any MonotonicClock, logger: Logger = Logger(label: "switchyard.instances"), headerDrainSeconds: Double = 30) {
        self.clock = clock
        self.logger = logger
        self.headerDrainSeconds = headerDrainSeconds
    }

    public func setWarmUp(_ warmUp: WarmUp) {
        state.withLockedValue { $0.warmUp = warmUp }
    }

    /// The healthy instances of `service` now: new ones start warming, missing ones are
    /// forgotten (so one that comes back after a health flap warms up again). The first list
    /// seen of a service is taken as warm: those instances were serving before the router
    /// started, they are not new.
    public func observe(service: String, instances: [ServiceInstance]) {
        let now = clock.nowNanos()
        var started: [String] = []
        var gone: [String] = []
        state.withLockedValue { s in
            let known = s.services.insert(service).inserted == false
            let keys = Set(instances.map(\.key))
            for (key, entry) in s.entries where entry.service == service && !keys.contains(key) {
                if entry.warming { special.wrappingSubtract(1, ordering: .relaxed) }
                s.entries[key] = nil
                // Drained, then deregistered: its drain is over; when it returns it is a new instance.
                if s.drains.removeValue(forKey: key) != nil { special.wrappingSubtract(1, ordering: .relaxed) }
                gone.append(key)
            }
            for instance in instances where s.entries[instance.key] == nil {
                let warming = known && s.warmUp.windowSeconds > 0
                s.entries[instance.key] = Entry(service: service, seenSince: now, warming: warming)
                if warming {
                    special.wrappingAdd(1, ordering: .relaxed)
                    started.append(instance.key)
                }
            }
        }
        for key in started {
            Counter(label: "switchyard_instance_events_total", dimensions: [("service", service), ("event", "warmup_started")]).increment()
            logger.info("warm-up started: the instance's share ramps up", metadata: ["service": "\(service)", "instance": "\(key)"])
        }
        for key in gone {
            logger.info(
                "instance left the healthy list; it warms up again when it returns",
                metadata: ["service": "\(service)", "instance": "\(key)"]
            )
        }
    }

    /// `instances` as the balancer should see them: draining ones left out, warming ones with
    /// their weight scaled down the curve. Untouched (no lock) when nothing warms or drains.
    public func apply(_ instances: [ServiceInstance]) -> [ServiceInstance] {
        if special.load(ordering: .relaxed) == 0 { return instances }
        let now = clock.nowNanos()
        var ended: [(String, String)] = []
        var undrained: [String] = []
        let result = state.withLockedValue { s -> [ServiceInstance] in
            var out: [ServiceInstance] = []
            out.reserveCapacity(instances.count)
            for var instance in instances {
                if let drain = s.drains[instance.key] {
                    if let until = drain.until, now >= until {
                        s.drains[instance.key] = nil
                        special.wrappingSubtract(1, ordering: .relaxed)
                        undrained.append(instance.key)
                    } else {
                        continue
                    }
                }
                if var entry = s.entries[instance.key], entry.warming {
                    let factor = s.warmUp.factor(elapsed: Double(now &- entry.seenSince) / 1e9)
                    if factor >= 1 {
                        entry.warming = false
                        s.entries[instance.key] = entry
                        special.wrappingSubtract(1, ordering: .relaxed)
                        ended.append((entry.service, instance.key))
                    } else {
                        instance.weight = max(1, Int((Double(instance.weight) * factor).rounded()))
                    }
                }
                out.append(instance)
            }
            return out
        }
        for (service, key) in ended {
            Counter(label: "switchyard_instance_events_total", dimensions: [("service", service), ("event", "warmup_ended")]).increment()
            logger.info("warm-up ended: the instance gets its full share", metadata: ["service": "\(service)", "instance": "\(key)"])
        }
        for key in undrained { logger.info("drain mark expired: the instance may get requests again", metadata: ["instance": "\(key)"]) }
        return result
    }

    /// No new requests or messages for the instance (`service@host:port`) from now on.
    public func drain(_ key: String, source: DrainSource) {
        let until = source == .response ? clock.nowNanos() + UInt64(headerDrainSeconds * 1e9) : nil
        let fresh = state.withLockedValue { s -> Bool in
            let fresh = s.drains[key] == nil
            if fresh { special.wrappingAdd(1, ordering: .relaxed) }
            if s.drains[key]?.source != .admin { s.drains[key] = Drain(source: source, until: until) }
            return fresh
        }
        guard fresh else { return }
        let service = String(key.split(separator: "@").first ?? "")
        Counter(label: "switchyard_instance_events_total", dimensions: [("service", service), ("event", "drain_started")]).increment()
        logger.notice(
            "drain started: the instance gets no new requests; in-flight ones finish",
            metadata: ["instance": "\(key)", "source": "\(source.rawValue)"]
        )
    }

    /// Takes the instance back; returns false when it was not draining.
    @discardableResult
    public func undrain(_ key: String) -> Bool {
        let was = state.withLockedValue { s -> Bool in
            guard s.drains.removeValue(forKey: key) != nil else { return false }
            special.wrappingSubtract(1, ordering: .relaxed)
            return true
        }
        if was {
            let service = String(key.split(separator: "@").first ?? "")
            Counter(label: "switchyard_instance_events_total", dimensions: [("service", service), ("event", "drain_ended")]).increment()
            logger.notice("drain ended: the instance gets requests again", metadata: ["instance": "\(key)"])
        }
        return was
    }

    public struct Status: Sendable, Encodable {
        /// Percent of its weight it gets now (100 once warm).
        public var warmUpPercent: Double
        public var warmingForSeconds: Double?
        public var draining: DrainSource?
    }

    public func status(of key: String) -> Status {
        let now = clock.nowNanos()
        return state.withLockedValue { s in
            var status = Status(warmUpPercent: 100, warmingForSeconds: nil, draining: s.drains[key]?.source)
            if let entry = s.entries[key], entry.warming {
                let elapsed = Double(now &- entry.seenSince) / 1e9
                status.warmUpPercent = (s.warmUp.factor(elapsed: elapsed) * 1000).rounded() / 10
                status.warmingForSeconds = (elapsed * 10).rounded() / 10
            }
            return status
        }
    }
}

extension SwitchyardConfiguration.Resilience {
    /// The warm-up curve these settings give.
    public var warmUp: WarmUp {
        WarmUp(windowSeconds: warmUpSeconds, aggression: warmUpAggression, minPercent: warmUpMinPercent)
    }
}
