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
        /// An operator's drain (admin or registry metadata): it completes once nothing is in
        /// flight, and the instance then leaves the registry.
        public var completes: Bool { self == .admin || self == .registry }

        /// `POST /admin/instances/{id}/drain` or `switchyard drain` (until undrained).
        case admin
        /// Registry metadata `draining: true` (until the metadata says otherwise).
        case registry
        /// It answered `x-switchyard-draining: true` (for `headerDrainSeconds`).
        case response
        /// It closed a kept-alive connection or refused one, and a probe is refused too (until
        /// it accepts connections again).
        case closing
    }

    struct Drain {
        var source: DrainSource
        var until: UInt64?
        var since: UInt64
        /// An admin drain whose in-flight requests all finished.
        var completed = false
    }

    /// How an admin drain ended, kept for a while after the instance left the lists.
    public struct DrainEnd: Sendable, Encodable {
        /// What was done in the registry: `deregistered`, `disabled`, or `none` (a static instance).
        public var registry: String
        /// Wall-clock nanoseconds.
        public var at: UInt64
    }

    let clock: any MonotonicClock
    let logger: Logger
    private let state = NIOLockedValueBox<
        (
            entries: [String: Entry], drains: [String: Drain], warmUp: WarmUp, services: Set<String>, ended: [String: DrainEnd],
            cold: [String: UInt64],
            /// Each service's keys in `entries` (a service's list is compared with its own, not
            /// every instance's: a registration costs its service's size, not the registry's).
            keysOf: [String: Set<String>]
        )
    >(([:], [:], WarmUp(), [], [:], [:], [:]))
    /// Instances still warming or draining: zero (the steady state) means `apply` returns its input untouched.
    private let special = Atomic<Int>(0)
    /// How long a response's `x-switchyard-draining: true` keeps the instance out.
    public let headerDrainSeconds: Double
    /// Whether an instance accepts connections (a TCP connect; set by the server).
    private let prober = NIOLockedValueBox<(@Sendable (String, Int) async -> Bool)?>(nil)
    /// How often an instance that refused the probe is probed again.
    public let probeIntervalSeconds: Double

    public init(
        clock: any MonotonicClock,
        logger: Logger = Logger(label: "switchyard.instances"),
        headerDrainSeconds: Double = 30,
        probeIntervalSeconds: Double = 1
    ) {
        self.clock = clock
        self.logger = logger
        self.headerDrainSeconds = headerDrainSeconds
        self.probeIntervalSeconds = probeIntervalSeconds
    }

    /// Ends every probe loop (the node is shutting down); no new ones start.
    public func stopProbing() {
        prober.withLockedValue { $0 = nil }
    }

    /// How `closing` checks whether an instance still accepts connections.
    public func setProber(_ probe: @escaping @Sendable (_ host: String, _ port: Int) async -> Bool) {
        prober.withLockedValue { $0 = probe }
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
            for key in s.keysOf[service] ?? [] where !keys.contains(key) {
                guard let entry = s.entries[key], entry.service == service else { continue }
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
            s.keysOf[service] = keys.isEmpty ? nil : keys
            // A cold fleet: every instance is new (a full redeploy); it warms from its oldest.
            if let name = instances.first?.service {
                let fleet = instances.compactMap { s.entries[$0.key] }
                s.cold[name] = fleet.allSatisfy(\.warming) ? fleet.map(\.seenSince).min() : nil
            }
        }
        for key in started {
            InstanceHealth.count("warmup_started", service: Self.service(of: key))
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
            var closing: [ServiceInstance] = []
            for var instance in instances {
                if let drain = s.drains[instance.key] {
                    if let until = drain.until, now >= until {
                        s.drains[instance.key] = nil
                        special.wrappingSubtract(1, ordering: .relaxed)
                        undrained.append(instance.key)
                    } else {
                        if drain.source == .closing { closing.append(instance) }
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
            // Instances that refuse connections are left out only while another serves: when
            // none does, the service is down for now (messages wait, requests fail over or fail).
            return out.isEmpty ? closing : out
        }
        for (service, key) in ended {
            InstanceHealth.count("warmup_ended", service: Self.service(of: key))
            logger.info("warm-up ended: the instance gets its full share", metadata: ["service": "\(service)", "instance": "\(key)"])
        }
        for key in undrained { logger.info("drain mark expired: the instance may get requests again", metadata: ["instance": "\(key)"]) }
        return result
    }

    /// While every instance of `service` is new (a cold fleet), the share of its usual
    /// concurrency it may take now: one third at first, then up the warm-up curve; nil when
    /// the fleet is warm (no lock when nothing warms anywhere).
    public func coldFraction(_ service: String) -> Double? {
        if special.load(ordering: .relaxed) == 0 { return nil }
        let now = clock.nowNanos()
        return state.withLockedValue { s in
            guard let since = s.cold[service] else { return nil }
            let factor = s.warmUp.factor(elapsed: Double(now &- since) / 1e9)
            if factor >= 1 {
                s.cold[service] = nil
                return nil
            }
            return max(1.0 / 3, factor)
        }
    }

    /// No new requests or messages for the instance (`service@host:port`) from now on.
    public func drain(_ key: String, source: DrainSource) {
        let until = source == .response ? clock.nowNanos() + UInt64(headerDrainSeconds * 1e9) : nil
        let fresh = state.withLockedValue { s -> Bool in
            let fresh = s.drains[key] == nil
            if fresh { special.wrappingAdd(1, ordering: .relaxed) }
            if s.drains[key]?.source.completes != true { s.drains[key] = Drain(source: source, until: until, since: clock.nowNanos()) }
            if source.completes { s.ended[key] = nil }
            return fresh
        }
        guard fresh else { return }
        let service = Self.service(of: key)
        InstanceHealth.count("drain_started", service: service)
        logger.notice(
            "drain started: the instance gets no new requests; in-flight ones finish",
            metadata: ["instance": "\(key)", "source": "\(source.rawValue)"]
        )
    }

    /// Registry metadata `draining: true` drains an instance as an admin drain does (it
    /// completes, and the instance leaves the registry, once nothing is in flight); the mark
    /// going away takes it back.
    public func syncMetadataDrains(_ instances: [ServiceInstance]) {
        for instance in instances {
            let marked = instance.metadata["draining"]?.lowercased() == "true"
            let source = state.withLockedValue { $0.drains[instance.key]?.source }
            if marked && source != .admin && source != .registry {
                drain(instance.key, source: .registry)
            } else if !marked && source == .registry {
                undrain(instance.key)
            }
        }
    }

    /// Admin drains still waiting for their in-flight requests, at least `minSeconds` old (a
    /// choice made just before the drain may still be on its way to the instance).
    public func drainsInProgress(minSeconds: Double) -> [String] {
        let now = clock.nowNanos()
        return state.withLockedValue { s in
            s.drains.compactMap { key, drain in
                drain.source.completes && !drain.completed && Double(now &- drain.since) / 1e9 >= minSeconds ? key : nil
            }
        }
    }

    /// The admin drain of `key` is over: nothing is in flight to it. `leave` takes it out of the
    /// registry (after the drain is marked complete: leaving may end the drain mark) and says
    /// what it did (`deregistered`, `disabled`, `none`).
    public func completeDrain(_ key: String, leave: () -> String) {
        let marked = state.withLockedValue { s -> Bool in
            guard var drain = s.drains[key], drain.source.completes, !drain.completed else { return false }
            drain.completed = true
            s.drains[key] = drain
            return true
        }
        guard marked else { return }
        let registry = leave()
        state.withLockedValue { s in
            s.ended[key] = DrainEnd(registry: registry, at: WallClock.nowNanos())
            // Forget drains that ended long ago (instances replaced since).
            if s.ended.count > 1024 {
                let cutoff = WallClock.nowNanos() &- 3_600_000_000_000
                s.ended = s.ended.filter { $0.value.at >= cutoff }
            }
        }
        let service = Self.service(of: key)
        InstanceHealth.count("drain_completed", service: service)
        logger.notice(
            "drain completed: nothing in flight to the instance; it may be stopped",
            metadata: ["instance": "\(key)", "registry": "\(registry)"]
        )
    }

    /// How the last admin drain of `key` ended, if it did.
    public func drainEnd(of key: String) -> DrainEnd? {
        state.withLockedValue { $0.ended[key] }
    }

    /// The instance closed a kept-alive connection (`Connection: close`) or refused one: it may
    /// be shutting down, so it gets nothing new at once while a probe connects to it. Accepted (a server
    /// that closes connections after so many requests), it is back at once; refused, it stays
    /// out, probed every `probeIntervalSeconds`, until it accepts again — and then warms up
    /// again, as after a restart. One probe at a time per instance.
    public func closing(_ instance: ServiceInstance) {
        guard let probe = prober.withLockedValue({ $0 }) else { return }
        let key = instance.key
        let fresh = state.withLockedValue { s -> Bool in
            guard s.drains[key] == nil else { return false }
            s.drains[key] = Drain(source: .closing, until: nil, since: clock.nowNanos())
            special.wrappingAdd(1, ordering: .relaxed)
            return true
        }
        guard fresh else { return }
        let service = instance.service
        Task {
            var refused = 0
            while await !probe(instance.host, instance.port) {
                refused += 1
                if refused == 1 {
                    InstanceHealth.count("drain_started", service: service)
                    logger.notice(
                        "drain started: the instance closed a kept-alive connection and refuses new ones; it gets nothing new until it accepts again",
                        metadata: ["instance": "\(key)", "source": "closing"]
                    )
                }
                try? await Task.sleep(nanoseconds: UInt64(probeIntervalSeconds * 1e9))
                // Undrained, drained for another reason meanwhile, gone from the lists, or the node stops.
                if state.withLockedValue({ $0.drains[key]?.source }) != .closing || prober.withLockedValue({ $0 == nil }) { return }
            }
            let now = clock.nowNanos()
            let back = state.withLockedValue { s -> Bool in
                guard s.drains[key]?.source == .closing else { return false }
                s.drains[key] = nil
                special.wrappingSubtract(1, ordering: .relaxed)
                // It went away and came back: a new process, which warms up again.
                if refused > 0, s.warmUp.windowSeconds > 0, var entry = s.entries[key] {
                    if !entry.warming { special.wrappingAdd(1, ordering: .relaxed) }
                    (entry.seenSince, entry.warming) = (now, true)
                    s.entries[key] = entry
                }
                return true
            }
            if back && refused > 0 {
                InstanceHealth.count("drain_ended", service: service)
                logger.notice("the instance accepts connections again; it warms up again", metadata: ["instance": "\(key)"])
            }
        }
    }

    /// Takes the instance back; returns false when it was not draining.
    @discardableResult
    public func undrain(_ key: String) -> Bool {
        let was = state.withLockedValue { s -> Bool in
            s.ended[key] = nil
            guard s.drains.removeValue(forKey: key) != nil else { return false }
            special.wrappingSubtract(1, ordering: .relaxed)
            return true
        }
        if was {
            let service = Self.service(of: key)
            InstanceHealth.count("drain_ended", service: service)
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

extension InstanceHealth {
    /// Counts a state change of an instance (`switchyard_instance_events_total{service,event}`).
    static func count(_ event: String, service: String) {
        Counter(label: "switchyard_instance_events_total", dimensions: [("service", service), ("event", event)]).increment()
    }

    /// The service of an instance key (`service@host:port`).
    public static func service(of key: String) -> String { String(key.split(separator: "@").first ?? "") }
}

extension SwitchyardConfiguration.Resilience {
    /// The warm-up curve these settings give.
    public var warmUp: WarmUp {
        WarmUp(windowSeconds: warmUpSeconds, aggression: warmUpAggression, minPercent: warmUpMinPercent)
    }
}
