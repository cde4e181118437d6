// Gateway: the API gateway on the HTTP listener. A request matching a gateway route streams
// to an instance of the route's service chosen by its lane (trusted callers bring theirs;
// for everyone else the lanes' header entry rules decide, once, at the edge), and the answer
// streams back. Bodies are never collected: backpressure stops reading the side that is ahead.
import Controller
import Crypto
import Foundation
import HTTPIngress
import Metrics
import NIOCore
import NIOHTTP1
import Router
public import SwitchyardCore
import Synchronization

/// A request value rule, compiled: one of the values, or a regex search.
struct ValueRule: Sendable {
    let values: Set<String>
    let regex: SearchRegex?

    init(_ match: SwitchyardConfiguration.ValueMatch) {
        values = Set(match.values)
        regex = match.regex.flatMap(SearchRegex.init)
    }

    func admits(_ value: String) -> Bool {
        values.contains(value) || (regex?.found(in: value) ?? false)
    }
}

/// A regex searched in a value (validated when the config was loaded).
struct SearchRegex: @unchecked Sendable {  // Regex is immutable once made
    let regex: Regex<AnyRegexOutput>

    init?(_ pattern: String) {
        guard let regex = try? Regex(pattern) else { return nil }
        self.regex = regex
    }

    func found(in value: String) -> Bool { (try? regex.firstMatch(in: value)) != nil }
}

/// A gateway route and everything compiled for it: matchers, policies, limiters, metrics.
final class CompiledRoute: Sendable {
    let config: SwitchyardConfiguration.GatewayRoute
    let pathRegex: SearchRegex?
    let headers: [(String, ValueRule)]
    /// A `url` route's one upstream.
    let upstream: ServiceInstance?
    /// The route's instances now: a `service` route's from the directory (its lookup bound to
    /// the service), a `url` route's one upstream (the list made once, not per request).
    let instances: @Sendable () -> [ServiceInstance]
    /// SHA-256 (hex) of each API key → its consumer.
    let apiKeys: [String: String]
    let limiters: [(scope: SwitchyardConfiguration.RouteRateLimit.Scope, limiter: KeyedRateLimiter)]
    let metrics: GatewayMetrics
    /// Requests in flight on the route (for `max_concurrency`).
    let inFlight = Atomic<Int>(0)
    /// The route's circuit breaker (kept across reloads while its rule stays the same).
    let breaker: TargetBreaker?
    /// The circuit rule of the service the route sends to (its instances' breakers).
    let circuit: SwitchyardConfiguration.CircuitRule
    /// CORS, API keys, a body limit or rate limits to check (JWT aside: the snapshot has its verifier).
    let hasPolicies: Bool

