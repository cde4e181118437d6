import NIOConcurrencyHelpers
public import SwitchyardCore

/// Why a service's instances changed (watchers treat a resync differently: an empty list
/// after a store reload is more likely a lost store than a fleet that left).
public enum RegistryChange: Sendable, Equatable {
    case instances
    case resync
}

/// The naming registry. State lives in memory behind one lock (control plane, not the
/// message path); namespaces, explicit services, persistent instances and users are
/// written through to the store before a change is made visible, so a failed write changes
/// nothing. Watchers are told which service changed, after the lock is released.
public final class Registry: Sendable {
    struct Held: Sendable {
        var instance: Instance
        /// Monotonic nanoseconds of the last beat (registration counts as one).
        var lastBeat: UInt64
    }

    struct Entry: Sendable {
        var settings: ServiceSettings
        /// Created through the service API (kept, and stored, without instances).
        var explicit: Bool
        var instances: [InstanceAddress: Held] = [:]
        var changedMillis: Int64
    }

    struct State: Sendable {
        var services: [ServiceName: Entry] = [:]
        var namespaces: [String: Namespace] = [:]
        var users: [String: RegistryUser] = [:]
        var watchers: [UInt64: @Sendable (ServiceName, RegistryChange) -> Void] = [:]
        var nextWatcher: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())
    /// Held across a store write and the memory change that follows it, so the two never disagree.
    private let writes = NIOLock()
    let store: any RegistryStore
    let clock: any MonotonicClock
    let wallMillis: @Sendable () -> Int64

    public init(
        store: any RegistryStore,
        clock: any MonotonicClock = SystemMonotonicClock(),
        wallMillis: @escaping @Sendable () -> Int64 = { Int64(WallClock.nowNanos() / 1_000_000) }
    ) throws {
        self.store = store
        self.clock = clock
        self.wallMillis = wallMillis
        let contents = try store.loadRegistry()
        state.withLockedValue { $0 = Self.state(from: contents, now: clock.nowNanos(), millis: wallMillis()) }
    }

    private static func state(from contents: RegistryContents, now: UInt64, millis: Int64) -> State {
        var s = State()
        for ns in contents.namespaces { s.namespaces[ns.id] = ns }
        for settings in contents.services {
            s.services[settings.name] = Entry(settings: settings, explicit: true, changedMillis: millis)
        }
        for stored in contents.instances {
            s.services[stored.service, default: Entry(settings: ServiceSettings(name: stored.service), explicit: false, changedMillis: millis)]
                .instances[stored.instance.address] = Held(instance: stored.instance, lastBeat: now)
        }
        for user in contents.users { s.users[user.username] = user }
        return s
    }

    // MARK: - Watching

    /// Calls `handler` after every change of a service's instances or settings. Returns a token for `unwatch`.
    @discardableResult
    public func watch(_ handler: @escaping @Sendable (ServiceName, RegistryChange) -> Void) -> UInt64 {
        state.withLockedValue { s in
            s.nextWatcher += 1
            s.watchers[s.nextWatcher] = handler
            return s.nextWatcher
        }
    }

    public func unwatch(_ token: UInt64) { state.withLockedValue { _ = $0.watchers.removeValue(forKey: token) } }

    private func notify(_ names: [ServiceName], _ change: RegistryChange = .instances) {
        guard !names.isEmpty else { return }
        let watchers = state.withLockedValue { Array($0.watchers.values) }
        for name in names { for w in watchers { w(name, change) } }
    }

    // MARK: - Instances

    /// Registers (or replaces) an instance; the service is created when it is new.
    public func register(_ instance: Instance, in service: ServiceName) throws(RegistryError) {
        try Self.validate(instance)
        try writing { () throws(RegistryError) in
            if let existing = self.instance(instance.address, in: service), existing.ephemeral != instance.ephemeral {
                throw RegistryError(
                    .conflict,
                    "instance \(instance.address) of \(service) is registered as \(existing.ephemeral ? "ephemeral" : "persistent"); "
                        + "its type cannot change (deregister it first)"
                )
            }
            if !instance.ephemeral { try persist { try store.save(instance: instance, of: service) } }
            let now = clock.nowNanos(), millis = wallMillis()
            state.withLockedValue { s in
                s.services[service, default: Entry(settings: ServiceSettings(name: service), explicit: false, changedMillis: millis)]
                    .instances[instance.address] = Held(instance: instance, lastBeat: now)
                s.services[service]?.changedMillis = millis
            }
        }
        notify([service])
    }

