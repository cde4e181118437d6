import Foundation
import HTTPIngress
import NIOHTTP1
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
        var inFlight: Int
        var circuit: CircuitBreakers.State
    }

    struct ServiceView: Encodable {
        var service: String
        var instances: [InstanceView]
        var retriesInFlight: Int
    }

    func handleInstances(_ request: IncomingRequest, path: String) -> OutgoingResponse? {
        let balancer = app.shared.balancer
        if path == "/admin/services" {
            guard request.method == .GET else { return .error(.methodNotAllowed, "method_not_allowed", "GET /admin/services") }
            let circuits = Dictionary(balancer.breakers.status().map { ($0.instance, $0.state) }, uniquingKeysWith: { a, _ in a })
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
                            inFlight: balancer.outstanding(instance),
                            circuit: circuits[instance.key] ?? .closed
                        )
                    },
                    retriesInFlight: balancer.retryBudget.inFlight(name).retrying
                )
            }
            return encode(services)
        }
        guard path.hasPrefix("/admin/instances/") else { return nil }
        let rest = path.dropFirst("/admin/instances/".count)
        guard let slash = rest.lastIndex(of: "/") else {
            return .error(.notFound, "not_found", "use POST /admin/instances/{id}/drain or /undrain (ids as GET /admin/services lists them)")
        }
        let id = String(rest[..<slash]).removingPercentEncoding ?? String(rest[..<slash])
        let action = rest[rest.index(after: slash)...]
        guard request.method == .POST, action == "drain" || action == "undrain" else {
            return .error(.notFound, "not_found", "use POST /admin/instances/{id}/drain or /undrain")
        }
        guard let instance = app.pipeline.snapshot.directory.services.values.lazy.flatMap({ $0 }).first(where: { $0.key == id }) else {
            return .error(.notFound, "unknown_instance", "no instance \(id) among the services the routes reach (see GET /admin/services)")
        }
        if action == "drain" {
            balancer.health.drain(id, source: .admin)
        } else {
            balancer.health.undrain(id)
        }
        let status = balancer.health.status(of: id)
        let draining = status.draining.map { "\"\($0.rawValue)\"" } ?? "null"
        return .json(.ok, "{\"id\":\(JSONText.quote(id)),\"draining\":\(draining),\"in_flight\":\(balancer.outstanding(instance))}")
    }
}
