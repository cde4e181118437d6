// Registry: the naming side of the registry — namespaces, groups, services, clusters and
// instances with Nacos semantics (ephemeral instances live by beats, persistent ones are
// health-checked by the server, a protection threshold per service), kept in memory and
// written through to a `RegistryStore`.

/// A service's full name: namespace (tenant), group and name.
public struct ServiceName: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let defaultNamespace = "public"
    public static let defaultGroup = "DEFAULT_GROUP"

    public var namespace: String
    public var group: String
    public var name: String

    public init(namespace: String = ServiceName.defaultNamespace, group: String = ServiceName.defaultGroup, name: String) {
        self.namespace = namespace.isEmpty ? Self.defaultNamespace : namespace
        self.group = group.isEmpty ? Self.defaultGroup : group
        self.name = name
    }

    /// `group@@name`, as Nacos writes it on the wire.
    public var grouped: String { "\(group)@@\(name)" }
    public var description: String { "\(namespace)/\(grouped)" }

    public static func < (a: ServiceName, b: ServiceName) -> Bool {
        (a.namespace, a.group, a.name) < (b.namespace, b.group, b.name)
    }
}

/// One instance of a service, as registered.
public struct Instance: Sendable, Equatable {
    public static let defaultCluster = "DEFAULT"

    public var ip: String
    public var port: Int
    public var cluster: String
    public var weight: Double
    public var healthy: Bool
    public var enabled: Bool
    /// Ephemeral instances live by client beats; persistent ones stay until deregistered.
    public var ephemeral: Bool
    public var metadata: [String: String]

    public init(
        ip: String,
        port: Int,
        cluster: String = Instance.defaultCluster,
        weight: Double = 1,
        healthy: Bool = true,
        enabled: Bool = true,
        ephemeral: Bool = true,
        metadata: [String: String] = [:]
    ) {
        self.ip = ip
        self.port = port
        self.cluster = cluster.isEmpty ? Self.defaultCluster : cluster
        self.weight = weight
        self.healthy = healthy
        self.enabled = enabled
        self.ephemeral = ephemeral
        self.metadata = metadata
    }

    /// Where the instance is: cluster, ip and port identify it within its service.
    public var address: InstanceAddress { InstanceAddress(cluster: cluster, ip: ip, port: port) }

    /// Beat timing in milliseconds: Nacos' defaults, overridden per instance by the
    /// `preserved.heart.beat.interval|timeout` and `preserved.ip.delete.timeout` metadata.
    public var beatIntervalMillis: Int { metadataMillis("preserved.heart.beat.interval") ?? 5_000 }
    public var beatTimeoutMillis: Int { metadataMillis("preserved.heart.beat.timeout") ?? 15_000 }
    public var deleteTimeoutMillis: Int { metadataMillis("preserved.ip.delete.timeout") ?? 30_000 }

    private func metadataMillis(_ key: String) -> Int? {
        guard let text = metadata[key], let value = Int(text), value > 0 else { return nil }
        return value
    }
}

/// Identifies an instance within its service.
public struct InstanceAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var cluster: String
    public var ip: String
    public var port: Int

    public init(cluster: String = Instance.defaultCluster, ip: String, port: Int) {
        self.cluster = cluster.isEmpty ? Instance.defaultCluster : cluster
        self.ip = ip
        self.port = port
    }

    public var description: String { "\(ip):\(port)@\(cluster)" }
    /// Nacos' instance id: `ip#port#cluster#group@@service`.
    public func instanceID(in service: ServiceName) -> String { "\(ip)#\(port)#\(cluster)#\(service.grouped)" }

    public static func < (a: InstanceAddress, b: InstanceAddress) -> Bool { (a.cluster, a.ip, a.port) < (b.cluster, b.ip, b.port) }
}

/// A service's own settings (it exists without instances once created explicitly).
public struct ServiceSettings: Sendable, Equatable {
    public var name: ServiceName
    /// 0…1: when the healthy share of instances is at or below it, lists return every
    /// instance (unhealthy ones too) rather than overload the few healthy ones. 0: off.
    public var protectThreshold: Double
    public var metadata: [String: String]
    public var selector: String?

    public init(name: ServiceName, protectThreshold: Double = 0, metadata: [String: String] = [:], selector: String? = nil) {
        self.name = name
        self.protectThreshold = protectThreshold
        self.metadata = metadata
        self.selector = selector
    }
}

/// What a list of a service returns.
public struct ServiceView: Sendable, Equatable {
    public var name: ServiceName
    public var hosts: [Instance]
    /// The protection threshold was reached: unhealthy instances are included.
    public var reachedProtectionThreshold: Bool
    /// Wall-clock milliseconds of the service's last change.
    public var lastChangedMillis: Int64
    public var exists: Bool
}

/// A namespace (tenant). `public` always exists.
public struct Namespace: Sendable, Equatable {
    public var id: String
    public var name: String
    public var description: String
    public init(id: String, name: String, description: String = "") {
        self.id = id
        self.name = name
        self.description = description
    }
}

/// A user of the registry API (credentials stored as a salted digest) and what it may do.
public struct RegistryUser: Sendable, Equatable {
    public var username: String
    /// `pbkdf2-sha256$iterations$salt$digest` (base64 parts).
    public var passwordHash: String
    /// May do everything, in every namespace (and manage users and namespaces).
    public var admin: Bool
    /// Namespace id → access. Config tenant "" and naming `public` are the same namespace.
    public var permissions: [String: Access]

    public init(username: String, passwordHash: String, admin: Bool = false, permissions: [String: Access] = [:]) {
        self.username = username
        self.passwordHash = passwordHash
        self.admin = admin
        self.permissions = permissions
    }

    public enum Access: String, Sendable, Equatable, CaseIterable {
        case read = "r"
        case write = "w"
        case readWrite = "rw"
        public var canRead: Bool { self != .write }
        public var canWrite: Bool { self != .read }
    }
}

/// An error the registry reports to its caller (the API turns it into a status and message).
public struct RegistryError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case notFound, conflict, invalid, storage
    }
    public var kind: Kind
    public var message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}
