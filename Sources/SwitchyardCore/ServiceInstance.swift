/// One reachable instance of a service. `lane == nil` is the baseline.
public struct ServiceInstance: Sendable, Hashable, CustomStringConvertible {
    /// The fields, shared by copies: a copy retains one object, not each String (an instance
    /// is copied several times per request on the gateway's path). A change makes new fields.
    private final class Fields: Sendable {
        /// The service's name, `host:port` and `service@host:port`, each with its hash (looked
        /// up per request).
        let hashedService: HashedKey
        let hashedAddress: HashedKey
        let hashedKey: HashedKey
        let host: String
        let port: Int
        let basePath: String
        let weight: Int
        let lane: String?
        let metadata: [String: String]
        var service: String { hashedService.text }

        init(service: String, host: String, port: Int, basePath: String, weight: Int, lane: String?, metadata: [String: String]) {
            hashedService = HashedKey(service)
            self.host = host
            self.port = port
            self.basePath = basePath
            self.weight = weight
            self.lane = lane
            self.metadata = metadata
            let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            hashedAddress = HashedKey(address)
            hashedKey = HashedKey("\(service)@\(address)")
        }

        func with(basePath: String? = nil, weight: Int? = nil, lane: String?? = nil, metadata: [String: String]? = nil) -> Fields {
            Fields(
                service: service,
                host: host,
                port: port,
                basePath: basePath ?? self.basePath,
                weight: weight ?? self.weight,
                lane: lane ?? self.lane,
                metadata: metadata ?? self.metadata
            )
        }
    }

    private var fields: Fields

    public var service: String { fields.service }
    public var host: String { fields.host }
    public var port: Int { fields.port }
    /// Path prefix from the instance URL, without a trailing slash ("" when none).
    public var basePath: String {
        get { fields.basePath }
        set { fields = fields.with(basePath: newValue) }
    }
    public var weight: Int {
        get { fields.weight }
        set { fields = fields.with(weight: newValue) }
    }
    public var lane: String? {
        get { fields.lane }
        set { fields = fields.with(lane: .some(newValue)) }
    }
    public var metadata: [String: String] {
        get { fields.metadata }
        set { fields = fields.with(metadata: newValue) }
    }

    public init(
        service: String,
        host: String,
        port: Int,
        basePath: String = "",
        weight: Int = 100,
        lane: String? = nil,
        metadata: [String: String] = [:]
    ) {
        fields = Fields(service: service, host: host, port: port, basePath: basePath, weight: weight, lane: lane, metadata: metadata)
    }

    /// `host:port` (brackets around IPv6), also the `host` header sent to it.
    public var address: String { fields.hashedAddress.text }
    /// `service@host:port`: identifies the instance in pools and load counters.
    public var key: String { fields.hashedKey.text }
    /// `key`, `service` and `address` with their hashes.
    public var hashedKey: HashedKey { fields.hashedKey }
    public var hashedService: HashedKey { fields.hashedService }
    public var hashedAddress: HashedKey { fields.hashedAddress }
    public var url: String { "http://\(address)\(basePath)" }
    /// In no lane, or in `baseline` by name.
    public var isBaseline: Bool { lane == nil || lane == "baseline" }
    public var description: String { url }

    public static func == (lhs: ServiceInstance, rhs: ServiceInstance) -> Bool {
        let (a, b) = (lhs.fields, rhs.fields)
        return a === b
            || (a.service == b.service && a.host == b.host && a.port == b.port && a.basePath == b.basePath && a.weight == b.weight
                && a.lane == b.lane && a.metadata == b.metadata)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(service)
        hasher.combine(host)
        hasher.combine(port)
        hasher.combine(basePath)
        hasher.combine(weight)
        hasher.combine(lane)
        hasher.combine(metadata)
    }

    /// Parses `http://host:port[/base]`. Returns nil with anything else (https arrives with TLS).
    public init?(service: String, url: String, weight: Int = 100, lane: String? = nil, metadata: [String: String] = [:]) {
        guard url.hasPrefix("http://") else { return nil }
        var rest = Substring(url.dropFirst("http://".count))
        var base = ""
        if let slash = rest.firstIndex(of: "/") {
            base = String(rest[slash...])
            rest = rest[..<slash]
            while base.hasSuffix("/") { base.removeLast() }
        }
        let host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { return nil }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            host = rest
        }
        guard !host.isEmpty else { return nil }
        let port = portText.map { Int($0) } ?? 80
        guard let port, (1...65535).contains(port) else { return nil }
        self.init(service: service, host: String(host), port: port, basePath: base, weight: weight, lane: lane, metadata: metadata)
    }
}

/// Where the router finds the instances of a service. The config's static `services`
/// section implements it now; the registry plugs in later without touching the router.
public protocol ServiceDirectory: Sendable {
    func instances(of service: String) -> [ServiceInstance]
    /// `instances(of: service)` bound to the one service: made once (a gateway route, per
    /// configuration), called per request. A directory that can find the service ahead returns
    /// a closure that looks nothing up by name.
    func source(of service: String) -> @Sendable () -> [ServiceInstance]
}

extension ServiceDirectory {
    public func source(of service: String) -> @Sendable () -> [ServiceInstance] {
        { self.instances(of: service) }
    }
}

/// A fixed directory (static config, tests).
public struct StaticServiceDirectory: ServiceDirectory {
    public var services: [String: [ServiceInstance]]
    public init(_ services: [String: [ServiceInstance]]) { self.services = services }
    public func instances(of service: String) -> [ServiceInstance] { services[service] ?? [] }
}
