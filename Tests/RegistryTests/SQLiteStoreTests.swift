import ConfigCenter
import Foundation
import Registry
import SQLiteStore
import SwitchyardTesting
import Testing

@Suite struct SQLiteStoreTests {
    static func temporaryPath() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("registry-\(UUID().uuidString)/registry.sqlite").path
    }

    @Test func registryAndConfigsSurviveReopeningTheFile() throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let key = ConfigKey(tenant: "dev", group: "G", dataId: "app.yaml")
        let orders = ServiceName(namespace: "dev", name: "orders")
        do {
            let store = try SQLiteStore(path: path)
            let registry = try Registry(store: store, clock: ManualClock())
            try registry.createNamespace(Namespace(id: "dev", name: "Development", description: "team dev"))
            try registry.createService(ServiceSettings(name: orders, protectThreshold: 0.3, metadata: ["owner": "iot"]))
            try registry.register(Instance(ip: "10.0.0.1", port: 80, weight: 2, ephemeral: false, metadata: ["lane": "gray"]), in: orders)
            try registry.register(Instance(ip: "10.0.0.2", port: 80), in: orders)  // ephemeral: not kept
            try registry.save(user: RegistryUser(username: "ops", passwordHash: "h", permissions: ["dev": .readWrite]))
            let center = try ConfigCenter(store: store)
            try center.publish(key, content: "a: 1\n", type: "yaml", source: .init(ip: "10.9.9.9", user: "ops"))
            try center.publish(key, content: "a: 2\n")
            try center.publish(key, content: "beta: true\n", betaIPs: ["10.0.0.7"])
        }
        let store = try SQLiteStore(path: path)
        let registry = try Registry(store: store, clock: ManualClock())
        #expect(registry.namespaces().map(\.id) == ["public", "dev"])
        #expect(registry.service(orders)?.settings.metadata == ["owner": "iot"])
        #expect(registry.service(orders)?.settings.protectThreshold == 0.3)
        let hosts = registry.list(orders).hosts
        #expect(hosts.map(\.ip) == ["10.0.0.1"])
        #expect(hosts.first?.metadata == ["lane": "gray"] && hosts.first?.weight == 2 && hosts.first?.ephemeral == false)
        #expect(registry.user("ops")?.permissions == ["dev": .readWrite])
        let center = try ConfigCenter(store: store)
        #expect(center.get(key)?.content == "a: 2\n")
        #expect(center.get(key)?.type == "yaml")
        #expect(center.get(key, clientIP: "10.0.0.7")?.content == "beta: true\n")
        let history = try center.history(of: key)
        #expect(history.total == 3)
        #expect(history.revisions.map(\.operation) == [.insert, .update, .insert])
        #expect(history.revisions.last?.sourceUser == "ops")
        try center.rollback(key, to: history.revisions[2].id)
        #expect(try ConfigCenter(store: SQLiteStore(path: path)).get(key)?.content == "a: 1\n")
        let mode = try String(contentsOfFile: path + "-wal", encoding: .isoLatin1).isEmpty == false
        #expect(mode)  // WAL mode: the write-ahead log exists beside the database
    }
}
