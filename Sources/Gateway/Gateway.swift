// Gateway: the API gateway on the HTTP listener. A request matching a gateway route streams
// to an instance of the route's service chosen by its lane (trusted callers bring theirs;
// for everyone else the lanes' header entry rules decide, once, at the edge), and the answer
// streams back. Bodies are never collected: backpressure stops reading the side that is ahead.
import Controller
import Foundation
public import HTTPIngress
import Metrics
public import NIOCore
import NIOHTTP1
import Router
public import SwitchyardCore

/// Everything the gateway decides with, compiled from one configuration (swapped on reload).
public struct GatewaySnapshot: Sendable {
    let routes: [SwitchyardConfiguration.GatewayRoute]
    let trusted: [CIDR]
    let lanes: [SwitchyardConfiguration.LaneRule]
    let laneNames: Set<String>
    let resolver: LaneResolver
    let directory: any ServiceDirectory
    /// Egress: the instances of a service by name (nil: no such service).
    let egress: (@Sendable (String) -> [ServiceInstance]?)?
    /// Per route (and `egress`): requests by status class and their durations.
    let metrics: [String: GatewayMetrics]

    public init(
        configuration: SwitchyardConfiguration,
        directory: any ServiceDirectory,
        egress: (@Sendable (String) -> [ServiceInstance]?)? = nil
    ) {
        self.egress = configuration.gateway.egress ? egress : nil
        routes = configuration.gateway.routes
        var metrics: [String: GatewayMetrics] = [:]
        for name in configuration.gateway.routes.map(\.name) + ["egress"] { metrics[name] = GatewayMetrics(route: name) }
        self.metrics = metrics
        trusted = configuration.gateway.trustedCIDRs.compactMap { try? CIDR($0) }
        lanes = configuration.lanes
        laneNames = Set(configuration.lanes.map(\.name))
        resolver = LaneResolver(lanes: configuration.lanes)
        self.directory = directory
    }

    /// The first route whose host, path prefix and method match.
    func route(for head: HTTPRequestHead) -> SwitchyardConfiguration.GatewayRoute? {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        let host = Self.hostName(head.headers.first(name: "host"))
        return routes.first { route in
            (route.methods.isEmpty || route.methods.contains(head.method.rawValue))
                && Self.path(path, hasPrefix: route.pathPrefix)
                && (route.hosts.isEmpty || route.hosts.contains { Self.host(host, matches: $0) })
        }
    }

    /// `/api` covers `/api` and `/api/…`, not `/apix`.
    static func path(_ path: String, hasPrefix prefix: String) -> Bool {
        guard path.hasPrefix(prefix) else { return false }
        return prefix.hasSuffix("/") || path.count == prefix.count || path.dropFirst(prefix.count).first == "/"
            || path.dropFirst(prefix.count).first == "?"
    }

    static func hostName(_ header: String?) -> String {
        guard var host = header?.lowercased() else { return "" }
        if host.hasPrefix("[") { return host.split(separator: "]").first.map { String($0) + "]" } ?? host }
        if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
        return host
    }

    static func host(_ host: String, matches pattern: String) -> Bool {
        if pattern.hasPrefix("*.") { return host.hasSuffix(pattern.dropFirst(1)) && host.count > pattern.count - 1 }
        return host == pattern
    }

    func isTrusted(_ address: SocketAddress?) -> Bool {
        address.map { a in trusted.contains { $0.contains(a) } } ?? false
    }

    /// Egress for trusted callers (the services): `Host: <service>.internal`, or `/<service>/…`.
    /// Returns the service, its instances and the path to send.
    func egressTarget(_ head: HTTPRequestHead) -> (service: String, instances: [ServiceInstance], uri: String)? {
        guard let egress else { return nil }
        let host = Self.hostName(head.headers.first(name: "host"))
        if host.hasSuffix(".internal"), host.count > ".internal".count {
            let service = String(host.dropLast(".internal".count))
            return egress(service).map { (service, $0, head.uri) }
        }
        let trimmed = head.uri.dropFirst()
        guard head.uri.hasPrefix("/"), let end = trimmed.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? Optional(trimmed.endIndex) else {
            return nil
        }
        let service = String(trimmed[..<end])
        guard !service.isEmpty, let instances = egress(service) else { return nil }
        var rest = String(trimmed[end...])
        if !rest.hasPrefix("/") { rest = "/" + rest }
        return (service, instances, rest)
    }

