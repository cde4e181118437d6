import ConfigCenter
import Foundation
import HTTPIngress
import NIOHTTP1
import Registry

extension NacosResponder {
    /// `serviceName` (maybe `group@@name`), `groupName`, `namespaceId`.
    func serviceName(_ p: NacosParams) throws -> ServiceName {
        let full = try p.required("serviceName")
        var group = p.string("groupName") ?? ServiceName.defaultGroup
        var name = full
        if let (before, after) = Self.splitGrouped(full) {
            group = before
            name = after
        }
        guard !name.isEmpty else { throw NacosFailure(.badRequest, "parameter serviceName is empty") }
        return ServiceName(namespace: p.namespace, group: group, name: name)
    }

    /// `group@@name` → (group, name); nil without `@@`.
    static func splitGrouped(_ full: String) -> (String, String)? {
        let bytes = Array(full.utf8)
        guard bytes.count >= 2 else { return nil }
        for i in 0..<(bytes.count - 1) where bytes[i] == UInt8(ascii: "@") && bytes[i + 1] == UInt8(ascii: "@") {
            return (String(decoding: bytes[..<i], as: UTF8.self), String(decoding: bytes[(i + 2)...], as: UTF8.self))
        }
        return nil
    }

    func failure(_ error: RegistryError) -> NacosFailure {
        switch error.kind {
        case .notFound: NacosFailure(.notFound, error.message)
        case .conflict: NacosFailure(.badRequest, error.message)
        case .invalid: NacosFailure(.badRequest, error.message)
        case .storage: NacosFailure(.serviceUnavailable, error.message)
        }
    }

    func attempt<T>(_ body: () throws(RegistryError) -> T) throws -> T {
        do { return try body() } catch { throw failure(error) }
    }

    /// The addresses a request names: its cluster when given, else `ip:port` in any cluster.
    func addresses(_ p: NacosParams, ip: String, port: Int, cluster: String?, in service: ServiceName) -> [InstanceAddress] {
        if let cluster { return [InstanceAddress(cluster: cluster, ip: ip, port: port)] }
        return registry.addresses(ip: ip, port: port, in: service)
    }

    func register(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let service = try serviceName(p)
        try requireWrite(user, service.namespace)
        let instance = Instance(
            ip: try p.required("ip"),
            port: try p.int("port") ?? 0,
            cluster: p.string("clusterName") ?? Instance.defaultCluster,
            weight: try p.double("weight") ?? 1,
            healthy: try p.bool("healthy") ?? true,
            enabled: try p.bool("enabled") ?? p.bool("enable") ?? true,
            ephemeral: try p.bool("ephemeral") ?? true,
            metadata: try p.metadata() ?? [:]
        )
        try attempt { () throws(RegistryError) in try registry.register(instance, in: service) }
        return .text(.ok, "ok")
    }

    func deregister(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let service = try serviceName(p)
        try requireWrite(user, service.namespace)
        let ip = try p.required("ip")
        guard let port = try p.int("port") else { throw NacosFailure(.badRequest, "parameter port is required") }
        for address in addresses(p, ip: ip, port: port, cluster: p.string("clusterName"), in: service) {
            try attempt { () throws(RegistryError) in try registry.deregister(address, in: service) }
        }
        return .text(.ok, "ok")
    }

    func updateInstance(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let service = try serviceName(p)
        try requireWrite(user, service.namespace)
        let ip = try p.required("ip")
        guard let port = try p.int("port") else { throw NacosFailure(.badRequest, "parameter port is required") }
        let found = addresses(p, ip: ip, port: port, cluster: p.string("clusterName"), in: service)
        guard let address = found.first, var instance = registry.instance(address, in: service) else {
            throw NacosFailure(.notFound, "instance \(ip):\(port) of \(service) is not registered")
        }
        if let weight = try p.double("weight") { instance.weight = weight }
        if let enabled = try p.bool("enabled") ?? p.bool("enable") { instance.enabled = enabled }
        if let metadata = try p.metadata() { instance.metadata = metadata }
        try attempt { () throws(RegistryError) in try registry.update(instance, in: service) }
        return .text(.ok, "ok")
    }

