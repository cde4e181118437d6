import Controller
import Foundation
import Router
public import SwitchyardCore
import Yams

/// Loads and validates a configuration file.
public enum ConfigLoader {
    /// Reads `path`; throws `ConfigErrors` listing every problem.
    public static func load(path: String) throws(ConfigErrors) -> SwitchyardConfiguration {
        let text: String
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let t = String(data: data, encoding: .utf8) else {
                throw ConfigErrors([ConfigIssue(path: "", message: "\(path) is not UTF-8 text")])
            }
            text = t
        } catch let e as ConfigErrors {
            throw e
        } catch {
            throw ConfigErrors([ConfigIssue(path: "", message: "cannot read \(path): \(error)")])
        }
        return try parse(yaml: text)
    }

    /// Parses YAML text; an empty document is the embedded defaults.
    public static func parse(yaml: String) throws(ConfigErrors) -> SwitchyardConfiguration {
        let root = try compose(yaml)
        var reader = ConfigReader()
        let config = read(root, &reader)
        validate(config, &reader)
        if !reader.issues.isEmpty { throw ConfigErrors(reader.issues) }
        return config
    }

    static func compose(_ yaml: String) throws(ConfigErrors) -> Node? {
        do {
            return try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigErrors([ConfigIssue(path: "", message: "not valid YAML: \(error)")])
        }
    }

    /// The sections that may live in the config center (`registry.config`).
    public static let overlaySections = ["filters", "tags", "lanes", "routes", "services"]

    /// `base` with the sections `yaml` gives (filters, tags, lanes, routes, services) replaced
    /// by the document's, validated as a whole like a file.
    public static func overlay(yaml: String, onto base: SwitchyardConfiguration) throws(ConfigErrors) -> SwitchyardConfiguration {
        let root = try compose(yaml)
        var reader = ConfigReader()
        let present = reader.mapping(root, "", allowed: overlaySections)
        let parsed = read(root, &reader)
        if !reader.issues.isEmpty { throw ConfigErrors(reader.issues) }
        var merged = base
        if present["filters"] != nil { merged.filters = parsed.filters }
        if present["tags"] != nil { merged.tags = parsed.tags }
        if present["lanes"] != nil { merged.lanes = parsed.lanes }
        if present["routes"] != nil { merged.routes = parsed.routes }
        if present["services"] != nil { merged.services = parsed.services }
        validate(merged, &reader)
        if !reader.issues.isEmpty { throw ConfigErrors(reader.issues) }
        return merged
    }

    // MARK: - Sections

    static let sections = [
        "node", "listeners", "channels", "filters", "tags", "lanes", "routes", "services", "registry", "gateway", "journal", "telemetry",
        "resilience",
    ]

    static func read(_ root: Node?, _ r: inout ConfigReader) -> SwitchyardConfiguration {
        var c = SwitchyardConfiguration()
        let top = r.mapping(root, "", allowed: sections)

        let node = r.mapping(top["node"], "node", allowed: ["name", "data_dir", "threads", "shutdown_delay"])
        if let v = r.duration(node["shutdown_delay"], "node.shutdown_delay", range: 0...600) { c.node.shutdownDelaySeconds = v }
        if let v = r.int(node["threads"], "node.threads", range: 0...256) { c.node.threads = v }
        if let v = r.string(node["name"], "node.name") { c.node.name = v }
        if let v = r.string(node["data_dir"], "node.data_dir") { c.node.dataDir = v }

        let listeners = r.mapping(top["listeners"], "listeners", allowed: ["http", "https", "admin", "mqtt", "mqtts", "nacos"])
        let https = readTLSListener(
            listeners["https"],
            "https",
            extra: ["client_ca": \.httpsClientCA, "client_auth": nil],
            into: &c,
            listener: \.https,
            cert: \.httpsCertificate,
            key: \.httpsKey,
            &r
        )
        if let v = r.string(https["client_auth"], "listeners.https.client_auth") {
            switch v {
            case "optional": c.listeners.httpsClientAuthRequired = false
            case "required": c.listeners.httpsClientAuthRequired = true
            default: r.fail("listeners.https.client_auth", "must be optional or required, got \"\(v)\"", https["client_auth"])
            }
            if https["client_ca"] == nil {
                r.fail("listeners.https.client_auth", "needs client_ca (the CAs client certificates come from)", https["client_auth"])
            }
        }
        for (key, keyPath) in [("http", \SwitchyardConfiguration.Listeners.http), ("admin", \.admin), ("mqtt", \.mqtt), ("nacos", \.nacos)] {
            let l = r.mapping(listeners[key], "listeners.\(key)", allowed: ["host", "port"])
            if let v = r.string(l["host"], "listeners.\(key).host") { c.listeners[keyPath: keyPath].host = v }
            if let v = r.int(l["port"], "listeners.\(key).port", range: 0...65535) { c.listeners[keyPath: keyPath].port = v }
        }
        _ = readTLSListener(listeners["mqtts"], "mqtts", into: &c, listener: \.mqtts, cert: \.mqttsCertificate, key: \.mqttsKey, &r)

        let channels = r.mapping(top["channels"], "channels", allowed: ["http", "mqtt", "device_patterns"])
        let mqtt = r.mapping(
            channels["mqtt"],
            "channels.mqtt",
            allowed: [
                "enabled", "allow_anonymous", "max_packet_size", "receive_maximum", "max_keep_alive", "max_connections", "acl", "command_topic",
                "connection_events", "deny_publish", "deny_subscribe", "allow_publish", "allow_subscribe", "max_session_expiry",
                "max_queued_messages", "max_inflight",
                "topic_alias_maximum", "shared_subscriptions", "unrouted", "max_connection_rate", "sys_interval",
            ]
        )
        if let v = r.double(mqtt["max_connection_rate"], "channels.mqtt.max_connection_rate", range: 0...10_000_000) {
            c.channels.mqtt.maxConnectionRate = v
        }
        if let v = r.duration(mqtt["sys_interval"], "channels.mqtt.sys_interval", range: 0...86_400) { c.channels.mqtt.sysIntervalSeconds = Int(v) }
        if let v = r.string(mqtt["unrouted"], "channels.mqtt.unrouted") {
            switch v {
            case "subscribers": c.channels.mqtt.unroutedToSubscribersOnly = true
            case "dead_letter": c.channels.mqtt.unroutedToSubscribersOnly = false
            default: r.fail("channels.mqtt.unrouted", "subscribers (only MQTT subscribers get it) or dead_letter", mqtt["unrouted"])
            }
        }
        if let v = r.duration(mqtt["max_session_expiry"], "channels.mqtt.max_session_expiry", range: 0...Double(UInt32.max)) {
            c.channels.mqtt.maxSessionExpirySeconds = Int(v)
        }
        if let v = r.int(mqtt["max_queued_messages"], "channels.mqtt.max_queued_messages", range: 1...1_000_000) {
            c.channels.mqtt.maxQueuedMessages = v
        }
        if let v = r.int(mqtt["max_inflight"], "channels.mqtt.max_inflight", range: 1...65_535) { c.channels.mqtt.maxInflight = v }
        if let v = r.int(mqtt["topic_alias_maximum"], "channels.mqtt.topic_alias_maximum", range: 0...65_535) {
            c.channels.mqtt.topicAliasMaximum = v
        }
        if let v = r.bool(mqtt["shared_subscriptions"], "channels.mqtt.shared_subscriptions") { c.channels.mqtt.sharedSubscriptions = v }
        if let v = r.bool(mqtt["connection_events"], "channels.mqtt.connection_events") { c.channels.mqtt.connectionEvents = v }
        for (key, keyPath) in [
            ("deny_publish", \SwitchyardConfiguration.MQTTChannel.denyPublish), ("deny_subscribe", \.denySubscribe),
            ("allow_publish", \.allowPublish), ("allow_subscribe", \.allowSubscribe),
        ]
        where mqtt[key] != nil {
            let filters = r.strings(mqtt[key], "channels.mqtt.\(key)")
            for (i, f) in filters.enumerated() where f.isEmpty || f.contains("\u{0}") {
                r.fail("channels.mqtt.\(key)[\(i)]", "a topic filter such as test/nosubscribe or secret/#", mqtt[key])
            }
            c.channels.mqtt[keyPath: keyPath] = filters
        }
        if let v = r.string(mqtt["command_topic"], "channels.mqtt.command_topic") {
            if !v.contains("{device}") || v.contains("+") || v.contains("#") || v.hasSuffix("/") {
                r.fail(
                    "channels.mqtt.command_topic",
                    "a topic with {device} (and {product}) and no wildcards, e.g. devices/{product}/{device}/commands",
                    mqtt["command_topic"]
                )
            } else {
                c.channels.mqtt.commandTopic = v
            }
        }
        if let v = r.string(mqtt["acl"], "channels.mqtt.acl") {
            if !v.contains("{device}") {
                r.fail("channels.mqtt.acl", "must contain {device} (e.g. devices/{product}/{device}/#): each device gets its own space", mqtt["acl"])
            } else if v.dropLast(v.hasSuffix("/#") ? 2 : 0).contains(where: { $0 == "+" || $0 == "#" }) {
                r.fail("channels.mqtt.acl", "a topic prefix ending in /#, or one exact topic; no other wildcards", mqtt["acl"])
            } else {
                c.channels.mqtt.aclTemplate = v
            }
        }
        if let v = r.bool(mqtt["enabled"], "channels.mqtt.enabled") { c.channels.mqtt.enabled = v }
        if let v = r.bool(mqtt["allow_anonymous"], "channels.mqtt.allow_anonymous") { c.channels.mqtt.allowAnonymous = v }
        if let v = r.size(mqtt["max_packet_size"], "channels.mqtt.max_packet_size", range: 64...(256 << 20)) { c.channels.mqtt.maxPacketBytes = v }
        if let v = r.int(mqtt["receive_maximum"], "channels.mqtt.receive_maximum", range: 1...65_535) { c.channels.mqtt.receiveMaximum = v }
        if let v = r.duration(mqtt["max_keep_alive"], "channels.mqtt.max_keep_alive", range: 1...65_535) {
            c.channels.mqtt.maxKeepAliveSeconds = Int(v)
        }
        if let v = r.int(mqtt["max_connections"], "channels.mqtt.max_connections", range: 1...10_000_000) { c.channels.mqtt.maxConnections = v }
        let http = r.mapping(
            channels["http"],
            "channels.http",
            allowed: [
                "enabled", "max_body_bytes", "max_batch_items", "device_header", "product_header", "message_id_header", "header_timeout", "http2",
                "transport",
            ]
        )
        if let v = r.duration(http["header_timeout"], "channels.http.header_timeout", range: 0.01...3600) { c.channels.http.headerTimeoutSeconds = v }
        if let v = r.bool(http["http2"], "channels.http.http2") { c.channels.http.http2 = v }
        if let v = r.string(http["transport"], "channels.http.transport") {
            if let transport = SwitchyardConfiguration.HTTPTransport(rawValue: v) {
                c.channels.http.transport = transport
            } else {
                r.fail("channels.http.transport", "epoll (Switchyard's own event loops) or nio (SwiftNIO's)", http["transport"])
            }
        }
        if let v = r.int(http["max_batch_items"], "channels.http.max_batch_items", range: 1...100_000) { c.channels.http.maxBatchItems = v }
        if let v = r.bool(http["enabled"], "channels.http.enabled") { c.channels.http.enabled = v }
        if let v = r.size(http["max_body_bytes"], "channels.http.max_body_bytes", range: 1...(256 << 20)) {
            c.channels.http.maxBodyBytes = v
        }
        if let v = r.string(http["device_header"], "channels.http.device_header") { c.channels.http.deviceHeader = v.lowercased() }
        if let v = r.string(http["product_header"], "channels.http.product_header") { c.channels.http.productHeader = v.lowercased() }
        if let v = r.string(http["message_id_header"], "channels.http.message_id_header") {
            c.channels.http.messageIDHeader = v.lowercased()
        }
        if channels["device_patterns"] != nil {
            c.channels.devicePatterns = r.strings(channels["device_patterns"], "channels.device_patterns")
        }

        c.filters = r.sequence(top["filters"], "filters").enumerated().compactMap { readFilter($1, "filters[\($0)]", &r) }
        c.tags = r.sequence(top["tags"], "tags").enumerated().map { readTag($1, "tags[\($0)]", &r) }
        c.lanes = r.sequence(top["lanes"], "lanes").enumerated().map { readLane($1, "lanes[\($0)]", &r) }
        c.routes = r.sequence(top["routes"], "routes").enumerated().map { readRoute($1, "routes[\($0)]", &r) }
        for (name, node) in r.namedMapping(top["services"], "services") {
            c.services[name] = readService(node, "services.\(name)", &r)
        }
        let registry = r.mapping(
            top["registry"],
            "registry",
            allowed: ["enabled", "auth", "token_ttl", "empty_protection", "health_check_interval", "max_config_bytes", "config"]
        )
        if let v = r.bool(registry["enabled"], "registry.enabled") { c.registry.enabled = v }
        if let v = r.string(registry["auth"], "registry.auth") {
            if let auth = SwitchyardConfiguration.Registry.Auth(rawValue: v) {
                c.registry.auth = auth
            } else {
                r.fail("registry.auth", "auto (on unless listeners.nacos is loopback), on or off", registry["auth"])
            }
        }
        if let v = r.duration(registry["token_ttl"], "registry.token_ttl", range: 60...(30 * 86_400)) { c.registry.tokenTTLSeconds = Int(v) }
        if let v = r.duration(registry["empty_protection"], "registry.empty_protection", range: 0...86_400) { c.registry.emptyProtectionSeconds = v }
        if let v = r.duration(registry["health_check_interval"], "registry.health_check_interval", range: 0...3600) {
            c.registry.healthCheckIntervalSeconds = v
        }
        if let v = r.size(registry["max_config_bytes"], "registry.max_config_bytes", range: 1...(64 << 20)) { c.registry.maxConfigBytes = v }
        let source = r.mapping(registry["config"], "registry.config", allowed: ["data_id", "group", "tenant"])
        if let v = r.string(source["data_id"], "registry.config.data_id") { c.registry.configDataID = v }
        if let v = r.string(source["group"], "registry.config.group") { c.registry.configGroup = v }
        if let v = r.string(source["tenant"], "registry.config.tenant") { c.registry.configTenant = v == "public" ? "" : v }
        c.gateway = readGateway(top["gateway"], &r)
        let resilience = r.mapping(top["resilience"], "resilience", allowed: ["warmup", "max_ejection_percent", "retry_budget", "slow_call"])
        if let v = r.duration(resilience["slow_call"], "resilience.slow_call", range: 0...3600) { c.resilience.slowCallSeconds = v }
        let warmup = r.mapping(resilience["warmup"], "resilience.warmup", allowed: ["duration", "aggression", "min_percent"])
        if let v = r.duration(warmup["duration"], "resilience.warmup.duration", range: 0...3600) { c.resilience.warmUpSeconds = v }
        if let v = r.double(warmup["aggression"], "resilience.warmup.aggression", range: 0.01...100) { c.resilience.warmUpAggression = v }
        if let v = r.double(warmup["min_percent"], "resilience.warmup.min_percent", range: 0...100) { c.resilience.warmUpMinPercent = v }
        if let v = r.double(resilience["max_ejection_percent"], "resilience.max_ejection_percent", range: 0...100) {
            c.resilience.maxEjectionPercent = v
        }
        let budget = r.mapping(resilience["retry_budget"], "resilience.retry_budget", allowed: ["percent", "min_concurrent"])
        if let v = r.double(budget["percent"], "resilience.retry_budget.percent", range: 0...100) { c.resilience.retryBudgetPercent = v }
        if let v = r.int(budget["min_concurrent"], "resilience.retry_budget.min_concurrent", range: 0...100_000) {
            c.resilience.retryBudgetMinimum = v
        }
        let journal = r.mapping(
            top["journal"],
            "journal",
            allowed: ["enabled", "max_bytes", "segment_bytes", "max_commit_latency", "sync", "dead_letter_limit"]
        )
        if let v = r.bool(journal["enabled"], "journal.enabled") { c.journal.enabled = v }
        if let v = r.size(journal["max_bytes"], "journal.max_bytes", range: (1 << 20)...(1 << 50)) { c.journal.maxBytes = v }
        if let v = r.size(journal["segment_bytes"], "journal.segment_bytes", range: (64 << 10)...(4 << 30)) { c.journal.segmentBytes = v }
        if let v = r.duration(journal["max_commit_latency"], "journal.max_commit_latency", range: 0...1) {
            c.journal.maxCommitLatencySeconds = v
        }
        if let v = r.bool(journal["sync"], "journal.sync") { c.journal.sync = v }
        if let v = r.int(journal["dead_letter_limit"], "journal.dead_letter_limit", range: 1...10_000_000) {
            c.journal.deadLetterLimit = v
        }
        let telemetry = r.mapping(top["telemetry"], "telemetry", allowed: ["log_level", "metrics_require_token"])
        if let v = r.string(telemetry["log_level"], "telemetry.log_level") {
            if ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(v) {
                c.telemetry.logLevel = v
            } else {
                r.fail("telemetry.log_level", "must be one of trace, debug, info, notice, warning, error, critical", telemetry["log_level"])
            }
        }
        if let v = r.bool(telemetry["metrics_require_token"], "telemetry.metrics_require_token") {
            c.telemetry.metricsRequireToken = v
        }
        return c
    }

    static let filterKinds = ["source", "max_payload", "products", "devices", "rate_limit", "dedup"]

    static func readFilter(_ node: Node, _ path: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.FilterRule? {
        let m = r.mapping(node, path, allowed: filterKinds)
        guard m.count == 1, let (kind, body) = m.first else {
            if m.count > 1 {
                r.fail(path, "one filter per list item (found \(m.keys.sorted().joined(separator: ", ")))", node)
            } else if r.issues.isEmpty {
                r.fail(path, "name the filter: one of \(filterKinds.joined(separator: ", "))", node)
            }
            return nil
        }
        let p = "\(path).\(kind)"
        switch kind {
        case "source":
            let s = r.mapping(body, p, allowed: ["allow_channels", "deny_channels", "allow_cidrs", "deny_cidrs"])
            return .source(
                allowChannels: r.strings(s["allow_channels"], "\(p).allow_channels"),
                denyChannels: r.strings(s["deny_channels"], "\(p).deny_channels"),
                allowCIDRs: r.strings(s["allow_cidrs"], "\(p).allow_cidrs"),
                denyCIDRs: r.strings(s["deny_cidrs"], "\(p).deny_cidrs")
            )
        case "max_payload":
            return r.size(body, p, range: 1...(256 << 20)).map { .maxPayload(bytes: $0) }
        case "products", "devices":
            let s = r.mapping(body, p, allowed: ["allow", "deny"])
            let allow = r.strings(s["allow"], "\(p).allow")
            let deny = r.strings(s["deny"], "\(p).deny")
            return kind == "products" ? .products(allow: allow, deny: deny) : .devices(allow: allow, deny: deny)
        case "rate_limit":
            let s = r.mapping(body, p, allowed: ["scope", "rate", "burst", "max_keys"])
            var scope: SwitchyardConfiguration.RateScope?
            if let text = r.string(s["scope"], "\(p).scope") {
                scope = .init(rawValue: text)
                if scope == nil { r.fail("\(p).scope", "must be one of device, product, channel, global, got \"\(text)\"", s["scope"]) }
            } else {
                r.fail("\(p).scope", "missing: one of device, product, channel, global", body)
            }
            let rate = r.double(s["rate"], "\(p).rate", range: 0.001...10_000_000)
            if s["rate"] == nil { r.fail("\(p).rate", "missing: messages per second", body) }
            let burst = r.double(s["burst"], "\(p).burst", range: 1...100_000_000) ?? max(1, rate ?? 1)
            let maxKeys = r.int(s["max_keys"], "\(p).max_keys", range: 16...100_000_000) ?? 1_000_000
            guard let scope, let rate else { return nil }
            return .rateLimit(scope: scope, rate: rate, burst: burst, maxKeys: maxKeys)
        case "dedup":
            let s = r.mapping(body, p, allowed: ["window", "max_entries"])
            let window = r.duration(s["window"], "\(p).window", range: 0.001...86_400) ?? 60
            let max = r.int(s["max_entries"], "\(p).max_entries", range: 16...100_000_000) ?? 1_000_000
            return .dedup(windowSeconds: window, maxEntries: max)
        default:
            return nil
        }
    }

    static func readTag(_ node: Node, _ path: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.TagRule {
        var t = SwitchyardConfiguration.TagRule()
        let m = r.mapping(node, path, allowed: ["match", "set"])
        let match = r.mapping(m["match"], "\(path).match", allowed: ["topic", "product", "device", "field"])
        t.topic = r.string(match["topic"], "\(path).match.topic")
        t.products = r.strings(match["product"], "\(path).match.product")
        t.devices = r.strings(match["device"], "\(path).match.device")
        if match["field"] != nil {
            let f = r.mapping(match["field"], "\(path).match.field", allowed: ["name", "equals"])
            if let name = r.string(f["name"], "\(path).match.field.name") {
                t.field = .init(name: name, equals: r.string(f["equals"], "\(path).match.field.equals"))
            } else {
                r.fail("\(path).match.field.name", "missing: the top-level JSON field to read", match["field"])
            }
        }
        t.set = r.stringMap(m["set"], "\(path).set")
        if m["set"] == nil || t.set.isEmpty { r.fail("\(path).set", "missing: the tags to set, e.g. {kind: event}", node) }
        return t
    }

    typealias ListenerPath = WritableKeyPath<SwitchyardConfiguration.Listeners, String?>

    /// A TLS listener: host, port, PEM `cert` and `key` (both or neither, readable) and the
    /// `extra` keys (a path for PEM files, nil for keys the caller reads from the mapping returned).
    static func readTLSListener(
        _ node: Node?,
        _ name: String,
        extra: [String: ListenerPath?] = [:],
        into c: inout SwitchyardConfiguration,
        listener: WritableKeyPath<SwitchyardConfiguration.Listeners, SwitchyardConfiguration.Listener>,
        cert: ListenerPath,
        key: ListenerPath,
        _ r: inout ConfigReader
    ) -> [String: Node] {
        let path = "listeners.\(name)"
        let m = r.mapping(node, path, allowed: ["host", "port", "cert", "key"] + extra.keys.sorted())
        if let v = r.string(m["host"], "\(path).host") { c.listeners[keyPath: listener].host = v }
        if let v = r.int(m["port"], "\(path).port", range: 0...65535) { c.listeners[keyPath: listener].port = v }
        var files: [(String, ListenerPath)] = [("cert", cert), ("key", key)]
        for (k, p) in extra.sorted(by: { $0.key < $1.key }) { if let p { files.append((k, p)) } }
        for (k, keyPath) in files {
            guard let file = r.string(m[k], "\(path).\(k)") else { continue }
            if FileManager.default.isReadableFile(atPath: file) {
                c.listeners[keyPath: keyPath] = file
            } else {
                r.fail("\(path).\(k)", "cannot read \(file): give a PEM file this user can read", m[k])
            }
        }
        if (m["cert"] == nil) != (m["key"] == nil) {
            r.fail(path, "needs both cert (PEM certificate chain) and key (PEM private key)", node)
        }
        return m
    }

    static func readLane(_ node: Node, _ path: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.LaneRule {
        let m = r.mapping(node, path, allowed: ["name", "fallback", "entry"])
        var lane = SwitchyardConfiguration.LaneRule(name: r.string(m["name"], "\(path).name") ?? "")
        if m["name"] == nil { r.fail("\(path).name", "missing: every lane needs a name", node) }
        if let f = r.string(m["fallback"], "\(path).fallback") {
            if let v = SwitchyardConfiguration.LaneFallback(rawValue: f) {
                lane.fallback = v
            } else {
                r.fail("\(path).fallback", "must be baseline or strict, got \"\(f)\"", m["fallback"])
            }
        }
        let e = r.mapping(
            m["entry"],
            "\(path).entry",
            allowed: ["devices", "products", "tags", "percentage", "hash_key", "headers", "cookies", "params", "claims"]
        )
        if e.isEmpty {
            r.fail(
                "\(path).entry",
                "no entry rule: give devices, products, tags, percentage, headers, cookies, params or claims",
                m["entry"] ?? node
            )
        }
        lane.headers = readValueMatches(e["headers"], "\(path).entry.headers", lowercaseNames: true, &r)
        lane.cookies = readValueMatches(e["cookies"], "\(path).entry.cookies", lowercaseNames: false, &r)
        lane.params = readValueMatches(e["params"], "\(path).entry.params", lowercaseNames: false, &r)
        lane.claims = readValueMatches(e["claims"], "\(path).entry.claims", lowercaseNames: false, &r)
        lane.devices = r.strings(e["devices"], "\(path).entry.devices")
        lane.products = r.strings(e["products"], "\(path).entry.products")
        lane.tags = r.stringMap(e["tags"], "\(path).entry.tags")
        lane.percentage = r.double(e["percentage"], "\(path).entry.percentage", range: 0...100)
        if let key = r.string(e["hash_key"], "\(path).entry.hash_key") {
            switch key {
            case "device": lane.hashKey = .device
            case "product": lane.hashKey = .product
            case _ where key.hasPrefix("tag:") && key.count > 4: lane.hashKey = .tag(String(key.dropFirst(4)))
            case _ where key.hasPrefix("header:") && key.count > 7: lane.hashKey = .header(String(key.dropFirst(7)).lowercased())
            case _ where key.hasPrefix("cookie:") && key.count > 7: lane.hashKey = .cookie(String(key.dropFirst(7)))
            case _ where key.hasPrefix("param:") && key.count > 6: lane.hashKey = .param(String(key.dropFirst(6)))
            case _ where key.hasPrefix("claim:") && key.count > 6: lane.hashKey = .claim(String(key.dropFirst(6)))
            default:
                r.fail(
                    "\(path).entry.hash_key",
                    "must be device, product, tag:<name>, header:<name>, cookie:<name>, param:<name> or claim:<name>, got \"\(key)\"",
                    e["hash_key"]
                )
            }
        }
        return lane
    }

    static func readRoute(_ node: Node, _ path: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.RouteRule {
        let m = r.mapping(node, path, allowed: ["name", "match", "targets", "ttl"])
        var route = SwitchyardConfiguration.RouteRule(
            name: r.string(m["name"], "\(path).name") ?? "",
            match: r.string(m["match"], "\(path).match") ?? ""
        )
        if let v = r.duration(m["ttl"], "\(path).ttl", range: 0.001...(30 * 86_400)) { route.ttlSeconds = v }
        if m["name"] == nil { r.fail("\(path).name", "missing: every route needs a name (it labels metrics)", node) }
        if m["match"] == nil { r.fail("\(path).match", "missing: a topic regex such as ^devices/(?<product>[^/]+)/", node) }
        route.targets = r.sequence(m["targets"], "\(path).targets").enumerated().map { i, t in
            let p = "\(path).targets[\(i)]"
            let tm = r.mapping(
                t,
                p,
                allowed: ["service", "path", "method", "timeout", "retries", "backoff", "batch", "namespace", "group", "breaker"]
            )
            var target = SwitchyardConfiguration.TargetRule(service: r.string(tm["service"], "\(p).service") ?? "")
            if tm["breaker"] != nil { target.breaker = readBreaker(tm["breaker"], "\(p).breaker", &r) }
            if tm["service"] == nil { r.fail("\(p).service", "missing: the service to forward to", t) }
            if let v = r.string(tm["path"], "\(p).path") { target.path = v }
            if let v = r.string(tm["namespace"], "\(p).namespace") { target.namespace = v.isEmpty ? "public" : v }
            if let v = r.string(tm["group"], "\(p).group") { target.group = v.isEmpty ? "DEFAULT_GROUP" : v }
            if let v = r.string(tm["method"], "\(p).method") { target.method = v.uppercased() }
            if let v = r.duration(tm["timeout"], "\(p).timeout", range: 0.001...3600) { target.timeoutSeconds = v }
            if let v = r.int(tm["retries"], "\(p).retries", range: 0...20) { target.retries = v }
            if tm["backoff"] != nil {
                let b = r.mapping(tm["backoff"], "\(p).backoff", allowed: ["base", "max"])
                if let v = r.duration(b["base"], "\(p).backoff.base", range: 0.001...600) { target.backoffBaseSeconds = v }
                if let v = r.duration(b["max"], "\(p).backoff.max", range: 0.001...3600) { target.backoffMaxSeconds = v }
            }
            if tm["batch"] != nil {
                let b = r.mapping(tm["batch"], "\(p).batch", allowed: ["max", "linger", "format"])
                var batch = SwitchyardConfiguration.BatchRule()
                if let v = r.int(b["max"], "\(p).batch.max", range: 1...10_000) { batch.max = v }
                if let v = r.duration(b["linger"], "\(p).batch.linger", range: 0...1) { batch.lingerSeconds = v }
                if let f = r.string(b["format"], "\(p).batch.format") {
                    if let v = SwitchyardConfiguration.BatchFormat(rawValue: f) {
                        batch.format = v
                    } else {
                        r.fail("\(p).batch.format", "must be json or ndjson, got \"\(f)\"", b["format"])
                    }
                }
                target.batch = batch
            }
            return target
        }
        if m["targets"] == nil { r.fail("\(path).targets", "missing: at least one target {service, path}", node) }
        return route
    }

    static func readService(_ node: Node, _ path: String, _ r: inout ConfigReader) -> SwitchyardConfiguration.ServiceRule {
        let m = r.mapping(node, path, allowed: ["instances", "max_concurrency", "circuit"])
        var s = SwitchyardConfiguration.ServiceRule()
        if let v = r.int(m["max_concurrency"], "\(path).max_concurrency", range: 1...100_000) { s.maxConcurrency = v }
        if m["circuit"] != nil {
            let c = r.mapping(m["circuit"], "\(path).circuit", allowed: ["failures", "open_for", "max_open_for"])
            if let v = r.int(c["failures"], "\(path).circuit.failures", range: 0...10_000) { s.circuit.failures = v }
            if let v = r.duration(c["open_for"], "\(path).circuit.open_for", range: 0.01...3600) { s.circuit.openSeconds = v }
            if let v = r.duration(c["max_open_for"], "\(path).circuit.max_open_for", range: 0.01...86_400) { s.circuit.maxOpenSeconds = v }
            if s.circuit.maxOpenSeconds < s.circuit.openSeconds {
                r.fail("\(path).circuit.max_open_for", "must not be below open_for", c["max_open_for"])
            }
        }
        s.instances = r.sequence(m["instances"], "\(path).instances").enumerated().map { i, n in
            let p = "\(path).instances[\(i)]"
            let im = r.mapping(n, p, allowed: ["url", "weight", "lane"])
            var inst = SwitchyardConfiguration.StaticInstance(url: r.string(im["url"], "\(p).url") ?? "")
            if im["url"] == nil { r.fail("\(p).url", "missing: http://host:port", n) }
            if let v = r.int(im["weight"], "\(p).weight", range: 0...10_000) { inst.weight = v }
            inst.lane = r.string(im["lane"], "\(p).lane")
            return inst
        }
        return s
    }

    // MARK: - Cross-field validation

    static func validate(_ c: SwitchyardConfiguration, _ r: inout ConfigReader) {
        for (i, p) in c.channels.devicePatterns.enumerated() {
            do { _ = try TopicPattern(p) } catch { r.fail("channels.device_patterns[\(i)]", error.message, nil) }
        }
        for (i, f) in c.filters.enumerated() {
            if case .source(_, _, let allow, let deny) = f {
                for (j, cidr) in allow.enumerated() where (try? CIDR(cidr)) == nil {
                    r.fail("filters[\(i)].source.allow_cidrs[\(j)]", "\"\(cidr)\" is not an address or network like 10.0.0.0/8", nil)
                }
                for (j, cidr) in deny.enumerated() where (try? CIDR(cidr)) == nil {
                    r.fail("filters[\(i)].source.deny_cidrs[\(j)]", "\"\(cidr)\" is not an address or network like 10.0.0.0/8", nil)
                }
            }
        }
        for (i, t) in c.tags.enumerated() {
            if let topic = t.topic {
                do { _ = try TopicRegex(topic) } catch { r.fail("tags[\(i)].match.topic", error.description, nil) }
            }
        }
        var laneNames: Set<String> = []
        for (i, lane) in c.lanes.enumerated() where !lane.name.isEmpty {
            if lane.name == "baseline" {
                r.fail("lanes[\(i)].name", "\"baseline\" is implicit (messages in no lane); choose another name", nil)
            } else if !lane.name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) {
                r.fail("lanes[\(i)].name", "use letters, digits, - and _ only (it travels in headers)", nil)
            } else if !laneNames.insert(lane.name).inserted {
                r.fail("lanes[\(i)].name", "lane \"\(lane.name)\" is declared twice", nil)
            }
        }
        if !c.registry.enabled && c.registry.configDataID != nil {
            r.fail("registry.config", "the config center is off (registry.enabled: false)", nil)
        }
        if c.registry.enabled, c.registry.auth == .off, !SwitchyardConfiguration.Registry.isLoopback(c.listeners.nacos.host) {
            r.fail(
                "registry.auth",
                "off is allowed only while listeners.nacos is bound to loopback (it is \(c.listeners.nacos.host)); use on or auto",
                nil
            )
        }
        var registryBindings: [String: String] = [:]
        for (i, route) in c.routes.enumerated() {
            for (j, t) in route.targets.enumerated() where c.services[t.service] == nil && !t.service.isEmpty {
                let at = "\(t.namespace)/\(t.group)"
                if let other = registryBindings.updateValue(at, forKey: t.service), other != at {
                    r.fail(
                        "routes[\(i)].targets[\(j)]",
                        "service \"\(t.service)\" is looked up in \(other) by another target and in \(at) here; one name, one place",
                        nil
                    )
                }
            }
        }
        validateGateway(c, &r)
        var routeNames: Set<String> = []
        for (i, route) in c.routes.enumerated() {
            if !route.name.isEmpty && !routeNames.insert(route.name).inserted {
                r.fail("routes[\(i)].name", "route \"\(route.name)\" is declared twice", nil)
            }
            var captures: [String] = []
            if !route.match.isEmpty {
                do {
                    captures = try TopicRegex(route.match).captureNames
                } catch {
                    r.fail("routes[\(i)].match", error.description, nil)
                }
            }
            if route.targets.isEmpty { r.fail("routes[\(i)].targets", "needs at least one target", nil) }
            for (j, t) in route.targets.enumerated() {
                let p = "routes[\(i)].targets[\(j)]"
                if !t.service.isEmpty && c.services[t.service] == nil && !c.registry.enabled {
                    let known = c.services.keys.sorted()
                    r.fail(
                        "\(p).service",
                        "unknown service \"\(t.service)\"; define it under services (or turn the registry on)"
                            + (known.isEmpty ? "" : " (defined: \(known.joined(separator: ", ")))"),
                        nil
                    )
                }
                if !t.path.hasPrefix("/") { r.fail("\(p).path", "must start with \"/\"", nil) }
                if t.batch != nil, !PathTemplate.placeholders(in: t.path).isEmpty {
                    r.fail("\(p).path", "a batched target's path cannot use placeholders: one request carries many messages", nil)
                }
                for name in PathTemplate.placeholders(in: t.path) where !captures.contains(name) && !PathTemplate.builtins.contains(name) {
                    r.fail(
                        "\(p).path",
                        "{\(name)} is neither a named capture of the route's match nor one of \(PathTemplate.builtins.sorted().joined(separator: ", "))",
                        nil
                    )
                }
                if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(t.method) {
                    r.fail("\(p).method", "must be POST, PUT, PATCH, DELETE or GET", nil)
                }
                if t.backoffMaxSeconds < t.backoffBaseSeconds { r.fail("\(p).backoff.max", "must not be below backoff.base", nil) }
            }
        }
        for (name, service) in c.services.sorted(by: { $0.key < $1.key }) {
            for (i, inst) in service.instances.enumerated() where !inst.url.isEmpty {
                if ServiceInstance(service: name, url: inst.url) == nil {
                    r.fail("services.\(name).instances[\(i)].url", "\"\(inst.url)\" is not a URL like http://127.0.0.1:9001", nil)
                }
                if let lane = inst.lane, lane != "baseline", !laneNames.contains(lane) {
                    r.fail("services.\(name).instances[\(i)].lane", "lane \"\(lane)\" is not declared under lanes", nil)
                }
            }
        }
    }
}
