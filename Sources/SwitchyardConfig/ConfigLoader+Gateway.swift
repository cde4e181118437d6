import Controller
import Foundation
import SwitchyardCore
import Yams

/// The `gateway` section: routes, their policies, JWT keys, trusted callers.
extension ConfigLoader {
    static let routeKeys = [
        "name", "hosts", "path_prefix", "path_regex", "methods", "headers", "service", "url", "namespace", "group", "strip_prefix",
        "prefix_rewrite", "timeout", "retries", "retry_non_idempotent", "jwt", "api_keys", "cors", "max_body_bytes", "rate_limits",
        "request_headers", "response_headers", "fault", "breaker", "max_concurrency",
    ]

    static func readGateway(_ node: Node?, _ r: inout ConfigReader) -> SwitchyardConfiguration.Gateway {
        var g = SwitchyardConfiguration.Gateway()
        let m = r.mapping(
            node,
            "gateway",
            allowed: ["routes", "trusted_cidrs", "trusted_identities", "egress", "jwt", "debug_header", "access_log"]
        )
        g.trustedIdentities = r.strings(m["trusted_identities"], "gateway.trusted_identities")
        if let v = r.bool(m["egress"], "gateway.egress") { g.egress = v }
        if m["trusted_cidrs"] != nil { g.trustedCIDRs = r.strings(m["trusted_cidrs"], "gateway.trusted_cidrs") }
        if let v = r.string(m["debug_header"], "gateway.debug_header") { g.debugHeader = v.lowercased() }
        if let v = r.string(m["access_log"], "gateway.access_log") { g.accessLog = v.isEmpty || v == "off" ? nil : v }
        let jwt = r.mapping(m["jwt"], "gateway.jwt", allowed: ["jwks_file", "keys", "issuer", "audiences", "leeway", "cookie"])
        g.jwt.jwksFile = r.string(jwt["jwks_file"], "gateway.jwt.jwks_file")
        g.jwt.issuer = r.string(jwt["issuer"], "gateway.jwt.issuer")
        g.jwt.audiences = r.strings(jwt["audiences"], "gateway.jwt.audiences")
        g.jwt.cookie = r.string(jwt["cookie"], "gateway.jwt.cookie")
        if let v = r.duration(jwt["leeway"], "gateway.jwt.leeway", range: 0...3600) { g.jwt.leewaySeconds = v }
        g.jwt.keys = r.sequence(jwt["keys"], "gateway.jwt.keys").enumerated().map { i, node in
            let p = "gateway.jwt.keys[\(i)]"
            let k = r.mapping(node, p, allowed: ["kid", "alg", "secret_file", "pem_file", "pem"])
            var key = SwitchyardConfiguration.JWTKey(alg: r.string(k["alg"], "\(p).alg") ?? "")
            key.kid = r.string(k["kid"], "\(p).kid")
            key.secretFile = r.string(k["secret_file"], "\(p).secret_file")
            key.pemFile = r.string(k["pem_file"], "\(p).pem_file")
            key.pem = r.string(k["pem"], "\(p).pem")
            let algorithms = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"]
            if !algorithms.contains(key.alg) {
                r.fail("\(p).alg", "must be one of \(algorithms.joined(separator: ", ")), got \"\(key.alg)\"", k["alg"] ?? node)
            } else if key.alg.hasPrefix("HS") && key.secretFile == nil {
                r.fail("\(p).secret_file", "an \(key.alg) key needs secret_file (the shared secret; never inline)", node)
            } else if !key.alg.hasPrefix("HS") && (key.pemFile == nil) == (key.pem == nil) {
                r.fail("\(p).pem_file", "an \(key.alg) key needs one of pem_file or pem (the public key)", node)
            }
            return key
        }
        g.routes = r.sequence(m["routes"], "gateway.routes").enumerated().map { readGatewayRoute($1, "gateway.routes[\($0)]", &r) }
        return g
    }

