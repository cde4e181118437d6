import Foundation
import HTTPIngress
import NIOHTTP1
import Registry
import Router
import SwitchyardCore

/// `GET /admin/services` and `POST /admin/instances/{id}/drain|undrain`.
extension AdminResponder {
    struct InstanceView: Encodable {
        var id: String
        var url: String
        var lane: String
        var weight: Int
        var warmUpPercent: Double
        var warmingForSeconds: Double?
        var draining: InstanceHealth.DrainSource?
        /// An admin drain: `in_progress` until nothing is in flight, then `completed`.
        var drain: String?
        var inFlight: Int
        var circuit: CircuitBreakers.State
    }

    struct ServiceView: Encodable {
        var service: String
        var instances: [InstanceView]
        var retriesInFlight: Int
        /// Every instance is new (a full redeploy): the concurrency the service is allowed now.
        var coldLimit: Int?
        /// The circuit breakers of the route targets (message routes) and gateway routes that
        /// lead to the service, by name (`route→service`, `gateway:route`).
        var routeCircuits: [String: TargetBreaker.State]?
    }

    func handleInstances(_ request: IncomingRequest, path: String) -> OutgoingResponse? {
        let balancer = app.shared.balancer
        if path == "/admin/services" {
            guard request.method == .GET else { return .error(.methodNotAllowed, "method_not_allowed", "GET /admin/services") }
            let circuits = Dictionary(balancer.breakers.status().map { ($0.instance, $0.state) }, uniquingKeysWith: { a, _ in a })
            let breakers = Dictionary(balancer.targetBreakers.status().map { ($0.name, $0.state) }, uniquingKeysWith: { a, _ in a })
            let configuration = app.pipeline.snapshot.configuration
            func routeCircuits(_ service: String) -> [String: TargetBreaker.State]? {
                var names = configuration.routes.filter { $0.targets.contains { $0.service == service && $0.breaker != nil } }
                    .map { "\($0.name)→\(service)" }
                names += configuration.gateway.routes.filter { $0.service == service && $0.breaker != nil }.map { "gateway:\($0.name)" }
                let states = Dictionary(names.map { ($0, breakers[$0] ?? .closed) }, uniquingKeysWith: { a, _ in a })
                return states.isEmpty ? nil : states
            }
            let services = app.pipeline.snapshot.directory.services.sorted { $0.key < $1.key }.map { name, instances in
                ServiceView(
                    service: name,
                    instances: instances.map { instance in
                        let status = balancer.health.status(of: instance.key)
                        return InstanceView(
                            id: instance.key,
                            url: instance.url,
                            lane: instance.lane ?? "baseline",
                            weight: instance.weight,
                            warmUpPercent: status.warmUpPercent,
                            warmingForSeconds: status.warmingForSeconds,
                            draining: status.draining,
                            drain: drainState(instance.key, draining: status.draining),
                            inFlight: balancer.outstanding(instance),
                            circuit: circuits[instance.key] ?? .closed
                        )
                    },
                    retriesInFlight: balancer.retryBudget.inFlight(name).retrying,
                    coldLimit: balancer.coldLimit(name),
                    routeCircuits: routeCircuits(name)
                )
            }
            return encode(services)
        }
        guard path.hasPrefix("/admin/instances/") else { return nil }
        let rest = path.dropFirst("/admin/instances/".count)
        let usage = "use GET /admin/instances/{id}, POST /admin/instances/{id}/drain or /undrain (ids as GET /admin/services lists them)"
        let (rawID, action): (Substring, Substring?) =
            if request.method == .GET { (rest, nil) } else if let slash = rest.lastIndex(of: "/") {
                (rest[..<slash], rest[rest.index(after: slash)...])
            } else { (rest, "") }
        let id = String(rawID).removingPercentEncoding ?? String(rawID)
        guard request.method == .GET || (request.method == .POST && (action == "drain" || action == "undrain")) else {
            return .error(.notFound, "not_found", usage)
        }
        let directory = app.pipeline.snapshot.directory
        let instance = directory.services.values.lazy.flatMap({ $0 }).first(where: { $0.key == id })
        if instance == nil, let end = balancer.health.drainEnd(of: id) {
            // Drained and gone from the registry's lists.
            if action == "undrain" {
                balancer.health.undrain(id)
                if end.registry == "disabled" { enableInRegistry(id, directory: directory) }
            } else if action == "drain" {
                return .error(.conflict, "already_drained", "instance \(id) was drained and has left the registry (\(end.registry))")
            }
            return instanceJSON(id, in: nil, end: action == "undrain" ? nil : end)
        }
        guard let instance else {
            return .error(.notFound, "unknown_instance", "no instance \(id) among the services the routes reach (see GET /admin/services)")
        }
        if action == "drain" {
            balancer.health.drain(id, source: .admin)
        } else if action == "undrain" {
            balancer.health.undrain(id)
        }
        return instanceJSON(id, in: instance, end: balancer.health.drainEnd(of: id))
    }

    /// An operator's drain: `in_progress` until it completes (nothing in flight, the instance
    /// out of the registry), then `completed`; nil for no such drain.
    private func drainState(_ id: String, draining: InstanceHealth.DrainSource?) -> String? {
        if app.shared.balancer.health.drainEnd(of: id) != nil { return "completed" }
        return draining?.completes == true ? "in_progress" : nil
    }

    /// `{id, draining, drain: in_progress|completed|null, registry, in_flight}`.
    private func instanceJSON(_ id: String, in instance: ServiceInstance?, end: InstanceHealth.DrainEnd?) -> OutgoingResponse {
        let balancer = app.shared.balancer
        let status = balancer.health.status(of: id)
        let draining = status.draining.map { "\"\($0.rawValue)\"" } ?? "null"
        let drain = end == nil ? drainState(id, draining: status.draining).map { "\"\($0)\"" } ?? "null" : "\"completed\""
        let registry = end.map { "\"\($0.registry)\"" } ?? "null"
        let inFlight = instance.map { balancer.outstanding($0) } ?? 0
        return .json(
            .ok,
            "{\"id\":\(JSONText.quote(id)),\"draining\":\(draining),\"drain\":\(drain),\"registry\":\(registry),\"in_flight\":\(inFlight)}"
        )
    }

    /// Undrain of an ephemeral instance the drain disabled: enabled again in the registry.
    private func enableInRegistry(_ id: String, directory: RoutingDirectory) {
        guard let registry = app.registry, let at = id.firstIndex(of: "@"),
            let instance = ServiceInstance(service: String(id[..<at]), url: "http://" + id[id.index(after: at)...])
        else { return }
        for (name, address) in DrainWatcher.registrations(of: instance, in: registry, directory: directory) {
            guard var registered = registry.instance(address, in: name), !registered.enabled else { continue }
            registered.enabled = true
            try? registry.update(registered, in: name)
        }
    }
}
