// SQLiteStore: the registry and config center on one SQLite file (GRDB, WAL mode) in the
// data dir. The only module that imports GRDB.
public import ConfigCenter
import Foundation
import GRDB
public import Registry

/// `<data dir>/registry.sqlite`: namespaces, services, persistent instances, users, configs
/// and config history. Every write is one transaction; WAL lets reads run beside it.
public final class SQLiteStore: RegistryStore, ConfigStore {
    public let path: String
    private let db: DatabasePool

    public init(path: String) throws {
        self.path = path
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        // The database and its WAL and shared-memory files hold password digests and configs:
        // owner only, from their first byte (SQLite keeps the mode of files that exist).
        for file in [path, path + "-wal", path + "-shm"] where !FileManager.default.fileExists(atPath: file) {
            FileManager.default.createFile(atPath: file, contents: nil, attributes: [.posixPermissions: 0o600])
        }
        var config = Configuration()
        config.busyMode = .timeout(5)
        db = try DatabasePool(path: path, configuration: config)  // a pool runs in WAL mode
        try Self.migrator.migrate(db)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE namespaces (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL);
                    CREATE TABLE services (
                        namespace TEXT NOT NULL, grp TEXT NOT NULL, name TEXT NOT NULL,
                        protect_threshold REAL NOT NULL, metadata TEXT NOT NULL, selector TEXT,
                        PRIMARY KEY (namespace, grp, name));
                    CREATE TABLE instances (
                        namespace TEXT NOT NULL, grp TEXT NOT NULL, service TEXT NOT NULL, cluster TEXT NOT NULL,
                        ip TEXT NOT NULL, port INTEGER NOT NULL, weight REAL NOT NULL, healthy INTEGER NOT NULL,
                        enabled INTEGER NOT NULL, metadata TEXT NOT NULL,
                        PRIMARY KEY (namespace, grp, service, cluster, ip, port));
                    CREATE TABLE users (
                        username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, admin INTEGER NOT NULL, permissions TEXT NOT NULL);
                    CREATE TABLE configs (
                        tenant TEXT NOT NULL, grp TEXT NOT NULL, data_id TEXT NOT NULL,
                        content TEXT NOT NULL, md5 TEXT NOT NULL, type TEXT NOT NULL, app_name TEXT NOT NULL,
                        modified_ms INTEGER NOT NULL, revision INTEGER NOT NULL,
                        beta_ips TEXT, beta_content TEXT,
                        PRIMARY KEY (tenant, grp, data_id));
                    CREATE TABLE config_history (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        tenant TEXT NOT NULL, grp TEXT NOT NULL, data_id TEXT NOT NULL,
                        content TEXT NOT NULL, md5 TEXT NOT NULL, type TEXT NOT NULL, app_name TEXT NOT NULL,
                        op TEXT NOT NULL, release TEXT NOT NULL, beta_ips TEXT NOT NULL,
                        src_ip TEXT NOT NULL, src_user TEXT NOT NULL, created_ms INTEGER NOT NULL);
                    CREATE INDEX config_history_key ON config_history (tenant, grp, data_id, id);
                    """
            )
        }
        return m
    }

    // MARK: - RegistryStore

    public func loadRegistry() throws -> RegistryContents {
        try db.read { db in
            var c = RegistryContents()
            c.namespaces = try Row.fetchAll(db, sql: "SELECT id, name, description FROM namespaces ORDER BY id").map {
                Namespace(id: $0["id"], name: $0["name"], description: $0["description"])
            }
            c.services = try Row.fetchAll(db, sql: "SELECT * FROM services ORDER BY namespace, grp, name").map { row in
                ServiceSettings(
                    name: ServiceName(namespace: row["namespace"], group: row["grp"], name: row["name"]),
                    protectThreshold: row["protect_threshold"],
                    metadata: Self.decodeMap(row["metadata"]),
                    selector: row["selector"]
                )
            }
            c.instances = try Row.fetchAll(db, sql: "SELECT * FROM instances ORDER BY namespace, grp, service, cluster, ip, port").map { row in
                StoredInstance(
                    service: ServiceName(namespace: row["namespace"], group: row["grp"], name: row["service"]),
                    instance: Instance(
                        ip: row["ip"],
                        port: row["port"],
                        cluster: row["cluster"],
                        weight: row["weight"],
                        healthy: row["healthy"],
                        enabled: row["enabled"],
                        ephemeral: false,
                        metadata: Self.decodeMap(row["metadata"])
                    )
                )
            }
            c.users = try Row.fetchAll(db, sql: "SELECT * FROM users ORDER BY username").map { row in
                var permissions: [String: RegistryUser.Access] = [:]
                for (ns, access) in Self.decodeMap(row["permissions"]) { permissions[ns] = RegistryUser.Access(rawValue: access) }
                return RegistryUser(username: row["username"], passwordHash: row["password_hash"], admin: row["admin"], permissions: permissions)
            }
            return c
        }
    }

    public func save(namespace: Namespace) throws {
        try db.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO namespaces (id, name, description) VALUES (?, ?, ?)",
                arguments: [namespace.id, namespace.name, namespace.description]
            )
        }
    }

    public func deleteNamespace(id: String) throws {
        try db.write { db in try db.execute(sql: "DELETE FROM namespaces WHERE id = ?", arguments: [id]) }
    }

    public func save(service: ServiceSettings) throws {
        try db.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO services (namespace, grp, name, protect_threshold, metadata, selector) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [
                    service.name.namespace, service.name.group, service.name.name, service.protectThreshold, Self.encodeMap(service.metadata),
                    service.selector,
                ]
            )
        }
    }

    public func deleteService(_ name: ServiceName) throws {
        try db.write { db in
            try db.execute(
                sql: "DELETE FROM services WHERE namespace = ? AND grp = ? AND name = ?",
                arguments: [name.namespace, name.group, name.name]
            )
        }
    }

    public func save(instance: Instance, of service: ServiceName) throws {
        try db.write { db in
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO instances (namespace, grp, service, cluster, ip, port, weight, healthy, enabled, metadata)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    service.namespace, service.group, service.name, instance.cluster, instance.ip, instance.port, instance.weight,
                    instance.healthy, instance.enabled, Self.encodeMap(instance.metadata),
                ]
            )
        }
    }

    public func deleteInstance(_ address: InstanceAddress, of service: ServiceName) throws {
        try db.write { db in
            try db.execute(
                sql: "DELETE FROM instances WHERE namespace = ? AND grp = ? AND service = ? AND cluster = ? AND ip = ? AND port = ?",
                arguments: [service.namespace, service.group, service.name, address.cluster, address.ip, address.port]
            )
        }
    }

    public func save(user: RegistryUser) throws {
        var permissions: [String: String] = [:]
        for (ns, access) in user.permissions { permissions[ns] = access.rawValue }
        try db.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO users (username, password_hash, admin, permissions) VALUES (?, ?, ?, ?)",
                arguments: [user.username, user.passwordHash, user.admin, Self.encodeMap(permissions)]
            )
        }
    }

    public func deleteUser(username: String) throws {
        try db.write { db in try db.execute(sql: "DELETE FROM users WHERE username = ?", arguments: [username]) }
    }

    // MARK: - ConfigStore

    public func loadConfigs() throws -> [ConfigItem] {
        try db.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM configs ORDER BY tenant, grp, data_id").map { row in
                let key = ConfigKey(tenant: row["tenant"], group: row["grp"], dataId: row["data_id"])
                var item = ConfigItem(
                    key: key,
                    content: row["content"],
                    type: row["type"],
                    appName: row["app_name"],
                    lastModifiedMillis: row["modified_ms"],
                    revision: row["revision"]
                )
                item.md5 = row["md5"]  // "" for a config that exists only as a beta
                if let ips: String = row["beta_ips"], let content: String = row["beta_content"] {
                    item.beta = BetaRelease(ips: Self.decodeList(ips), content: content)
                }
                return item
            }
        }
    }

    public func commit(_ item: ConfigItem?, key: ConfigKey, revision: ConfigRevision) throws -> Int64 {
        try db.write { db in
            try db.execute(
                sql: """
                    INSERT INTO config_history (tenant, grp, data_id, content, md5, type, app_name, op, release, beta_ips, src_ip, src_user, created_ms)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    key.tenant, key.group, key.dataId, revision.content, revision.md5, revision.type, revision.appName, revision.operation.rawValue,
                    revision.release.rawValue, Self.encodeList(revision.betaIPs), revision.sourceIP, revision.sourceUser, revision.createdMillis,
                ]
            )
            let id = db.lastInsertedRowID
            if let item {
                try db.execute(
                    sql: """
                        INSERT OR REPLACE INTO configs (tenant, grp, data_id, content, md5, type, app_name, modified_ms, revision, beta_ips, beta_content)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        key.tenant, key.group, key.dataId, item.content, item.md5, item.type, item.appName, item.lastModifiedMillis, id,
                        item.beta.map { Self.encodeList($0.ips) }, item.beta?.content,
                    ]
                )
            } else {
                try db.execute(
                    sql: "DELETE FROM configs WHERE tenant = ? AND grp = ? AND data_id = ?",
                    arguments: [key.tenant, key.group, key.dataId]
                )
            }
            return id
        }
    }

    public func history(of key: ConfigKey, offset: Int, limit: Int) throws -> (total: Int, revisions: [ConfigRevision]) {
        try db.read { db in
            let args: StatementArguments = [key.tenant, key.group, key.dataId]
            let total =
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM config_history WHERE tenant = ? AND grp = ? AND data_id = ?", arguments: args) ?? 0
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT * FROM config_history WHERE tenant = ? AND grp = ? AND data_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                arguments: [key.tenant, key.group, key.dataId, limit, offset]
            )
            return (total, rows.map(Self.revision))
        }
    }

    public func revision(id: Int64) throws -> ConfigRevision? {
        try db.read { db in try Row.fetchOne(db, sql: "SELECT * FROM config_history WHERE id = ?", arguments: [id]).map(Self.revision) }
    }

    static func revision(_ row: Row) -> ConfigRevision {
        ConfigRevision(
            id: row["id"],
            key: ConfigKey(tenant: row["tenant"], group: row["grp"], dataId: row["data_id"]),
            content: row["content"],
            type: row["type"],
            appName: row["app_name"],
            operation: ConfigRevision.Operation(rawValue: row["op"]) ?? .update,
            release: ConfigRevision.Release(rawValue: row["release"]) ?? .formal,
            betaIPs: decodeList(row["beta_ips"]),
            sourceIP: row["src_ip"],
            sourceUser: row["src_user"],
            createdMillis: row["created_ms"]
        )
    }

    // MARK: - Encoding of small maps and lists (JSON text columns)

    static func encodeMap(_ map: [String: String]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: map, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func decodeMap(_ text: String?) -> [String: String] {
        guard let text, let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: String] else { return [:] }
        return object
    }

    static func encodeList(_ list: [String]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: list) else { return "[]" }
        return String(decoding: data, as: UTF8.self)
    }

    static func decodeList(_ text: String?) -> [String] {
        guard let text, let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String] else { return [] }
        return object
    }
}