    /// Removes an instance. Removing one that is not there is not an error (as in Nacos).
    public func deregister(_ address: InstanceAddress, in service: ServiceName) throws(RegistryError) {
        let removed = try writing { () throws(RegistryError) -> Bool in
            guard let existing = self.instance(address, in: service) else { return false }
            if !existing.ephemeral { try persist { try store.deleteInstance(address, of: service) } }
            let millis = wallMillis()
            state.withLockedValue { s in
                s.services[service]?.instances[address] = nil
                s.services[service]?.changedMillis = millis
                if let entry = s.services[service], !entry.explicit, entry.instances.isEmpty { s.services[service] = nil }
            }
            return true
        }
        if removed { notify([service]) }
    }

    /// Changes an instance's weight, enabled flag or metadata; it must exist. Its type and
    /// health stay (health belongs to beats, checks and the health API).
    public func update(_ instance: Instance, in service: ServiceName) throws(RegistryError) {
        try Self.validate(instance)
        let changed = try writing { () throws(RegistryError) -> Bool in
            guard let existing = self.instance(instance.address, in: service) else {
                throw RegistryError(.notFound, "instance \(instance.address) of \(service) is not registered")
            }
            var updated = instance
            updated.ephemeral = existing.ephemeral
            updated.healthy = existing.healthy
            if !updated.ephemeral { try persist { [updated] in try store.save(instance: updated, of: service) } }
            let millis = wallMillis()
            return state.withLockedValue { s -> Bool in
                guard s.services[service]?.instances[instance.address] != nil else { return false }
                s.services[service]?.instances[instance.address]?.instance = updated
                s.services[service]?.changedMillis = millis
                return true
            }
        }
        if changed { notify([service]) }
    }

    /// The addresses of `ip:port` in any cluster of the service (clients that leave the cluster out).
    public func addresses(ip: String, port: Int, in service: ServiceName) -> [InstanceAddress] {
        state.withLockedValue { s in
            (s.services[service]?.instances.keys).map { $0.filter { $0.ip == ip && $0.port == port }.sorted() } ?? []
        }
    }

    public func instance(_ address: InstanceAddress, in service: ServiceName) -> Instance? {
        state.withLockedValue { $0.services[service]?.instances[address]?.instance }
    }

    public enum BeatOutcome: Sendable, Equatable {
        /// Known (or re-registered from the beat's description): beat again after this many ms.
        case ok(intervalMillis: Int)
        /// Unknown instance and a light beat: the client should register again (Nacos code 20404).
        case unknown
    }

    /// A client beat. A beat carrying the instance's description re-registers it when it is
    /// unknown (the server restarted, or the instance expired); a light beat cannot.
    public func beat(_ address: InstanceAddress, in service: ServiceName, describing: Instance? = nil) -> BeatOutcome {
        let now = clock.nowNanos(), millis = wallMillis()
        let (outcome, changed) = state.withLockedValue { s -> (BeatOutcome, Bool) in
            if var held = s.services[service]?.instances[address] {
                held.lastBeat = now
                let revived = !held.instance.healthy && held.instance.ephemeral
                if revived { held.instance.healthy = true }
                s.services[service]?.instances[address] = held
                if revived { s.services[service]?.changedMillis = millis }
                return (.ok(intervalMillis: held.instance.beatIntervalMillis), revived)
            }
            guard var fresh = describing, fresh.ephemeral, Self.problem(with: fresh) == nil else { return (.unknown, false) }
            fresh.healthy = true
            s.services[service, default: Entry(settings: ServiceSettings(name: service), explicit: false, changedMillis: millis)]
                .instances[address] = Held(instance: fresh, lastBeat: now)
            s.services[service]?.changedMillis = millis
            return (.ok(intervalMillis: fresh.beatIntervalMillis), true)
        }
        if changed { notify([service]) }
        return outcome
    }

