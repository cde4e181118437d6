import ConfigCenter
import Foundation
import HTTPIngress
import NIOCore
import NIOHTTP1
import Registry

/// `/admin/registry/…`: what the registry and the config center hold, and config rollback
/// (the CLI's `switchyard registry …`).
extension AdminResponder {
    struct RegistryServiceView: Encodable {
        var namespace: String
        var group: String
        var name: String
        var instances: Int
        var healthy: Int
        var protectThreshold: Double
    }

    struct RegistryInstanceView: Encodable {
        var ip: String
        var port: Int
        var cluster: String
        var weight: Double
        var healthy: Bool
        var enabled: Bool
        var ephemeral: Bool
        var lane: String?
        var metadata: [String: String]
    }

    struct ConfigView: Encodable {
        var tenant: String
        var group: String
        var dataId: String
        var md5: String
        var type: String
        var revision: Int64
        var lastModified: Date
        var betaIps: [String]?
    }

    struct RevisionView: Encodable {
        var revision: Int64
        var operation: String
        var release: String
        var md5: String
        var content: String
        var betaIps: [String]
        var sourceIp: String
        var sourceUser: String
        var at: Date
    }

    struct RollbackRequest: Decodable {
        var dataId: String
        var group: String?
        var tenant: String?
        var revision: Int64
    }

    /// nil when the path is not a registry endpoint.
    func handleRegistry(_ request: IncomingRequest, path: String) -> OutgoingResponse? {
        guard path.hasPrefix("/admin/registry/") else { return nil }
        guard let registry = app.registry, let configs = app.configCenter else {
            return .error(.notFound, "registry_off", "the registry is off (registry.enabled: false)")
        }
        let q = request.query
        switch (request.method, path) {
        case (.GET, "/admin/registry/services"):
            let namespace = q["namespace"] ?? ServiceName.defaultNamespace
            let views = registry.services(namespace: namespace).map { name in
                let all = registry.list(name)
                return RegistryServiceView(
                    namespace: name.namespace,
                    group: name.group,
                    name: name.name,
                    instances: all.hosts.count,
                    healthy: all.hosts.filter(\.healthy).count,
                    protectThreshold: registry.service(name)?.settings.protectThreshold ?? 0
                )
            }
            return encode(views)
        case (.GET, "/admin/registry/instances"):
            guard let service = q["service"], !service.isEmpty else {
                return .error(.badRequest, "bad_query", "service is required: /admin/registry/instances?service=NAME[&namespace=…&group=…]")
            }
            let name = ServiceName(namespace: q["namespace"] ?? "", group: q["group"] ?? "", name: service)
            let view = registry.list(name)
            guard view.exists else { return .error(.notFound, "not_found", "no service \(name)") }
            return encode(
                view.hosts.map {
                    RegistryInstanceView(
                        ip: $0.ip,
                        port: $0.port,
                        cluster: $0.cluster,
                        weight: $0.weight,
                        healthy: $0.healthy,
                        enabled: $0.enabled,
                        ephemeral: $0.ephemeral,
                        lane: $0.metadata["lane"],
                        metadata: $0.metadata
                    )
                }
            )
        case (.GET, "/admin/registry/configs"):
            return encode(
                configs.items(tenant: q["tenant"]).map {
                    ConfigView(
                        tenant: $0.key.tenant,
                        group: $0.key.group,
                        dataId: $0.key.dataId,
                        md5: $0.md5,
                        type: $0.type,
                        revision: $0.revision,
                        lastModified: Date(timeIntervalSince1970: Double($0.lastModifiedMillis) / 1000),
                        betaIps: $0.beta?.ips
                    )
                }
            )
        case (.GET, "/admin/registry/history"):
            guard let dataID = q["data_id"], !dataID.isEmpty else {
                return .error(.badRequest, "bad_query", "data_id is required: /admin/registry/history?data_id=…[&group=…&tenant=…&limit=…]")
            }
            guard let limit = Int(q["limit"] ?? "20"), limit > 0 else { return .error(.badRequest, "bad_query", "limit must be a positive number") }
            let key = ConfigKey(tenant: q["tenant"] ?? "", group: q["group"] ?? "", dataId: dataID)
            do {
                let (_, rows) = try configs.history(of: key, limit: limit)
                return encode(
                    rows.map {
                        RevisionView(
                            revision: $0.id,
                            operation: $0.operation.rawValue,
                            release: $0.release.rawValue,
                            md5: $0.md5,
                            content: $0.content,
                            betaIps: $0.betaIPs,
                            sourceIp: $0.sourceIP,
                            sourceUser: $0.sourceUser,
                            at: Date(timeIntervalSince1970: Double($0.createdMillis) / 1000)
                        )
                    }
                )
            } catch {
                return .error(.serviceUnavailable, "storage", error.message)
            }
        case (.POST, "/admin/registry/resync"):
            do {
                try registry.resyncFromStore()
            } catch {
                return .error(.serviceUnavailable, "storage", error.message)
            }
            return .json(.ok, "{\"status\":\"resynced\"}")
        case (.POST, "/admin/registry/rollback"):
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            guard let body = try? decoder.decode(RollbackRequest.self, from: Data(request.body.readableBytesView)) else {
                return .error(.badRequest, "bad_request", "expected JSON {\"data_id\": \"…\", \"group\": \"…\", \"tenant\": \"…\", \"revision\": N}")
            }
            let key = ConfigKey(tenant: body.tenant ?? "", group: body.group ?? "", dataId: body.dataId)
            do {
                try configs.rollback(key, to: body.revision, source: .init(ip: request.remoteAddress?.ipAddress ?? "", user: "admin"))
            } catch {
                let status: HTTPResponseStatus =
                    switch error.kind {
                    case .notFound: .notFound
                    case .invalid: .badRequest
                    case .storage: .serviceUnavailable
                    }
                return .error(status, "rollback_refused", error.message)
            }
            return encode(["config": "\(key)", "rolled_back_to": String(body.revision), "md5": configs.get(key)?.md5 ?? ""])
        default:
            return .error(
                .notFound,
                "not_found",
                "registry endpoints: GET /admin/registry/services|instances|configs|history, POST /admin/registry/rollback|resync"
            )
        }
    }
}