    func instanceDetail(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let service = try serviceName(p)
        try requireRead(user, service.namespace)
        let ip = try p.required("ip")
        guard let port = try p.int("port") else { throw NacosFailure(.badRequest, "parameter port is required") }
        let cluster = p.string("cluster") ?? p.string("clusterName")
        guard let address = addresses(p, ip: ip, port: port, cluster: cluster, in: service).first,
            let instance = registry.instance(address, in: service)
        else {
            throw NacosFailure(.notFound, "no instance \(ip):\(port) in \(service)")
        }
        let body = JSON.object([
            ("service", .string(service.grouped)), ("ip", .string(instance.ip)), ("port", .int(Int64(instance.port))),
            ("clusterName", .string(instance.cluster)), ("weight", .double(instance.weight)), ("healthy", .bool(instance.healthy)),
            ("instanceId", .string(address.instanceID(in: service))), ("metadata", .strings(instance.metadata)),
        ])
        return .json(.ok, body.text)
    }

    func listInstances(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let service = try serviceName(p)
        try requireRead(user, service.namespace)
        let clusters = (p.string("clusters") ?? "").split(separator: ",").map(String.init).filter { !$0.isEmpty }
        let view = registry.list(service, clusters: clusters, healthyOnly: try p.bool("healthyOnly") ?? false)
        let hosts: [JSON] = view.hosts.filter(\.enabled).map { host in
            // Fixed fields in a fixed order: clients compare host entries as text between polls.
            .object([
                ("instanceId", .string(host.address.instanceID(in: service))), ("ip", .string(host.ip)), ("port", .int(Int64(host.port))),
                ("weight", .double(host.weight)), ("healthy", .bool(host.healthy)), ("enabled", .bool(host.enabled)),
                ("ephemeral", .bool(host.ephemeral)), ("clusterName", .string(host.cluster)), ("serviceName", .string(service.grouped)),
                ("metadata", .strings(host.metadata)), ("instanceHeartBeatInterval", .int(Int64(host.beatIntervalMillis))),
                ("instanceHeartBeatTimeOut", .int(Int64(host.beatTimeoutMillis))), ("ipDeleteTimeout", .int(Int64(host.deleteTimeoutMillis))),
            ])
        }
        let body = JSON.object([
            ("name", .string(service.grouped)), ("groupName", .string(service.group)), ("clusters", .string(clusters.joined(separator: ","))),
            ("cacheMillis", .int(Int64(cacheMillis))), ("hosts", .array(hosts)),
            ("lastRefTime", .int(Int64(Date().timeIntervalSince1970 * 1000))), ("checksum", .string("")), ("allIPs", .bool(false)),
            ("reachProtectionThreshold", .bool(view.reachedProtectionThreshold)), ("valid", .bool(true)),
        ])
        return .json(.ok, body.text)
    }

    func beat(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let service = try serviceName(p)
        try requireWrite(user, service.namespace)
        var described: Instance?
        var ip = p.string("ip"), port = try p.int("port"), cluster = p.string("clusterName")
        if let text = p.string("beat") {
            guard let beat = JSON.parseObject(text) else { throw NacosFailure(.badRequest, "parameter beat is not a JSON object") }
            ip = ip ?? beat["ip"] as? String
            port = port ?? (beat["port"] as? NSNumber)?.intValue
            cluster = cluster ?? (beat["cluster"] as? String).flatMap { $0.isEmpty ? nil : $0 }
            var metadata: [String: String] = [:]
            for (k, v) in beat["metadata"] as? [String: Any] ?? [:] { metadata[k] = (v as? String) ?? "\(v)" }
            if let ip, let port {
                described = Instance(
                    ip: ip,
                    port: port,
                    cluster: cluster ?? Instance.defaultCluster,
                    weight: (beat["weight"] as? NSNumber)?.doubleValue ?? 1,
                    ephemeral: true,
                    metadata: metadata
                )
            }
        }
        guard let ip, let port else { throw NacosFailure(.badRequest, "a beat names its instance: ip and port (or a beat JSON with them)") }
        let address =
            addresses(p, ip: ip, port: port, cluster: cluster, in: service).first ?? InstanceAddress(cluster: cluster ?? "", ip: ip, port: port)
        switch registry.beat(address, in: service, describing: described) {
        case .ok(let millis) where millis == 5000: return .json(.ok, Self.beatOK)
        case .ok(let millis): return .json(.ok, Self.beatAnswer(code: 10200, interval: millis))
        case .unknown: return .json(.ok, Self.beatUnknown)
        }
    }

