public import ConfigCenter
import Foundation
public import HTTPIngress
public import Logging
import Metrics
import NIOConcurrencyHelpers
public import NIOCore
import NIOHTTP1
public import Registry
import SwitchyardCore

/// Answers the Nacos v1 Open API. Parameters come from the query string or a form body (real
/// clients use both); `serviceName` may be `group@@name`; Python's literal `None` counts as absent.
public final class NacosResponder: HTTPResponder {
    public static let prefix = "/nacos/v1/"
    let registry: Registry
    let configs: ConfigCenter
    let auth: NacosAuth
    let logger: Logger
    /// Milliseconds a client is told to wait between list polls (no UDP push: keep it short).
    let cacheMillis: Int
    /// Configs only administrators may change (Switchyard's own).
    let protectedKeys: Set<ConfigKey>

    public init(
        registry: Registry,
        configs: ConfigCenter,
        auth: NacosAuth,
        logger: Logger,
        cacheMillis: Int = 3000,
        protectedKeys: Set<ConfigKey> = []
    ) {
        self.protectedKeys = protectedKeys
        self.registry = registry
        self.configs = configs
        self.auth = auth
        self.logger = logger
        self.cacheMillis = cacheMillis
    }

    public func respond(to request: IncomingRequest, on loop: any EventLoop) -> EventLoopFuture<OutgoingResponse> {
        let path = String(request.path)
        guard path.hasPrefix(Self.prefix) else {
            return loop.makeSucceededFuture(.text(.notFound, "no such endpoint: \(path) (the Nacos API lives under /nacos/v1/)"))
        }
        let route = String(path.dropFirst(Self.prefix.count))
        let params = NacosParams(request)
        do {
            let response = try handle(route, request, params, on: loop)
            response.whenSuccess { Self.count(route, $0.status) }
            return response
        } catch let failure as NacosFailure {
            Self.count(route, failure.status)
            return loop.makeSucceededFuture(.text(failure.status, failure.message))
        } catch {
            Self.count(route, .internalServerError)
            logger.error("registry API failure", metadata: ["path": "\(path)", "error": "\(error)"])
            return loop.makeSucceededFuture(.text(.internalServerError, "internal error: \(error)"))
        }
    }

    /// Request counters by API and status, made once each (a lookup in the metrics backend per request costs more than the count).
    static let counters = NIOLockedValueBox<[String: Counter]>([:])

    static let knownAPIs: Set<String> = [
        "auth/login", "auth/users", "auth/permissions", "ns/instance", "ns/health", "ns/service", "ns/operator", "console/namespaces",
        "cs/configs", "cs/history",
    ]

    static func count(_ route: String, _ status: HTTPResponseStatus) {
        // Label values from a fixed set: a client's made-up paths must not grow the metrics.
        var api = route.split(separator: "/").prefix(2).joined(separator: "/")
        if !knownAPIs.contains(api) { api = "other" }
        let key = "\(api) \(status.code)"
        if let counter = counters.withLockedValue({ $0[key] }) {
            counter.increment()
            return
        }
        let counter = Counter(label: "switchyard_registry_requests_total", dimensions: [("api", api), ("status", "\(status.code)")])
        counters.withLockedValue { $0[key] = counter }
        counter.increment()
    }