    init(
        _ config: SwitchyardConfiguration.GatewayRoute,
        lanes: [String],
        circuits: [String: SwitchyardConfiguration.CircuitRule],
        previous: CompiledRoute?,
        clock: any MonotonicClock,
        breakers: TargetBreakers,
        directory: any ServiceDirectory
    ) throws(KeyPathError) {
        self.config = config
        breaker = breakers.breaker("gateway:\(config.name)", rule: config.breaker)
        pathRegex = config.pathRegex.flatMap(SearchRegex.init)
        headers = config.headers.sorted { $0.key < $1.key }.map { ($0.key, ValueRule($0.value)) }
        upstream = config.url.flatMap { ServiceInstance(service: config.name, url: $0) }
        if config.url == nil {
            instances = directory.source(of: config.service)
        } else {
            let list = upstream.map { [$0] } ?? []
            instances = { list }
        }
        circuit = circuits[upstream?.service ?? config.service] ?? SwitchyardConfiguration.CircuitRule()
        var keys: [String: String] = [:]
        if let policy = config.apiKeys {
            for (consumer, key) in policy.keys { keys[Self.digest(key)] = consumer }
            if let file = policy.file {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                    throw KeyPathError(path: "gateway.routes[\(config.name)].api_keys.file", message: "cannot read \(file)")
                }
                for line in text.split(whereSeparator: \.isNewline) where !line.hasPrefix("#") {
                    let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                    guard parts.count == 2 else { continue }
                    keys[Self.digest(String(parts[1]))] = String(parts[0])
                }
            }
        }
        apiKeys = keys
        // Limits keep their buckets across reloads while the route and its limits stay the same.
        if let previous, previous.config.rateLimits == config.rateLimits {
            limiters = previous.limiters
        } else {
            limiters = config.rateLimits.map { ($0.per, KeyedRateLimiter(rate: $0.rate, burst: $0.burst, maxKeys: 100_000, clock: clock)) }
        }
        metrics = previous?.metrics.lanes == Set(lanes) ? previous!.metrics : GatewayMetrics(route: config.name, lanes: lanes)
        hasPolicies = config.cors != nil || config.apiKeys != nil || config.maxBodyBytes != nil || !config.rateLimits.isEmpty
    }

    static func digest(_ key: String) -> String {
        SHA256.hash(data: Data(key.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// Path (query excluded), method, host and headers.
    func matches(path: String, host: String, head: HTTPRequestHead, ignoringMethod: Bool = false) -> Bool {
        if !ignoringMethod && !config.methods.isEmpty && !config.methods.contains(head.method.rawValue) { return false }
        if let pathRegex {
            if !pathRegex.found(in: path) { return false }
        } else if !GatewaySnapshot.path(path, hasPrefix: config.pathPrefix) {
            return false
        }
        if !config.hosts.isEmpty && !config.hosts.contains(where: { GatewaySnapshot.host(host, matches: $0) }) { return false }
        return headers.allSatisfy { name, rule in head.headers[canonicalForm: name].contains { rule.admits(String($0)) } }
    }
}

/// A lane's request entry rules, compiled.
/// A class: the lanes are walked for every request (a struct copy retained each rule list).
final class RequestLane: Sendable {
    let name: String
    let headers: [(String, ValueRule)]
    /// The names of `headers`, looked for in every request (reading a name out of `headers`
    /// copied its rule).
    let headerNames: [String]
    let cookies: [(String, ValueRule)]
    let params: [(String, ValueRule)]
    let claims: [(String, ValueRule)]
    let percentage: Double?
    let hashKey: SwitchyardConfiguration.HashKey

    init(_ lane: SwitchyardConfiguration.LaneRule) {
        name = lane.name
        func compile(_ rules: [String: SwitchyardConfiguration.ValueMatch]) -> [(String, ValueRule)] {
            rules.sorted { $0.key < $1.key }.map { ($0.key, ValueRule($0.value)) }
        }
        headers = compile(lane.headers)
        headerNames = headers.map(\.0)
        cookies = compile(lane.cookies)
        params = compile(lane.params)
        claims = compile(lane.claims)
        percentage = lane.percentage
        hashKey = lane.hashKey
    }
}

/// What the edge knows about a request before choosing its lane: its parts, parsed lazily.
struct RequestFacts {
    let head: HTTPRequestHead
    /// The verified token's claims (nil: none or not verified).
    let claims: [String: [String]]?
    private var jar: [String: String]?
    private var params: [String: String]?

    init(head: HTTPRequestHead, claims: [String: [String]]?) {
        self.head = head
        self.claims = claims
    }

    mutating func cookie(_ name: String) -> String? {
        if jar == nil { jar = GatewaySnapshot.cookies(head.headers) }
        return jar?[name]
    }

    mutating func param(_ name: String) -> String? {
        if params == nil { params = GatewaySnapshot.query(head.uri) }
        return params?[name]
    }
}

/// Everything the gateway decides with, compiled from one configuration (swapped on reload).
/// A class: each request takes it by reference (a struct copy retained every field).
public final class GatewaySnapshot: Sendable {
    let routes: [CompiledRoute]
    /// Some route matches on host (else the Host header is not looked at to choose one).
    let routesMatchHosts: Bool
    let trusted: [CIDR]
    let trustedIdentities: Set<String>
    let lanes: [RequestLane]
    let laneNames: Set<String>
    let resolver: LaneResolver
    /// Egress: the instances of a service by name (nil: no such service).
    let egress: (@Sendable (String) -> [ServiceInstance]?)?
    let egressMetrics: GatewayMetrics
    let jwt: JWTVerifier?
    let debugHeader: String
    /// The router's balancer (shared): the gateway chooses, counts, ejects and drains like it.
    let balancer: Balancer
    let circuitRules: [String: SwitchyardConfiguration.CircuitRule]
    let slowCallSeconds: Double
    let accessLog: AccessLog?

    public init(
        configuration: SwitchyardConfiguration,
        directory: any ServiceDirectory,
        previous: GatewaySnapshot? = nil,
        clock: any MonotonicClock = SystemMonotonicClock(),
        balancer: Balancer = Balancer(),
        egress: (@Sendable (String) -> [ServiceInstance]?)? = nil
    ) throws(KeyPathError) {
        let gateway = configuration.gateway
        self.egress = gateway.egress ? egress : nil
        let laneNames = configuration.lanes.map(\.name)
        var routes: [CompiledRoute] = []
        let circuitRules = configuration.services.mapValues(\.circuit)
        for route in gateway.routes {
            let before = previous?.routes.first { $0.config.name == route.name }
            routes.append(
                try CompiledRoute(
                    route,
                    lanes: laneNames,
                    circuits: circuitRules,
                    previous: before,
                    clock: clock,
                    breakers: balancer.targetBreakers,
                    directory: directory
                )
            )
        }
        self.routes = routes
        routesMatchHosts = routes.contains { !$0.config.hosts.isEmpty }
        egressMetrics = previous?.egressMetrics.lanes == Set(laneNames) ? previous!.egressMetrics : GatewayMetrics(route: "egress", lanes: laneNames)
        trusted = gateway.trustedCIDRs.compactMap { try? CIDR($0) }
        trustedIdentities = Set(gateway.trustedIdentities)
        lanes = configuration.lanes.map(RequestLane.init)
        self.laneNames = Set(laneNames)
        resolver = LaneResolver(lanes: configuration.lanes)
        jwt = gateway.jwt.isConfigured ? try JWTVerifier(settings: gateway.jwt) : nil
        debugHeader = gateway.debugHeader
        self.balancer = balancer
        self.circuitRules = circuitRules
        slowCallSeconds = configuration.resilience.slowCallSeconds
        if let path = gateway.accessLog {
            if let kept = previous?.accessLog, kept.path == path {
                accessLog = kept
            } else {
                accessLog = try AccessLog(path: path)
            }
        } else {
            accessLog = nil
        }
    }

    /// The first route whose host, path, method and headers match. A CORS preflight matches a
    /// route with CORS whatever the route's methods.
    func route(for head: HTTPRequestHead) -> CompiledRoute? {
        let path = head.uri.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(head.uri[..<$0]) } ?? head.uri
        let host = routesMatchHosts ? Self.hostName(head.headers.first(name: "host")) : ""
        if let route = routes.first(where: { $0.matches(path: path, host: host, head: head) }) { return route }
        guard Self.isPreflight(head) else { return nil }
        return routes.first { $0.config.cors != nil && $0.matches(path: path, host: host, head: head, ignoringMethod: true) }
    }

    static func isPreflight(_ head: HTTPRequestHead) -> Bool {
        guard case .OPTIONS = head.method else { return false }
        return head.headers.contains(name: "origin") && head.headers.contains(name: "access-control-request-method")
    }

    /// `/api` covers `/api` and `/api/…`, not `/apix`.
    /// (Compared as bytes: paths are ASCII, percent-encoded.)
    static func path(_ path: String, hasPrefix prefix: String) -> Bool {
        let (p, q) = (path.utf8, prefix.utf8)
        guard p.count >= q.count, p.starts(with: q) else { return false }
        if q.last == UInt8(ascii: "/") || p.count == q.count { return true }
        let next = p[p.index(p.startIndex, offsetBy: q.count)]
        return next == UInt8(ascii: "/") || next == UInt8(ascii: "?")
    }

    static func hostName(_ header: String?) -> String {
        guard let header else { return "" }
        var host = header.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) ? header.lowercased() : header
        if host.hasPrefix("[") { return host.split(separator: "]").first.map { String($0) + "]" } ?? host }
        if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
        return host
    }

    static func host(_ host: String, matches pattern: String) -> Bool {
        if pattern.hasPrefix("*.") { return host.hasSuffix(pattern.dropFirst(1)) && host.count > pattern.count - 1 }
        return host == pattern
    }

    /// A caller from a trusted network, or (mutual TLS) with a trusted certificate name.
    func isTrusted(_ address: SocketAddress?, identities: @autoclosure () -> [String] = []) -> Bool {
        if let address, trusted.contains(where: { $0.contains(address) }) { return true }
        return !trustedIdentities.isEmpty && identities().contains(where: trustedIdentities.contains)
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

    /// The request's lane: a trusted caller's own, else the first lane whose entry rules admit it.
    func lane(for head: HTTPRequestHead, from address: SocketAddress?, claims: [String: [String]]? = nil) -> (lane: String?, why: String) {
        lane(for: head, trusted: isTrusted(address), claims: claims)
    }

    func lane(for head: HTTPRequestHead, trusted: Bool, claims: [String: [String]]?) -> (lane: String?, why: String) {
        if trusted {
            if let carried = head.headers.first(name: "x-switchyard-lane"), laneNames.contains(carried) {
                return (carried, "carried by a trusted caller")
            }
            if let carried = Self.baggageLane(head.headers.first(name: "baggage")), laneNames.contains(carried) {
                return (carried, "carried in baggage by a trusted caller")
            }
        }
        // (Header rules are read in place, by index: a request that matches none copies none.)
        var facts = RequestFacts(head: head, claims: claims)
        for lane in lanes {
            for i in lane.headerNames.indices where head.headers.contains(name: lane.headerNames[i]) {
                let (name, rule) = lane.headers[i]
                if let value = head.headers[canonicalForm: name].first(where: { rule.admits(String($0)) }) {
                    return (lane.name, "header \(name) is \"\(value)\"")
                }
            }
            for (name, rule) in lane.cookies {
                if let value = facts.cookie(name), rule.admits(value) { return (lane.name, "cookie \(name) is \"\(value)\"") }
            }
            for (name, rule) in lane.params {
                if let value = facts.param(name), rule.admits(value) { return (lane.name, "parameter \(name) is \"\(value)\"") }
            }
            for (name, rule) in lane.claims {
                if let value = claims?[name]?.first(where: rule.admits) { return (lane.name, "token claim \(name) is \"\(value)\"") }
            }
            if let percentage = lane.percentage {
                let key: String?
                switch lane.hashKey {
                case .header(let name): key = head.headers.first(name: name)
                case .cookie(let name): key = facts.cookie(name)
                case .param(let name): key = facts.param(name)
                case .claim(let name): key = claims?[name]?.first
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
