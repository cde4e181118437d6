// ConfigCenter: configs by tenant, group and dataId with Nacos semantics — MD5 per content,
// publish with optional compare-and-set, a history row for every change, rollback to a
// revision, beta release to listed client IPs, and long-poll listeners woken the moment
// what they would read changes.
import Crypto

/// Identifies a config. Tenant `""` is the public namespace (`public` is accepted and mapped to it).
public struct ConfigKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var tenant: String
    public var group: String
    public var dataId: String

    public init(tenant: String = "", group: String = "DEFAULT_GROUP", dataId: String) {
        self.tenant = tenant == "public" ? "" : tenant
        self.group = group.isEmpty ? "DEFAULT_GROUP" : group
        self.dataId = dataId
    }

    public var description: String { "\(tenant.isEmpty ? "public" : tenant)/\(group)/\(dataId)" }
    /// The namespace id as the naming side and permissions name it.
    public var namespace: String { tenant.isEmpty ? "public" : tenant }

    public static func < (a: ConfigKey, b: ConfigKey) -> Bool { (a.tenant, a.group, a.dataId) < (b.tenant, b.group, b.dataId) }
}

/// A config's current state.
public struct ConfigItem: Sendable, Equatable {
    public var key: ConfigKey
    public var content: String
    public var md5: String
    /// `text`, `json`, `yaml`, `properties`, `xml`, `html` (Nacos' types; free text accepted).
    public var type: String
    public var appName: String
    public var lastModifiedMillis: Int64
    /// The history revision that made this content.
    public var revision: Int64
    /// Content served instead to the listed client IPs until the beta is stopped.
    public var beta: BetaRelease?

    public init(
        key: ConfigKey,
        content: String,
        type: String = "text",
        appName: String = "",
        lastModifiedMillis: Int64 = 0,
        revision: Int64 = 0,
        beta: BetaRelease? = nil
    ) {
        self.key = key
        self.content = content
        self.md5 = ConfigItem.md5(content)
        self.type = type
        self.appName = appName
        self.lastModifiedMillis = lastModifiedMillis
        self.revision = revision
        self.beta = beta
    }

    /// Hex MD5 of the UTF-8 content (what Nacos clients compare).
    public static func md5(_ content: String) -> String { MD5Hex.of(Array(content.utf8)) }
}

/// A beta (gray) release of a config to some client IPs.
public struct BetaRelease: Sendable, Equatable {
    public var ips: [String]
    public var content: String
    public var md5: String
    public init(ips: [String], content: String) {
        self.ips = ips
        self.content = content
        self.md5 = ConfigItem.md5(content)
    }
}

/// One change of a config, as kept in its history. `content` is the content after the change
/// (for a deletion: the content that was deleted), so rolling back to a revision restores it.
public struct ConfigRevision: Sendable, Equatable {
    public enum Operation: String, Sendable, Equatable {
        case insert = "I"
        case update = "U"
        case delete = "D"
    }
    public enum Release: String, Sendable, Equatable {
        case formal
        case beta
    }

    public var id: Int64
    public var key: ConfigKey
    public var content: String
    public var md5: String
    public var type: String
    public var appName: String
    public var operation: Operation
    public var release: Release
    public var betaIPs: [String]
    public var sourceIP: String
    public var sourceUser: String
    public var createdMillis: Int64

    public init(
        id: Int64 = 0,
        key: ConfigKey,
        content: String,
        type: String,
        appName: String = "",
        operation: Operation,
        release: Release = .formal,
        betaIPs: [String] = [],
        sourceIP: String = "",
        sourceUser: String = "",
        createdMillis: Int64
    ) {
        self.id = id
        self.key = key
        self.content = content
        self.md5 = ConfigItem.md5(content)
        self.type = type
        self.appName = appName
        self.operation = operation
        self.release = release
        self.betaIPs = betaIPs
        self.sourceIP = sourceIP
        self.sourceUser = sourceUser
        self.createdMillis = createdMillis
    }
}

public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case notFound, invalid, storage
    }
    public var kind: Kind
    public var message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}

enum MD5Hex {
    static func of(_ bytes: [UInt8]) -> String {
        Insecure.MD5.hash(data: bytes).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}