    private func handle(_ route: String, _ request: IncomingRequest, _ p: NacosParams, on loop: any EventLoop) throws -> EventLoopFuture<
        OutgoingResponse
    > {
        let method = request.method
        func now(_ response: OutgoingResponse) -> EventLoopFuture<OutgoingResponse> { loop.makeSucceededFuture(response) }
        switch (method, route) {
        case (.POST, "auth/login"), (.POST, "auth/users/login"):
            return now(try login(p))
        default: break
        }
        let user = try authenticate(request, p)
        switch (method, route) {
        // Naming
        case (.POST, "ns/instance"): return now(try register(p, user))
        case (.DELETE, "ns/instance"): return now(try deregister(p, user))
        case (.PUT, "ns/instance"): return now(try updateInstance(p, user))
        case (.GET, "ns/instance"): return now(try instanceDetail(p, user))
        case (.GET, "ns/instance/list"): return now(try listInstances(p, user))
        case (.PUT, "ns/instance/beat"), (.POST, "ns/instance/beat"): return now(try beat(p, user))
        case (.PUT, "ns/health/instance"), (.POST, "ns/health/instance"): return now(try setHealth(p, user))
        case (.POST, "ns/service"): return now(try createService(p, user))
        case (.PUT, "ns/service"): return now(try updateService(p, user))
        case (.DELETE, "ns/service"): return now(try deleteService(p, user))
        case (.GET, "ns/service"): return now(try serviceDetail(p, user))
        case (.GET, "ns/service/list"): return now(try listServices(p, user))
        case (.GET, "ns/operator/metrics"): return now(metrics())
        case (_, "console/namespaces"): return now(try namespaces(method, p, user))
        // Config
        case (.GET, "cs/configs"): return now(try getConfig(request, p, user))
        case (.POST, "cs/configs"): return now(try publishConfig(request, p, user))
        case (.DELETE, "cs/configs"): return now(try deleteConfig(request, p, user))
        case (.POST, "cs/configs/listener"): return try listen(request, p, user, on: loop)
        case (.GET, "cs/history"): return now(try history(p, user))
        // Users and permissions
        case (_, "auth/users"): return now(try users(method, p, user))
        case (_, "auth/permissions"): return now(try permissions(method, p, user))
        default:
            throw NacosFailure(.notFound, "no such endpoint: \(method) \(Self.prefix)\(route)")
        }
    }

    // MARK: - Authentication

    private func login(_ p: NacosParams) throws -> OutgoingResponse {
        let username = try p.required("username")
        let password = try p.required("password")
        guard let token = auth.login(username: username, password: password), let user = registry.user(username) else {
            logger.notice("registry sign-in refused", metadata: ["user": "\(username)"])
            throw NacosFailure(.forbidden, "unknown user or wrong password")
        }
        let body = JSON.object([
            ("accessToken", .string(token)), ("tokenTtl", .int(Int64(auth.tokenTTLSeconds))), ("globalAdmin", .bool(user.admin)),
            ("username", .string(user.username)),
        ])
        return .json(.ok, body.text)
    }

    /// The caller, when auth is on (403 without a valid token); nil when auth is off.
    private func authenticate(_ request: IncomingRequest, _ p: NacosParams) throws -> RegistryUser? {
        guard auth.enabled else { return nil }
        var token = p.string("accessToken") ?? request.headers.first(name: "accessToken")
        if token == nil, let bearer = request.headers.first(name: "authorization"), bearer.lowercased().hasPrefix("bearer ") {
            token = String(bearer.dropFirst("bearer ".count))
        }
        guard let token, !token.isEmpty else {
            throw NacosFailure(.forbidden, "authentication required: sign in with POST /nacos/v1/auth/login and pass accessToken")
        }
        guard let user = auth.user(forToken: token) else {
            throw NacosFailure(.forbidden, "token invalid or expired: sign in again with POST /nacos/v1/auth/login")
        }
        return user
    }

    func requireRead(_ user: RegistryUser?, _ namespace: String) throws {
        guard let user, !user.canRead(namespace) else { return }
        throw NacosFailure(.forbidden, "user \(user.username) may not read namespace \(RegistryUser.normalized(namespace))")
    }

    func requireWrite(_ user: RegistryUser?, _ namespace: String) throws {
        guard let user, !user.canWrite(namespace) else { return }
        throw NacosFailure(.forbidden, "user \(user.username) may not write namespace \(RegistryUser.normalized(namespace))")
    }

    func requireAdmin(_ user: RegistryUser?) throws {
        guard let user, !user.admin else { return }
        throw NacosFailure(.forbidden, "user \(user.username) is not an administrator")
    }
}
