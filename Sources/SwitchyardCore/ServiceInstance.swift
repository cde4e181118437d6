/// One reachable instance of a service. `lane == nil` is the baseline.
public struct ServiceInstance: Sendable, Hashable, CustomStringConvertible {
    public let service: String
    public let host: String
    public let port: Int
    /// Path prefix from the instance URL, without a trailing slash ("" when none).
    public var basePath: String
    public var weight: Int
    public var lane: String?
    public var metadata: [String: String]

    public init(
        service: String,
        host: String,
        port: Int,
        basePath: String = "",
        weight: Int = 100,
        lane: String? = nil,
        metadata: [String: String] = [:]
    ) {
        self.service = service
        self.host = host
        self.port = port
        self.basePath = basePath
        self.weight = weight
        self.lane = lane
        self.metadata = metadata
        address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        key = "\(service)@\(address)"
    }

    /// `host:port` (brackets around IPv6), also the `host` header sent to it.
    public let address: String
    /// `service@host:port`: identifies the instance in pools and load counters.
    public let key: String
    public var url: String { "http://\(address)\(basePath)" }
    /// In no lane, or in `baseline` by name.
    public var isBaseline: Bool { lane == nil || lane == "baseline" }
    public var description: String { url }

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
}

/// A fixed directory (static config, tests).
public struct StaticServiceDirectory: ServiceDirectory {
    public var services: [String: [ServiceInstance]]
    public init(_ services: [String: [ServiceInstance]]) { self.services = services }
    public func instances(of service: String) -> [ServiceInstance] { services[service] ?? [] }
}