    static func beatAnswer(code: Int64, interval: Int) -> String {
        JSON.object([("clientBeatInterval", .int(Int64(interval))), ("code", .int(code)), ("lightBeatEnabled", .bool(true))]).text
    }
    /// The answers to nearly every beat, made once.
    static let beatOK = beatAnswer(code: 10200, interval: 5000)
    static let beatUnknown = beatAnswer(code: 20404, interval: 5000)

    func setHealth(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let service = try serviceName(p)
        try requireWrite(user, service.namespace)
        let ip = try p.required("ip")
        guard let port = try p.int("port"), let healthy = try p.bool("healthy") else {
            throw NacosFailure(.badRequest, "parameters port and healthy are required")
        }
        guard let address = addresses(p, ip: ip, port: port, cluster: p.string("clusterName"), in: service).first else {
            throw NacosFailure(.notFound, "instance \(ip):\(port) of \(service) is not registered")
        }
        try attempt { () throws(RegistryError) in try registry.setHealthy(healthy, address, in: service) }
        return .text(.ok, "ok")
    }

    func serviceSettings(_ p: NacosParams, base: ServiceSettings) throws -> ServiceSettings {
        var settings = base
        if let threshold = try p.double("protectThreshold") { settings.protectThreshold = threshold }
        if let metadata = try p.metadata() { settings.metadata = metadata }
        if let selector = p.string("selector") { settings.selector = selector }
        return settings
    }

    func createService(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let name = try serviceName(p)
        try requireWrite(user, name.namespace)
        let settings = try serviceSettings(p, base: ServiceSettings(name: name))
        try attempt { () throws(RegistryError) in try registry.createService(settings) }
        return .text(.ok, "ok")
    }

    func updateService(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let name = try serviceName(p)
        try requireWrite(user, name.namespace)
        guard let existing = registry.service(name) else { throw NacosFailure(.notFound, "service \(name) does not exist") }
        let settings = try serviceSettings(p, base: existing.settings)
        try attempt { () throws(RegistryError) in try registry.updateService(settings) }
        return .text(.ok, "ok")
    }

    func deleteService(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let name = try serviceName(p)
        try requireWrite(user, name.namespace)
        try attempt { () throws(RegistryError) in try registry.deleteService(name) }
        return .text(.ok, "ok")
    }

    func serviceDetail(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let name = try serviceName(p)
        try requireRead(user, name.namespace)
        guard let (settings, clusters, _) = registry.service(name) else { throw NacosFailure(.notFound, "service \(name) does not exist") }
        let body = JSON.object([
            ("namespaceId", .string(name.namespace)), ("groupName", .string(name.group)), ("name", .string(name.name)),
            ("protectThreshold", .double(settings.protectThreshold)), ("metadata", .strings(settings.metadata)),
            ("selector", .object([("type", .string(settings.selector ?? "none"))])),
            (
                "clusters",
                .array(
                    clusters.map {
                        .object([("name", .string($0)), ("healthChecker", .object([("type", .string("TCP"))])), ("metadata", .object([]))])
                    }
                )
            ),
        ])
        return .json(.ok, body.text)
    }

    func listServices(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let namespace = p.namespace
        try requireRead(user, namespace)
        let pageNo = min(max(1, try p.int("pageNo") ?? 1), NacosParams.maxPage)
        let pageSize = min(max(1, try p.int("pageSize") ?? 10), 10_000)
        let names = registry.services(namespace: namespace, group: p.string("groupName") ?? ServiceName.defaultGroup)
        let page = names.dropFirst((pageNo - 1) * pageSize).prefix(pageSize)
        let body = JSON.object([("count", .int(Int64(names.count))), ("doms", .array(page.map { .string($0.name) }))])
        return .json(.ok, body.text)
    }

    func metrics() -> OutgoingResponse {
        let all = registry.snapshot()
        let body = JSON.object([
            ("status", .string("UP")), ("serviceCount", .int(Int64(all.count))),
            ("instanceCount", .int(Int64(all.reduce(0) { $0 + $1.1.count }))),
            ("responsibleInstanceCount", .int(Int64(all.reduce(0) { $0 + $1.1.count }))),
        ])
        return .json(.ok, body.text)
    }