    /// The request's lane: a trusted caller's own, else the first lane whose header rule admits it.
    func lane(for head: HTTPRequestHead, from address: SocketAddress?) -> (lane: String?, why: String) {
        if isTrusted(address) {
            if let carried = head.headers.first(name: "x-switchyard-lane"), laneNames.contains(carried) {
                return (carried, "carried by a trusted caller")
            }
            if let carried = Self.baggageLane(head.headers.first(name: "baggage")), laneNames.contains(carried) {
                return (carried, "carried in baggage by a trusted caller")
            }
        }
        var cookies: [String: String]?
        var params: [String: String]?
        for lane in lanes {
            for (name, values) in lane.headers {
                if let value = head.headers.first(name: name), values.contains(value) {
                    return (lane.name, "header \(name) is \"\(value)\"")
                }
            }
            if !lane.cookies.isEmpty {
                let jar = cookies ?? Self.cookies(head.headers)
                cookies = jar
                for (name, values) in lane.cookies {
                    if let value = jar[name], values.contains(value) { return (lane.name, "cookie \(name) is \"\(value)\"") }
                }
            }
            if !lane.params.isEmpty {
                let query = params ?? Self.query(head.uri)
                params = query
                for (name, values) in lane.params {
                    if let value = query[name], values.contains(value) { return (lane.name, "parameter \(name) is \"\(value)\"") }
                }
            }
            if let percentage = lane.percentage {
                let key: String?
                switch lane.hashKey {
                case .header(let name): key = head.headers.first(name: name)
                case .cookie(let name):
                    cookies = cookies ?? Self.cookies(head.headers)
                    key = cookies?[name]
                case .param(let name):
                    params = params ?? Self.query(head.uri)
                    key = params?[name]
                case .device, .product, .tag: key = nil  // message keys
                }
                // The same bucket function as message lanes: raising the percentage keeps everyone already in.
                if let key, !key.isEmpty, StableHash.basisPoints(namespace: lane.name, key: key) < Int((percentage * 100).rounded()) {
                    return (lane.name, "\(lane.hashKey.description) \"\(key)\" is within \(percentage) % of lane \"\(lane.name)\"")
                }
            }
        }
        return (nil, "no entry rule admits it")
    }