    /// Sets an instance's health (server-side checks of persistent instances; the health API).
    public func setHealthy(_ healthy: Bool, _ address: InstanceAddress, in service: ServiceName) throws(RegistryError) {
        let changed = try writing { () throws(RegistryError) -> Bool in
            guard var instance = self.instance(address, in: service) else {
                throw RegistryError(.notFound, "instance \(address) of \(service) is not registered")
            }
            guard instance.healthy != healthy else { return false }
            instance.healthy = healthy
            if !instance.ephemeral { try persist { [instance] in try store.save(instance: instance, of: service) } }
            let millis = wallMillis()
            state.withLockedValue { s in
                s.services[service]?.instances[address]?.instance.healthy = healthy
                s.services[service]?.changedMillis = millis
            }
            return true
        }
        if changed { notify([service]) }
    }

    /// Ephemeral instances without a beat for their timeout become unhealthy; past their
    /// delete timeout they are removed. Returns how many changed each way.
    @discardableResult
    public func sweep() -> (unhealthy: Int, removed: Int) {
        let millis = wallMillis()
        var marked = 0, removed = 0
        let changed = state.withLockedValue { s -> [ServiceName] in
            // Read under the lock: a beat or registration stamped after an earlier reading
            // would look like it came from the future.
            let now = clock.nowNanos()
            var changed: [ServiceName] = []
            for (name, entry) in s.services {
                var touched = false
                for (address, held) in entry.instances where held.instance.ephemeral {
                    let silentMillis = now > held.lastBeat ? Int((now - held.lastBeat) / 1_000_000) : 0
                    if silentMillis > held.instance.deleteTimeoutMillis {
                        s.services[name]?.instances[address] = nil
                        removed += 1
                        touched = true
                    } else if silentMillis > held.instance.beatTimeoutMillis && held.instance.healthy {
                        s.services[name]?.instances[address]?.instance.healthy = false
                        marked += 1
                        touched = true
                    }
                }
                if touched {
                    changed.append(name)
                    s.services[name]?.changedMillis = millis
                    if let e = s.services[name], !e.explicit, e.instances.isEmpty { s.services[name] = nil }
                }
            }
            return changed
        }
        notify(changed)
        return (marked, removed)
    }

    /// A service's instances as clients see them: filtered by cluster and health, with the
    /// protection threshold applied.
    public func list(_ service: ServiceName, clusters: [String] = [], healthyOnly: Bool = false) -> ServiceView {
        state.withLockedValue { s in
            guard let entry = s.services[service] else {
                return ServiceView(name: service, hosts: [], reachedProtectionThreshold: false, lastChangedMillis: 0, exists: false)
            }
            var all = entry.instances.values.map(\.instance).sorted { $0.address < $1.address }
            if !clusters.isEmpty { all = all.filter { clusters.contains($0.cluster) } }
            let healthy = all.filter(\.healthy).count
            let threshold = entry.settings.protectThreshold
            let reached = threshold > 0 && !all.isEmpty && Double(healthy) / Double(all.count) <= threshold
            var hosts = all
            if reached {
                // As in Nacos: rather than send every call to the few healthy instances,
                // the unhealthy ones are returned as usable too.
                for i in hosts.indices { hosts[i].healthy = true }
            } else if healthyOnly {
                hosts = hosts.filter(\.healthy)
            }
            return ServiceView(name: service, hosts: hosts, reachedProtectionThreshold: reached, lastChangedMillis: entry.changedMillis, exists: true)
        }
    }

    // MARK: - Services

    public func createService(_ settings: ServiceSettings) throws(RegistryError) {
        try Self.validate(settings)
        try writing { () throws(RegistryError) in
            if state.withLockedValue({ $0.services[settings.name]?.explicit == true }) {
                throw RegistryError(.conflict, "service \(settings.name) already exists")
            }
            try persist { try store.save(service: settings) }
            let millis = wallMillis()
            state.withLockedValue { s in
                if var entry = s.services[settings.name] {
                    entry.settings = settings
                    entry.explicit = true
                    entry.changedMillis = millis
                    s.services[settings.name] = entry
                } else {
                    s.services[settings.name] = Entry(settings: settings, explicit: true, changedMillis: millis)
                }
            }
        }
        notify([settings.name])
    }

