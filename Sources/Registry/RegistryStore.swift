import NIOConcurrencyHelpers

/// What the registry keeps across restarts: namespaces, explicitly created services,
/// persistent instances and users. Ephemeral instances are never stored (they come back
/// with their clients' next beat). SQLite implements it (`SQLiteStore`), etcd can later.
public protocol RegistryStore: Sendable {
    func loadRegistry() throws -> RegistryContents
    func save(namespace: Namespace) throws
    func deleteNamespace(id: String) throws
    func save(service: ServiceSettings) throws
    func deleteService(_ name: ServiceName) throws
    func save(instance: Instance, of service: ServiceName) throws
    func deleteInstance(_ address: InstanceAddress, of service: ServiceName) throws
    func save(user: RegistryUser) throws
    func deleteUser(username: String) throws
}

/// Everything a `RegistryStore` holds.
public struct RegistryContents: Sendable, Equatable {
    public var namespaces: [Namespace] = []
    public var services: [ServiceSettings] = []
    public var instances: [StoredInstance] = []
    public var users: [RegistryUser] = []
    public init() {}
}

public struct StoredInstance: Sendable, Equatable {
    public var service: ServiceName
    public var instance: Instance
    public init(service: ServiceName, instance: Instance) {
        self.service = service
        self.instance = instance
    }
}

/// A store in memory (tests; a node that keeps nothing). `failing` makes every call throw,
/// to test what a store failure does.
public final class InMemoryRegistryStore: RegistryStore {
    private struct State {
        var namespaces: [String: Namespace] = [:]
        var services: [ServiceName: ServiceSettings] = [:]
        var instances: [ServiceName: [InstanceAddress: Instance]] = [:]
        var users: [String: RegistryUser] = [:]
        var failing = false
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Forgets everything (a store that came back empty).
    public func reset() { state.withLockedValue { $0 = State() } }

    /// Every call fails while set (a broken disk, a lost database).
    public var failing: Bool {
        get { state.withLockedValue { $0.failing } }
        set { state.withLockedValue { $0.failing = newValue } }
    }

    private func change<T>(_ body: (inout State) -> T) throws -> T {
        try state.withLockedValue { s in
            if s.failing { throw RegistryError(.storage, "the registry store is unavailable") }
            return body(&s)
        }
    }

    public func loadRegistry() throws -> RegistryContents {
        try change { s in
            var c = RegistryContents()
            c.namespaces = s.namespaces.values.sorted { $0.id < $1.id }
            c.services = s.services.values.sorted { $0.name < $1.name }
            c.instances = s.instances.sorted { $0.key < $1.key }.flatMap { name, byAddress in
                byAddress.sorted { $0.key < $1.key }.map { StoredInstance(service: name, instance: $0.value) }
            }
            c.users = s.users.values.sorted { $0.username < $1.username }
            return c
        }
    }
    public func save(namespace: Namespace) throws { try change { $0.namespaces[namespace.id] = namespace } }
    public func deleteNamespace(id: String) throws { try change { $0.namespaces[id] = nil } }
    public func save(service: ServiceSettings) throws { try change { $0.services[service.name] = service } }
    public func deleteService(_ name: ServiceName) throws { try change { $0.services[name] = nil } }
    public func save(instance: Instance, of service: ServiceName) throws {
        try change { $0.instances[service, default: [:]][instance.address] = instance }
    }
    public func deleteInstance(_ address: InstanceAddress, of service: ServiceName) throws {
        try change { $0.instances[service]?[address] = nil }
    }
    public func save(user: RegistryUser) throws { try change { $0.users[user.username] = user } }
    public func deleteUser(username: String) throws { try change { $0.users[username] = nil } }
}