    static func cookies(_ headers: HTTPHeaders) -> [String: String] {
        var jar: [String: String] = [:]
        for header in headers[canonicalForm: "cookie"] {
            for pair in header.split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { continue }
                let name = kv[0].trimmingCharacters(in: .whitespaces)
                if jar[name] == nil { jar[name] = kv[1].trimmingCharacters(in: .whitespaces) }
            }
        }
        return jar
    }

    static func query(_ uri: String) -> [String: String] {
        guard let q = uri.firstIndex(of: "?") else { return [:] }
        var out: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = PercentDecoding.decode(kv[0], plusAsSpace: true) ?? String(kv[0])
            if out[name] == nil { out[name] = kv.count == 2 ? (PercentDecoding.decode(kv[1], plusAsSpace: true) ?? String(kv[1])) : "" }
        }
        return out
    }

    static func baggageLane(_ baggage: String?) -> String? {
        guard let baggage else { return nil }
        for member in baggage.split(separator: ",") {
            let kv = member.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == "lane" {
                return String(kv[1].split(separator: ";").first ?? "").trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

/// The streaming side of the HTTP listener: requests matching a gateway route become sessions.
public final class GatewayResponder: HTTPStreamingResponder {
    let snapshot: @Sendable () -> GatewaySnapshot
    /// Idle keep-alive connections to upstream instances, reused by later requests.
    let pool = UpstreamPool()

    public init(snapshot: @escaping @Sendable () -> GatewaySnapshot) {
        self.snapshot = snapshot
    }

    public func session(for head: HTTPRequestHead, remoteAddress: SocketAddress?, writer: HTTPResponseWriter) -> (any HTTPStreamSession)? {
        let snapshot = self.snapshot()
        if let problem = Self.hostProblem(head) {
            // Only for requests the gateway would take: the message channel keeps its own rules.
            guard snapshot.route(for: head) != nil || (snapshot.isTrusted(remoteAddress) && snapshot.egressTarget(head) != nil) else { return nil }
            writer.respond(.error(.badRequest, "bad_host", problem), closeAfter: true)
            return GatewaySession.finished
        }
        let service: String, instances: [ServiceInstance], uri: String, timeout: Double, routeName: String
        if let route = snapshot.route(for: head) {
            routeName = route.name
            service = route.service
            instances = snapshot.directory.instances(of: route.service)
            uri = Self.rewrite(head.uri, route: route)
            timeout = route.timeoutSeconds
        } else if snapshot.isTrusted(remoteAddress), let target = snapshot.egressTarget(head) {
            (service, instances, uri) = target
            timeout = 30
            routeName = "egress"
        } else {
            return nil
        }
        let (lane, _) = snapshot.lane(for: head, from: remoteAddress)
        let metrics = snapshot.metrics[routeName]
        let chosen: [ServiceInstance]
        var fellBack = false
        switch snapshot.resolver.resolve(lane: lane, instances: instances) {
        case .lane(let list): chosen = list
        case .fallback(let list):
            chosen = list
            fellBack = true
        case .laneUnavailable:
            writer.respond(.error(.serviceUnavailable, "lane_unavailable", "service \(service) has no instance in lane \(lane ?? "baseline")"))
            metrics?.record(status: 503, nanoseconds: 0)
            return GatewaySession.finished
        case .noInstances:
            writer.respond(.error(.serviceUnavailable, "no_instances", "service \(service) has no instance to serve the request"))
            metrics?.record(status: 503, nanoseconds: 0)
            return GatewaySession.finished
        }
        let instance = Self.pick(chosen)
        let upstreamHead = Self.upstreamHead(head, uri: uri, instance: instance, lane: lane, fellBack: fellBack, client: remoteAddress)
        let session = GatewaySession(writer: writer, head: upstreamHead, instance: instance, timeout: timeout, pool: pool, metrics: metrics)
        session.start()
        return session
    }

    /// HTTP/1.1 needs exactly one Host, a name or address with an optional port (RFC 9112 §3.2).
    static func hostProblem(_ head: HTTPRequestHead) -> String? {
        let hosts = head.headers[canonicalForm: "host"]
        if hosts.count > 1 { return "more than one Host header" }
        guard let host = hosts.first else {
            return head.version.major > 1 || head.version.minor >= 1 ? "an HTTP/1.1 request needs a Host header" : nil
        }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]~!$&'()*+,;=%".utf8)
        if host.isEmpty || !host.utf8.allSatisfy({ allowed.contains($0) }) { return "Host \"\(host)\" is not a host name" }
        return nil
    }

    /// Weighted random choice.
    static func pick(_ instances: [ServiceInstance]) -> ServiceInstance {
        let total = instances.reduce(0) { $0 + max(0, $1.weight) }
        guard total > 0 else { return instances.randomElement()! }
        var point = Int.random(in: 0..<total)
        for instance in instances {
            point -= max(0, instance.weight)
            if point < 0 { return instance }
        }
        return instances[instances.count - 1]
    }

    static let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"]

    /// The path a route sends: the prefix removed when the route says so.
    static func rewrite(_ uri: String, route: SwitchyardConfiguration.GatewayRoute) -> String {
        guard route.stripPrefix, route.pathPrefix != "/", uri.hasPrefix(route.pathPrefix) else { return uri }
        let rest = String(uri.dropFirst(route.pathPrefix.count))
        return rest.hasPrefix("/") ? rest : "/" + rest
    }

    static func upstreamHead(
        _ head: HTTPRequestHead,
        uri: String,
        instance: ServiceInstance,
        lane: String?,
        fellBack: Bool,
        client: SocketAddress?
    ) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        for (name, value) in head.headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) || lower == "host" || lower.hasPrefix("x-switchyard-") { continue }
            if lower == "baggage" {
                // The lane in baggage is Switchyard's to set; other members pass.
                let kept = value.split(separator: ",").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("lane=") }
                if !kept.isEmpty { headers.add(name: name, value: kept.joined(separator: ",")) }
                continue
            }
            headers.add(name: name, value: value)
        }
        headers.add(name: "host", value: instance.address)
        if let original = head.headers.first(name: "host") { headers.replaceOrAdd(name: "x-forwarded-host", value: original) }
        if let ip = client?.ipAddress {
            let prior = head.headers.first(name: "x-forwarded-for")
            headers.replaceOrAdd(name: "x-forwarded-for", value: prior.map { "\($0), \(ip)" } ?? ip)
        }
        if let lane {
            // The original lane travels on even where this hop fell back, so the next hop returns to it.
            headers.add(name: "x-switchyard-lane", value: lane)
            let baggage = headers.first(name: "baggage")
            headers.replaceOrAdd(name: "baggage", value: baggage.map { "lane=\(lane),\($0)" } ?? "lane=\(lane)")
        }
        if fellBack { headers.add(name: "x-switchyard-lane-fallback", value: "true") }
        if TraceContext(traceparent: head.headers.first(name: "traceparent")) == nil {
            headers.replaceOrAdd(name: "traceparent", value: TraceContext.generate().traceparent)
        }
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: instance.basePath + uri, headers: headers)
    }
}

/// A gateway route's metrics, made once per configuration.
struct GatewayMetrics: Sendable {
    let byClass: [Counter]
    let cancelled: Counter
    let duration: Metrics.Timer

    init(route: String) {
        byClass = ["1xx", "2xx", "3xx", "4xx", "5xx"].map {
            Counter(label: "switchyard_gateway_requests_total", dimensions: [("route", route), ("status", $0)])
        }
        cancelled = Counter(label: "switchyard_gateway_requests_total", dimensions: [("route", route), ("status", "client_gone")])
        duration = Metrics.Timer(label: "switchyard_gateway_request_duration_seconds", dimensions: [("route", route)])
    }

    /// One answered request (`status` 0: the client left first).
    func record(status: Int, nanoseconds: UInt64) {
        guard (100..<600).contains(status) else {
            cancelled.increment()
            return
        }
        byClass[status / 100 - 1].increment()
        if nanoseconds > 0 { duration.recordNanoseconds(Int64(nanoseconds)) }
    }
}