    func namespaces(_ method: NIOHTTP1.HTTPMethod, _ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        switch method {
        case .GET:
            let visible = registry.namespaces().filter { user?.canRead($0.id) ?? true }
            let items: [JSON] = visible.map { ns in
                let isPublic = ns.id == ServiceName.defaultNamespace
                return .object([
                    ("namespace", .string(isPublic ? "" : ns.id)), ("namespaceShowName", .string(ns.name)),
                    ("namespaceDesc", .string(ns.description)), ("quota", .int(200)),
                    ("configCount", .int(Int64(configs.items(tenant: isPublic ? "" : ns.id).count))), ("type", .int(isPublic ? 0 : 2)),
                ])
            }
            return .json(.ok, JSON.object([("code", .int(200)), ("message", .null), ("data", .array(items))]).text)
        case .POST:
            try requireAdmin(user)
            let id = p.string("customNamespaceId") ?? UUID().uuidString.lowercased()
            let ns = Namespace(id: id, name: try p.required("namespaceName"), description: p.string("namespaceDesc") ?? "")
            try attempt { () throws(RegistryError) in try registry.createNamespace(ns) }
            return .text(.ok, "true")
        case .PUT:
            try requireAdmin(user)
            let ns = Namespace(
                id: try p.required("namespace"),
                name: try p.required("namespaceShowName"),
                description: p.string("namespaceDesc") ?? ""
            )
            try attempt { () throws(RegistryError) in try registry.updateNamespace(ns) }
            return .text(.ok, "true")
        case .DELETE:
            try requireAdmin(user)
            let id = try p.required("namespaceId")
            try attempt { () throws(RegistryError) in try registry.deleteNamespace(id) }
            return .text(.ok, "true")
        default:
            throw NacosFailure(.methodNotAllowed, "console/namespaces takes GET, POST, PUT or DELETE")
        }
    }

    // MARK: - Users and permissions (Switchyard's own, simpler than Nacos' roles)

    func users(_ method: NIOHTTP1.HTTPMethod, _ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        try requireAdmin(user)
        switch method {
        case .GET:
            let list: [JSON] = registry.users().map {
                .object([
                    ("username", .string($0.username)), ("admin", .bool($0.admin)), ("permissions", .strings($0.permissions.mapValues(\.rawValue))),
                ])
            }
            return .json(.ok, JSON.object([("totalCount", .int(Int64(list.count))), ("pageItems", .array(list))]).text)
        case .POST, .PUT:
            let username = try p.required("username")
            let password = try p.required("password")
            guard password.count >= 8 else { throw NacosFailure(.badRequest, "password must be at least 8 characters") }
            var record = registry.user(username) ?? RegistryUser(username: username, passwordHash: "")
            if method == .POST, registry.user(username) != nil { throw NacosFailure(.badRequest, "user \(username) already exists") }
            record.passwordHash = NacosAuth.hash(password)
            try attempt { () throws(RegistryError) in try registry.save(user: record) }
            return .text(.ok, "ok")
        case .DELETE:
            let username = try p.required("username")
            if username == NacosAuth.adminUser { throw NacosFailure(.badRequest, "the first administrator cannot be deleted") }
            try attempt { () throws(RegistryError) in try registry.deleteUser(username) }
            return .text(.ok, "ok")
        default:
            throw NacosFailure(.methodNotAllowed, "auth/users takes GET, POST, PUT or DELETE")
        }
    }

    /// `username`, `namespace` and `action` (`r`, `w` or `rw`): what a user may do in a namespace.
    func permissions(_ method: NIOHTTP1.HTTPMethod, _ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        try requireAdmin(user)
        let username = try p.required("username")
        guard var record = registry.user(username) else { throw NacosFailure(.notFound, "user \(username) does not exist") }
        let namespace = RegistryUser.normalized(p.string("namespace") ?? p.string("resource") ?? "")
        switch method {
        case .POST, .PUT:
            let actionText = try p.required("action")
            guard let action = RegistryUser.Access(rawValue: actionText) else { throw NacosFailure(.badRequest, "action must be r, w or rw") }
            record.permissions[namespace] = action
        case .DELETE:
            record.permissions[namespace] = nil
        default:
            throw NacosFailure(.methodNotAllowed, "auth/permissions takes POST, PUT or DELETE")
        }
        let updated = record
        try attempt { () throws(RegistryError) in try registry.save(user: updated) }
        return .text(.ok, "ok")
    }
}