    static func readGatewayRoute(_ node: Node, _ p: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.GatewayRoute {
        let m = r.mapping(node, p, allowed: routeKeys)
        var route = SwitchyardConfiguration.GatewayRoute(
            name: r.string(m["name"], "\(p).name") ?? "",
            service: r.string(m["service"], "\(p).service") ?? ""
        )
        if m["name"] == nil { r.fail("\(p).name", "missing: every route needs a name", node) }
        route.url = r.string(m["url"], "\(p).url")
        if (m["service"] == nil) == (route.url == nil) {
            r.fail("\(p).service", "give one of service (a registry or static service) or url (one plain upstream)", node)
        }
        if m["hosts"] != nil { route.hosts = r.strings(m["hosts"], "\(p).hosts").map { $0.lowercased() } }
        if let v = r.string(m["path_prefix"], "\(p).path_prefix") { route.pathPrefix = v }
        route.pathRegex = r.string(m["path_regex"], "\(p).path_regex")
        if m["methods"] != nil { route.methods = r.strings(m["methods"], "\(p).methods").map { $0.uppercased() } }
        route.headers = readValueMatches(m["headers"], "\(p).headers", lowercaseNames: true, &r)
        if let v = r.string(m["namespace"], "\(p).namespace") { route.namespace = v.isEmpty ? "public" : v }
        if let v = r.string(m["group"], "\(p).group") { route.group = v.isEmpty ? "DEFAULT_GROUP" : v }
        if let v = r.bool(m["strip_prefix"], "\(p).strip_prefix") { route.stripPrefix = v }
        route.prefixRewrite = r.string(m["prefix_rewrite"], "\(p).prefix_rewrite")
        if let v = r.duration(m["timeout"], "\(p).timeout", range: 0.001...3600) { route.timeoutSeconds = v }
        if let v = r.int(m["retries"], "\(p).retries", range: 0...10) { route.retries = v }
        if let v = r.bool(m["retry_non_idempotent"], "\(p).retry_non_idempotent") { route.retryNonIdempotent = v }
        if let v = r.string(m["jwt"], "\(p).jwt") {
            if let requirement = SwitchyardConfiguration.JWTRequirement(rawValue: v) {
                route.jwt = requirement
            } else {
                r.fail("\(p).jwt", "must be required, optional or off, got \"\(v)\"", m["jwt"])
            }
        }
        if m["api_keys"] != nil {
            let a = r.mapping(m["api_keys"], "\(p).api_keys", allowed: ["header", "keys", "file"])
            var policy = SwitchyardConfiguration.APIKeyPolicy()
            if let v = r.string(a["header"], "\(p).api_keys.header") { policy.header = v.lowercased() }
            policy.keys = r.stringMap(a["keys"], "\(p).api_keys.keys")
            policy.file = r.string(a["file"], "\(p).api_keys.file")
            if policy.keys.isEmpty && policy.file == nil {
                r.fail("\(p).api_keys", "give keys (consumer: key) or file (lines of \"consumer key\")", m["api_keys"])
            }
            route.apiKeys = policy
        }
        if m["cors"] != nil {
            let c = r.mapping(m["cors"], "\(p).cors", allowed: ["origins", "methods", "headers", "expose_headers", "credentials", "max_age"])
            var cors = SwitchyardConfiguration.CORSPolicy()
            cors.origins = r.strings(c["origins"], "\(p).cors.origins")
            if c["methods"] != nil { cors.methods = r.strings(c["methods"], "\(p).cors.methods").map { $0.uppercased() } }
            if c["headers"] != nil { cors.headers = r.strings(c["headers"], "\(p).cors.headers").map { $0.lowercased() } }
            cors.exposeHeaders = r.strings(c["expose_headers"], "\(p).cors.expose_headers")
            if let v = r.bool(c["credentials"], "\(p).cors.credentials") { cors.credentials = v }
            if let v = r.duration(c["max_age"], "\(p).cors.max_age", range: 0...86_400) { cors.maxAgeSeconds = Int(v) }
            if cors.origins.isEmpty { r.fail("\(p).cors.origins", "missing: the allowed origins (https://app.example.com, or *)", m["cors"]) }
            if cors.credentials && cors.origins.contains("*") {
                r.fail("\(p).cors.credentials", "credentials cannot be allowed for any origin (*); list the origins", c["credentials"])
            }
            route.cors = cors
        }
        route.maxBodyBytes = r.size(m["max_body_bytes"], "\(p).max_body_bytes", range: 0...(1 << 50))
        route.rateLimits = r.sequence(m["rate_limits"], "\(p).rate_limits").enumerated().compactMap { i, node in
            let q = "\(p).rate_limits[\(i)]"
            let l = r.mapping(node, q, allowed: ["per", "rate", "burst"])
            let perText = r.string(l["per"], "\(q).per") ?? "route"
            guard let per = SwitchyardConfiguration.RouteRateLimit.Scope(rawValue: perText) else {
                r.fail("\(q).per", "must be route, consumer or ip, got \"\(perText)\"", l["per"])
                return nil
            }
            guard let rate = r.double(l["rate"], "\(q).rate", range: 0.001...10_000_000) else {
                if l["rate"] == nil { r.fail("\(q).rate", "missing: requests per second", node) }
                return nil
            }
            let burst = r.double(l["burst"], "\(q).burst", range: 1...10_000_000) ?? max(1, rate)
            return SwitchyardConfiguration.RouteRateLimit(per: per, rate: rate, burst: burst)
        }
        if m["breaker"] != nil { route.breaker = readBreaker(m["breaker"], "\(p).breaker", &r) }
        route.maxConcurrency = r.int(m["max_concurrency"], "\(p).max_concurrency", range: 1...1_000_000)
        route.requestHeaders = readHeaderRewrite(m["request_headers"], "\(p).request_headers", &r)
        route.responseHeaders = readHeaderRewrite(m["response_headers"], "\(p).response_headers", &r)
        if m["fault"] != nil {
            let f = r.mapping(m["fault"], "\(p).fault", allowed: ["delay", "delay_percent", "abort_status", "abort_percent", "lanes"])
            var fault = SwitchyardConfiguration.FaultInjection()
            if let v = r.duration(f["delay"], "\(p).fault.delay", range: 0...600) { fault.delaySeconds = v }
            if let v = r.double(f["delay_percent"], "\(p).fault.delay_percent", range: 0...100) { fault.delayPercent = v }
            if let v = r.int(f["abort_status"], "\(p).fault.abort_status", range: 200...599) { fault.abortStatus = v }
            if let v = r.double(f["abort_percent"], "\(p).fault.abort_percent", range: 0...100) { fault.abortPercent = v }
            fault.lanes = r.strings(f["lanes"], "\(p).fault.lanes")
            if f["delay"] != nil && f["delay_percent"] == nil { fault.delayPercent = 100 }
            route.fault = fault
        }
        return route
    }

    /// `{window, min_requests, error_ratio, slow_ratio, slow_call, error_count, open_for, half_open_probes, close_after}`.
    static func readBreaker(_ node: Node?, _ p: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.BreakerRule {
        let m = r.mapping(
            node,
            p,
            allowed: [
                "window", "min_requests", "error_ratio", "slow_ratio", "slow_call", "error_count", "open_for", "half_open_probes", "close_after",
            ]
        )
        var b = SwitchyardConfiguration.BreakerRule()
        if let v = r.duration(m["window"], "\(p).window", range: 0.1...3600) { b.windowSeconds = v }
        if let v = r.int(m["min_requests"], "\(p).min_requests", range: 1...1_000_000) { b.minRequests = v }
        if let v = r.double(m["error_ratio"], "\(p).error_ratio", range: 0...1) { b.errorRatio = v }
        if let v = r.double(m["slow_ratio"], "\(p).slow_ratio", range: 0...1) { b.slowRatio = v }
        if let v = r.duration(m["slow_call"], "\(p).slow_call", range: 0...3600) { b.slowCallSeconds = v }
        if let v = r.int(m["error_count"], "\(p).error_count", range: 0...1_000_000) { b.errorCount = v }
        if let v = r.duration(m["open_for"], "\(p).open_for", range: 0.01...86_400) { b.openSeconds = v }
        if let v = r.int(m["half_open_probes"], "\(p).half_open_probes", range: 1...10_000) { b.halfOpenProbes = v }
        if let v = r.int(m["close_after"], "\(p).close_after", range: 1...10_000) { b.closeAfter = v }
        if b.closeAfter > b.halfOpenProbes {
            r.fail("\(p).close_after", "cannot exceed half_open_probes (\(b.halfOpenProbes)): the circuit could never close", m["close_after"])
        }
        if b.errorRatio == 0 && b.slowRatio == 0 && b.errorCount == 0 {
            r.fail(p, "no threshold: give error_ratio, slow_ratio or error_count", node)
        }
        return b
    }

    static func readHeaderRewrite(_ node: Node?, _ p: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.HeaderRewrite {
        let m = r.mapping(node, p, allowed: ["set", "add", "remove"])
        var rewrite = SwitchyardConfiguration.HeaderRewrite()
        rewrite.set = Dictionary(r.stringMap(m["set"], "\(p).set").map { ($0.lowercased(), $1) }, uniquingKeysWith: { a, _ in a })
        rewrite.add = Dictionary(r.stringMap(m["add"], "\(p).add").map { ($0.lowercased(), $1) }, uniquingKeysWith: { a, _ in a })
        rewrite.remove = r.strings(m["remove"], "\(p).remove").map { $0.lowercased() }
        for (name, value) in rewrite.set.merging(rewrite.add, uniquingKeysWith: { a, _ in a }) {
            if !Self.isToken(name) { r.fail("\(p).\(name)", "\"\(name)\" is not a header name", node) }
            if value.contains(where: { $0 == "\r" || $0 == "\n" }) { r.fail("\(p).\(name)", "a header value cannot contain line breaks", node) }
        }
        return rewrite
    }

    static func isToken(_ name: String) -> Bool {
        !name.isEmpty
            && name.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || "-_.!#$%&'*+^`|~".utf8.contains(c)
            }
    }

    /// `name: value`, `name: [v1, v2]` or `name: {regex: "…"}` (also `equals`, `in`).
    static func readValueMatches(
        _ node: Node?,
        _ path: String,
        lowercaseNames: Bool,
        _ r: inout ConfigReader
    ) -> [String: SwitchyardConfiguration.ValueMatch] {
        var out: [String: SwitchyardConfiguration.ValueMatch] = [:]
        for (name, node) in r.namedMapping(node, path) {
            let p = "\(path).\(name)"
            var match = SwitchyardConfiguration.ValueMatch()
            if case .mapping = node {
                let m = r.mapping(node, p, allowed: ["equals", "in", "regex"])
                match.values = r.strings(m["equals"], "\(p).equals") + r.strings(m["in"], "\(p).in")
                match.regex = r.string(m["regex"], "\(p).regex")
                if let regex = match.regex {
                    if let problem = regexProblem(regex) { r.fail("\(p).regex", problem, m["regex"]) }
                }
                if m.isEmpty { r.fail(p, "give equals, in or regex", node) }
            } else {
                match.values = r.strings(node, p)
            }
            out[lowercaseNames ? name.lowercased() : name] = match
        }
        return out
    }

    /// Why `pattern` is not a regex the gateway can search with (the engine it runs on), or nil.
    /// A path prefix every path of which is a message endpoint (`/v1/messages/…`): the route
    /// could never match.
    static func onlyMessageEndpoints(_ prefix: String) -> Bool {
        prefix.hasPrefix(MessageEndpoints.messagePrefix)
    }

    static func regexProblem(_ pattern: String) -> String? {
        do {
            _ = try Regex(pattern)
            return nil
        } catch {
            return "not a valid regular expression: \(error)"
        }
    }

    static func validateGateway(_ c: SwitchyardConfiguration, _ r: inout ConfigReader) {
        var names: Set<String> = []
        let laneNames = Set(c.lanes.map(\.name))
        for (i, route) in c.gateway.routes.enumerated() {
            let p = "gateway.routes[\(i)]"
            if !route.name.isEmpty && !names.insert(route.name).inserted {
                r.fail("\(p).name", "route \"\(route.name)\" is declared twice", nil)
            }
            if route.name == "egress" { r.fail("\(p).name", "\"egress\" names the service-to-service traffic; choose another name", nil) }
            if !route.pathPrefix.hasPrefix("/") { r.fail("\(p).path_prefix", "must start with \"/\"", nil) }
            if route.pathRegex == nil, Self.onlyMessageEndpoints(route.pathPrefix) {
                r.fail(
                    "\(p).path_prefix",
                    "\(route.pathPrefix) is the message channel's (\(MessageEndpoints.messagePrefix)…, \(MessageEndpoints.batchPath)); "
                        + "no gateway route takes it — guard message ingestion with the filters of the controller instead",
                    nil
                )
            }
            if let regex = route.pathRegex {
                if let problem = regexProblem(regex) { r.fail("\(p).path_regex", problem, nil) }
            }
            if let rewrite = route.prefixRewrite {
                if !rewrite.hasPrefix("/") { r.fail("\(p).prefix_rewrite", "must start with \"/\"", nil) }
                if route.stripPrefix { r.fail("\(p).prefix_rewrite", "give prefix_rewrite or strip_prefix, not both", nil) }
                if route.pathRegex != nil { r.fail("\(p).prefix_rewrite", "rewrites the path_prefix; this route matches by path_regex", nil) }
            }
            if let url = route.url {
                if ServiceInstance(service: route.name, url: url) == nil {
                    r.fail("\(p).url", "\"\(url)\" is not an http://host:port[/base] URL", nil)
                }
            } else if !route.service.isEmpty && c.services[route.service] == nil && !c.registry.enabled {
                r.fail("\(p).service", "unknown service \"\(route.service)\"; define it under services (or turn the registry on)", nil)
            }
            for (j, m) in route.methods.enumerated() where !m.allSatisfy({ $0.isLetter }) {
                r.fail("\(p).methods[\(j)]", "\"\(m)\" is not an HTTP method", nil)
            }
            if route.jwt == .required && !c.gateway.jwt.isConfigured {
                r.fail("\(p).jwt", "required, but gateway.jwt has no keys (jwks_file or keys)", nil)
            }
            for (j, lane) in (route.fault?.lanes ?? []).enumerated() where lane != "baseline" && !laneNames.contains(lane) {
                r.fail("\(p).fault.lanes[\(j)]", "lane \"\(lane)\" is not declared under lanes", nil)
            }
        }
        for (i, cidr) in c.gateway.trustedCIDRs.enumerated() {
            do { _ = try CIDR(cidr) } catch { r.fail("gateway.trusted_cidrs[\(i)]", "\(error)", nil) }
        }
        for (i, lane) in c.lanes.enumerated() where !lane.claims.isEmpty && !c.gateway.jwt.isConfigured {
            r.fail("lanes[\(i)].entry.claims", "claims come from verified tokens: configure gateway.jwt (jwks_file or keys)", nil)
        }
    }
}
