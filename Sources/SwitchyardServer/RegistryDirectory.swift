import Logging
import NIOConcurrencyHelpers
import Registry
import Router
import SwitchyardCore

/// The router's view of the registry: per service, the instances it may send to (healthy and
/// enabled; metadata `lane` names their lane), refreshed by an in-process watch the moment
/// the registry changes. Outlives config reloads.
///
/// Push-empty protection: when a store resync (a restarted or reconnected store) turns a
/// service's non-empty list empty, the last good list keeps serving for
/// `emptyProtectionSeconds`, logged, before the empty list is believed. Deregistrations and
/// beat expiry are believed at once.
final class RegistryView: Sendable {
    struct Entry: Sendable {
        var instances: [ServiceInstance]
        /// Set while an empty resync result is being doubted.
        var protectedUntil: UInt64?
    }

    let registry: Registry
    let clock: any MonotonicClock
    let graceNanos: UInt64
    let logger: Logger
    /// Told of every new list, so new instances warm up and returning ones warm up again.
    let health: InstanceHealth?
    private let entries = NIOLockedValueBox<[ServiceName: Entry]>([:])
    private let token = NIOLockedValueBox<UInt64?>(nil)

    init(registry: Registry, clock: any MonotonicClock, emptyProtectionSeconds: Double, logger: Logger, health: InstanceHealth? = nil) {
        self.health = health
        self.registry = registry
        self.clock = clock
        self.graceNanos = UInt64(max(0, emptyProtectionSeconds) * 1e9)
        self.logger = logger
        let id = registry.watch { [weak self] name, change in self?.refresh(name, change) }
        token.withLockedValue { $0 = id }
        for (name, _) in registry.snapshot() { refresh(name, .instances) }
    }

    deinit {
        if let id = token.withLockedValue({ $0 }) { registry.unwatch(id) }
    }

    /// Healthy, enabled and weighted (metadata `draining: true` drains an instance: the router
    /// leaves it out, and once nothing is in flight the drain completes as an admin drain does).
    static func usable(_ view: ServiceView) -> [ServiceInstance] {
        view.hosts.filter { $0.healthy && $0.enabled && $0.weight > 0 }.map { host in
            let lane = host.metadata["lane"].flatMap { $0.isEmpty || $0 == "baseline" ? nil : $0 }
            return ServiceInstance(
                service: view.name.name,
                host: host.ip,
                port: host.port,
                weight: max(1, Int((host.weight * 100).rounded())),
                lane: lane,
                metadata: host.metadata
            )
        }
    }

    func refresh(_ name: ServiceName, _ change: RegistryChange) {
        let now = clock.nowNanos()
        let doubted = entries.withLockedValue { entries -> Int? in
            // Read under this lock: two refreshes racing could otherwise store the older list last.
            let fresh = Self.usable(registry.list(name))
            if fresh.isEmpty, change == .resync, graceNanos > 0, let old = entries[name], !old.instances.isEmpty {
                if old.protectedUntil == nil { entries[name]?.protectedUntil = now + graceNanos }
                return old.instances.count
            }
            entries[name] = fresh.isEmpty ? nil : Entry(instances: fresh)
            health?.observe(service: "\(name)", instances: fresh)
            health?.syncMetadataDrains(fresh)
            return nil
        }
        if let kept = doubted {
            logger.warning(
                "registry resync found no instances of a service that had some; the router keeps the last good list",
                metadata: ["service": "\(name)", "kept": "\(kept)", "for_seconds": "\(Double(graceNanos) / 1e9)"]
            )
        }
    }

    /// What the router may use now.
    func instances(of name: ServiceName) -> [ServiceInstance] {
        entries.withLockedValue { entries in
            guard let entry = entries[name] else { return [] }
            if let until = entry.protectedUntil, clock.nowNanos() >= until {
                // The grace period is over: believe the registry.
                let current = Self.usable(registry.list(name))
                entries[name] = current.isEmpty ? nil : Entry(instances: current)
                health?.observe(service: "\(name)", instances: current)
                health?.syncMetadataDrains(current)
                return current
            }
            return entry.instances
        }
    }
}

/// Static services from the config first; every other service a route names is looked up
/// in the registry under the namespace and group its target gives.
struct RoutingDirectory: ServiceDirectory {
    let fixed: [String: [ServiceInstance]]
    let bindings: [String: ServiceName]
    let view: RegistryView?
    /// Warm-up weights and drains, applied to every list handed out.
    let health: InstanceHealth?

    init(configuration: SwitchyardConfiguration, view: RegistryView?, health: InstanceHealth? = nil) {
        var fixed: [String: [ServiceInstance]] = [:]
        for (name, rule) in configuration.services {
            fixed[name] = rule.instances.compactMap { ServiceInstance(service: name, url: $0.url, weight: $0.weight, lane: $0.lane) }
            health?.observe(service: "static:\(name)", instances: fixed[name]!)
        }
        self.health = health
        var bindings: [String: ServiceName] = [:]
        for route in configuration.routes {
            for t in route.targets where fixed[t.service] == nil {
                bindings[t.service] = ServiceName(namespace: t.namespace, group: t.group, name: t.service)
            }
        }
        for route in configuration.gateway.routes where fixed[route.service] == nil {
            bindings[route.service] = ServiceName(namespace: route.namespace, group: route.group, name: route.service)
        }
        self.fixed = fixed
        self.bindings = bindings
        self.view = view
    }

    /// Every service the routes can reach, with the instances usable now (admin views).
    var services: [String: [ServiceInstance]] {
        var all = fixed
        for service in bindings.keys { all[service] = view.map { $0.instances(of: bindings[service]!) } ?? [] }
        return all
    }

    /// Egress by name: a static service, a service the routes name, or any the registry has
    /// usable instances of (public namespace, default group); nil when none of these.
    func egressInstances(of service: String) -> [ServiceInstance]? {
        if fixed[service] != nil || bindings[service] != nil { return instances(of: service) }
        guard let view else { return nil }
        let list = Self.usable(view.instances(of: ServiceName(name: service)), health: health)
        return list.isEmpty ? nil : list
    }

    /// Where a service's instances come from.
    private enum Origin: Sendable {
        case fixed([ServiceInstance])
        case registry(RegistryView, ServiceName)
        case none
    }

    private func origin(of service: String) -> Origin {
        if let list = fixed[service] { return .fixed(list) }
        guard let view, let name = bindings[service] else { return .none }
        return .registry(view, name)
    }

    /// The instances to choose from now: warming ones weigh less, draining ones are left out.
    private static func instances(from origin: Origin, health: InstanceHealth?) -> [ServiceInstance] {
        switch origin {
        case .fixed(let list): usable(list, health: health)
        case .registry(let view, let name): usable(view.instances(of: name), health: health)
        case .none: []
        }
    }

    private static func usable(_ list: [ServiceInstance], health: InstanceHealth?) -> [ServiceInstance] {
        health?.apply(list) ?? list
    }

    func instances(of service: String) -> [ServiceInstance] {
        Self.instances(from: origin(of: service), health: health)
    }

    /// As `instances(of:)`, with the static list or the registry name found once.
    func source(of service: String) -> @Sendable () -> [ServiceInstance] {
        let (origin, health) = (origin(of: service), health)
        return { Self.instances(from: origin, health: health) }
    }
}
