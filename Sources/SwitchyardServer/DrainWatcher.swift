import Logging
import Registry
import Router
import ServiceLifecycle
import SwitchyardCore

/// Ends admin drains: once nothing is in flight to a drained instance (checked ten times a
/// second), the drain is complete and the instance leaves the registry — a persistent one is
/// deregistered; an ephemeral one is disabled, so the beats of a process still running cannot
/// register it again (a new registration, as after a restart, enables it). A static instance
/// from the config stays drained until `undrain`.
struct DrainWatcher: Service {
    let app: SwitchyardApplication
    /// A drain is at least this old before it can complete: a choice made just before it may
    /// still be on its way to the instance.
    static let settleSeconds = 0.2

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            completeDrains()
            try? await Task.sleep(nanoseconds: 100_000_000)
        }
    }

    func completeDrains() {
        let balancer = app.shared.balancer
        let keys = balancer.health.drainsInProgress(minSeconds: Self.settleSeconds)
        guard !keys.isEmpty else { return }
        let directory = app.pipeline.snapshot.directory
        let services = directory.services
        for key in keys {
            guard let instance = services[InstanceHealth.service(of: key)]?.first(where: { $0.key == key }),
                balancer.outstanding(instance) == 0
            else { continue }
            balancer.health.completeDrain(key) { leaveRegistry(instance, directory: directory) }
        }
    }

    /// Where `instance` is registered: the service name its routes bind (public namespace and
    /// default group otherwise) and its addresses there; none for a static instance.
    static func registrations(
        of instance: ServiceInstance,
        in registry: Registry,
        directory: RoutingDirectory
    ) -> [(ServiceName, InstanceAddress)] {
        guard directory.fixed[instance.service] == nil else { return [] }
        let name = directory.bindings[instance.service] ?? ServiceName(name: instance.service)
        return registry.addresses(ip: instance.host, port: instance.port, in: name).map { (name, $0) }
    }

    /// Takes a drained instance out of the registry; says what was done.
    func leaveRegistry(_ instance: ServiceInstance, directory: RoutingDirectory) -> String {
        guard let registry = app.registry else { return "none" }
        var outcome = "none"
        for (name, address) in Self.registrations(of: instance, in: registry, directory: directory) {
            guard var registered = registry.instance(address, in: name) else { continue }
            do {
                if registered.ephemeral {
                    registered.enabled = false
                    try registry.update(registered, in: name)
                    outcome = "disabled"
                } else {
                    try registry.deregister(address, in: name)
                    outcome = "deregistered"
                }
            } catch {
                app.logger.error(
                    "a drained instance could not leave the registry",
                    metadata: ["instance": "\(instance.key)", "error": "\(error)"]
                )
            }
        }
        return outcome
    }
}