    public func updateService(_ settings: ServiceSettings) throws(RegistryError) {
        try Self.validate(settings)
        try writing { () throws(RegistryError) in
            guard state.withLockedValue({ $0.services[settings.name] != nil }) else {
                throw RegistryError(.notFound, "service \(settings.name) does not exist")
            }
            try persist { try store.save(service: settings) }
            let millis = wallMillis()
            state.withLockedValue { s in
                s.services[settings.name]?.settings = settings
                s.services[settings.name]?.explicit = true
                s.services[settings.name]?.changedMillis = millis
            }
        }
        notify([settings.name])
    }

    /// Deletes a service; only one without instances (as in Nacos).
    public func deleteService(_ name: ServiceName) throws(RegistryError) {
        try writing { () throws(RegistryError) in
            let count = state.withLockedValue { $0.services[name]?.instances.count }
            guard let count else { throw RegistryError(.notFound, "service \(name) does not exist") }
            guard count == 0 else {
                throw RegistryError(.conflict, "service \(name) still has \(count) instance(s); deregister them first")
            }
            try persist { try store.deleteService(name) }
            // A beat may have brought an ephemeral instance back meanwhile: keep the entry then.
            state.withLockedValue { s in
                if s.services[name]?.instances.isEmpty == true { s.services[name] = nil }
            }
        }
        notify([name])
    }

    /// A service's settings and the clusters its instances are in.
    public func service(_ name: ServiceName) -> (settings: ServiceSettings, clusters: [String], instances: Int)? {
        state.withLockedValue { s in
            guard let entry = s.services[name] else { return nil }
            let clusters = Set(entry.instances.keys.map(\.cluster)).sorted()
            return (entry.settings, clusters, entry.instances.count)
        }
    }

    /// Services of a namespace (and group, when given), sorted by group and name.
    public func services(namespace: String, group: String? = nil) -> [ServiceName] {
        let ns = namespace.isEmpty ? ServiceName.defaultNamespace : namespace
        return state.withLockedValue { s in
            s.services.keys.filter { $0.namespace == ns && (group == nil || $0.group == group) }.sorted()
        }
    }

    /// Every service with its instances (the CLI, the admin API, the router's first sync).
    public func snapshot() -> [(ServiceName, [Instance])] {
        state.withLockedValue { s in
            s.services.sorted { $0.key < $1.key }.map { name, entry in
                (name, entry.instances.values.map(\.instance).sorted { $0.address < $1.address })
            }
        }
    }

    /// Re-reads the store (after it was restarted or reconnected). Ephemeral instances stay;
    /// the stored part is replaced. Watchers hear `.resync` for every service.
    public func resyncFromStore() throws(RegistryError) {
        writes.lock()
        defer { writes.unlock() }
        let contents: RegistryContents
        do { contents = try store.loadRegistry() } catch {
            throw RegistryError(.storage, "cannot read the registry store: \(error)")
        }
        let now = clock.nowNanos(), millis = wallMillis()
        let names = state.withLockedValue { s -> [ServiceName] in
            var fresh = Self.state(from: contents, now: now, millis: millis)
            for (name, entry) in s.services {
                for (address, held) in entry.instances where held.instance.ephemeral {
                    fresh.services[name, default: Entry(settings: entry.settings, explicit: false, changedMillis: millis)]
                        .instances[address] = held
                }
            }
            fresh.watchers = s.watchers
            fresh.nextWatcher = s.nextWatcher
            let names = Array(Set(s.services.keys).union(fresh.services.keys))
            s = fresh
            return names
        }
        notify(names, .resync)
    }

    // MARK: - Namespaces

    /// Every namespace, `public` first (it always exists).
    public func namespaces() -> [Namespace] {
        let custom = state.withLockedValue { $0.namespaces.values.filter { $0.id != ServiceName.defaultNamespace }.sorted { $0.id < $1.id } }
        return [Namespace(id: ServiceName.defaultNamespace, name: "public", description: "Public Namespace")] + custom
    }

    public func namespaceExists(_ id: String) -> Bool {
        id.isEmpty || id == ServiceName.defaultNamespace || state.withLockedValue { $0.namespaces[id] != nil }
    }

    public func createNamespace(_ namespace: Namespace) throws(RegistryError) {
        if let problem = Self.nameProblem(namespace.id) { throw RegistryError(.invalid, "namespace id: \(problem)") }
        try writing { () throws(RegistryError) in
            if namespaceExists(namespace.id) { throw RegistryError(.conflict, "namespace \(namespace.id) already exists") }
            try persist { try store.save(namespace: namespace) }
            state.withLockedValue { $0.namespaces[namespace.id] = namespace }
        }
    }

    public func updateNamespace(_ namespace: Namespace) throws(RegistryError) {
        try writing { () throws(RegistryError) in
            guard state.withLockedValue({ $0.namespaces[namespace.id] != nil }) else {
                throw RegistryError(.notFound, "namespace \(namespace.id) does not exist")
            }
            try persist { try store.save(namespace: namespace) }
            state.withLockedValue { $0.namespaces[namespace.id] = namespace }
        }
    }

    public func deleteNamespace(_ id: String) throws(RegistryError) {
        try writing { () throws(RegistryError) in
            guard state.withLockedValue({ $0.namespaces[id] != nil }) else {
                throw RegistryError(.notFound, "namespace \(id) does not exist")
            }
            try persist { try store.deleteNamespace(id: id) }
            state.withLockedValue { _ = $0.namespaces.removeValue(forKey: id) }
        }
    }

    // MARK: - Users

    public func user(_ username: String) -> RegistryUser? { state.withLockedValue { $0.users[username] } }
    public func users() -> [RegistryUser] { state.withLockedValue { $0.users.values.sorted { $0.username < $1.username } } }

    public func save(user: RegistryUser) throws(RegistryError) {
        if let problem = Self.nameProblem(user.username) { throw RegistryError(.invalid, "username: \(problem)") }
        try writing { () throws(RegistryError) in
            try persist { try store.save(user: user) }
            state.withLockedValue { $0.users[user.username] = user }
        }
    }

    public func deleteUser(_ username: String) throws(RegistryError) {
        try writing { () throws(RegistryError) in
            guard user(username) != nil else { throw RegistryError(.notFound, "user \(username) does not exist") }
            try persist { try store.deleteUser(username: username) }
            state.withLockedValue { _ = $0.users.removeValue(forKey: username) }
        }
    }

    // MARK: - Validation and storage

    private func writing<T>(_ body: () throws(RegistryError) -> T) throws(RegistryError) -> T {
        writes.lock()
        defer { writes.unlock() }
        return try body()
    }

    private func persist(_ body: () throws -> Void) throws(RegistryError) {
        do { try body() } catch let e as RegistryError { throw e } catch {
            throw RegistryError(.storage, "the registry store failed: \(error)")
        }
    }

    static func validate(_ instance: Instance) throws(RegistryError) {
        if let problem = problem(with: instance) { throw RegistryError(.invalid, problem) }
    }

    static func problem(with instance: Instance) -> String? {
        if instance.ip.isEmpty { return "ip is required" }
        if !(1...65535).contains(instance.port) { return "port must be between 1 and 65535 (got \(instance.port))" }
        if !(0...10_000).contains(instance.weight) || instance.weight.isNaN { return "weight must be between 0 and 10000" }
        if let check = instance.metadata["health.check"], !["tcp", "http"].contains(check.lowercased()) {
            return "metadata health.check must be tcp or http (got \"\(check)\")"
        }
        if let path = instance.metadata["health.path"],
            !path.hasPrefix("/") || !path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        {
            return "metadata health.path must be a path starting with / without spaces or control characters"
        }
        return nil
    }

    static func validate(_ settings: ServiceSettings) throws(RegistryError) {
        if settings.name.name.isEmpty { throw RegistryError(.invalid, "serviceName is required") }
        if !(0...1).contains(settings.protectThreshold) {
            throw RegistryError(.invalid, "protectThreshold must be between 0 and 1 (got \(settings.protectThreshold))")
        }
    }

    /// Namespace ids and user names: letters, digits, `-`, `_`, `.`; 1–128 characters.
    public static func nameProblem(_ name: String) -> String? {
        if name.isEmpty || name.count > 128 { return "must be 1 to 128 characters" }
        if !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) {
            return "use letters, digits, -, _ and . only"
        }
        return nil
    }
}
