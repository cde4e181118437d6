import NIOConcurrencyHelpers
public import SwitchyardCore

/// The config center. Every change is committed to the store (config and history row
/// together) under the same lock that listeners are checked and registered under, so a
/// listener can never miss a change between its MD5 check and its wait, and never hears of
/// an MD5 the next read would not serve (the lost-update and read-skew failures of Nacos).
public final class ConfigCenter: Sendable {
    /// A long-poll in progress: which keys it listens to, from which client address.
    struct Waiter: Sendable {
        var keys: [ConfigKey]
        var clientIP: String
        var wake: @Sendable ([ConfigKey]) -> Void
    }

    struct State: Sendable {
        var items: [ConfigKey: ConfigItem] = [:]
        var waiters: [UInt64: Waiter] = [:]
        var waitersByKey: [ConfigKey: Set<UInt64>] = [:]
        var watchers: [UInt64: (key: ConfigKey, handler: @Sendable (ConfigItem?) -> Void)] = [:]
        var validators: [ConfigKey: @Sendable (String) -> String?] = [:]
        var nextID: UInt64 = 0
    }

    /// Largest config accepted (bytes of UTF-8).
    public let maxContentBytes: Int
    private let state = NIOLockedValueBox(State())
    let store: any ConfigStore
    let wallMillis: @Sendable () -> Int64

    public init(
        store: any ConfigStore,
        maxContentBytes: Int = 1 << 20,
        wallMillis: @escaping @Sendable () -> Int64 = { Int64(WallClock.nowNanos() / 1_000_000) }
    ) throws {
        self.store = store
        self.maxContentBytes = maxContentBytes
        self.wallMillis = wallMillis
        let items = try store.loadConfigs()
        state.withLockedValue { s in for item in items { s.items[item.key] = item } }
    }

    // MARK: - Reading

    /// What `clientIP` reads: the beta content when it is in the beta list, else the main content.
    public struct Served: Sendable, Equatable {
        public var content: String
        public var md5: String
        public var type: String
        public var isBeta: Bool
        public var lastModifiedMillis: Int64
    }

    public func get(_ key: ConfigKey, clientIP: String = "") -> Served? {
        state.withLockedValue { Self.served($0.items[key], clientIP) }
    }

    /// The stored item, beta included (admin views, the CLI).
    public func item(_ key: ConfigKey) -> ConfigItem? { state.withLockedValue { $0.items[key] } }

    /// Every config of a tenant (all tenants when nil), sorted.
    public func items(tenant: String? = nil) -> [ConfigItem] {
        let t = tenant.map { $0 == "public" ? "" : $0 }
        return state.withLockedValue { s in s.items.values.filter { t == nil || $0.key.tenant == t }.sorted { $0.key < $1.key } }
    }

    static func served(_ item: ConfigItem?, _ clientIP: String) -> Served? {
        guard let item else { return nil }
        if let beta = item.beta, !clientIP.isEmpty, beta.ips.contains(clientIP) {
            return Served(content: beta.content, md5: beta.md5, type: item.type, isBeta: true, lastModifiedMillis: item.lastModifiedMillis)
        }
        guard item.hasMain else { return nil }
        return Served(content: item.content, md5: item.md5, type: item.type, isBeta: false, lastModifiedMillis: item.lastModifiedMillis)
    }

    /// The MD5 a listener at `clientIP` compares against ("" when the config does not exist).
    static func md5(_ item: ConfigItem?, _ clientIP: String) -> String { served(item, clientIP)?.md5 ?? "" }

    // MARK: - Changing

    public struct Source: Sendable {
        public var ip: String
        public var user: String
        public init(ip: String = "", user: String = "") {
            self.ip = ip
            self.user = user
        }
    }

    /// Publishes content. With `casMD5` the publish happens only if the current MD5 is that
    /// (returns false otherwise). With `betaIPs` it is a beta release to those clients only.
    @discardableResult
    public func publish(
        _ key: ConfigKey,
        content: String,
        type: String? = nil,
        appName: String = "",
        casMD5: String? = nil,
        betaIPs: [String]? = nil,
        source: Source = Source()
    ) throws(ConfigError) -> Bool {
        try Self.validate(key)
        if content.isEmpty { throw ConfigError(.invalid, "content is required (it must not be empty)") }
        if content.utf8.count > maxContentBytes {
            throw ConfigError(.invalid, "content is \(content.utf8.count) bytes; the limit is \(maxContentBytes)")
        }
        if let validate = state.withLockedValue({ $0.validators[key] }), let problem = validate(content) {
            throw ConfigError(.invalid, "\(key) is refused: \(problem)")
        }
        let now = wallMillis()
        return try change(key) { current throws(ConfigError) -> (ConfigItem?, ConfigRevision)? in
            if let casMD5, !casMD5.isEmpty, current?.md5 != casMD5 { return nil }
            let resolvedType = type.flatMap { $0.isEmpty ? nil : $0 } ?? current?.type ?? "text"
            if let betaIPs {
                let ips = betaIPs.map { $0.trimmingSpaces }.filter { !$0.isEmpty }
                if ips.isEmpty { throw ConfigError(.invalid, "betaIps names no client address") }
                var item = current ?? ConfigItem(key: key, content: content, type: resolvedType, appName: appName)
                if current == nil { item.md5 = "" }  // only the beta clients see it: no main content yet
                item.beta = BetaRelease(ips: ips, content: content)
                item.lastModifiedMillis = now
                let row = ConfigRevision(
                    key: key,
                    content: content,
                    type: resolvedType,
                    appName: appName,
                    operation: current?.beta == nil ? .insert : .update,
                    release: .beta,
                    betaIPs: ips,
                    sourceIP: source.ip,
                    sourceUser: source.user,
                    createdMillis: now
                )
                return (current == nil ? item.withoutMain : item, row)
            }
            var item = ConfigItem(
                key: key,
                content: content,
                type: resolvedType,
                appName: appName.isEmpty ? current?.appName ?? "" : appName,
                lastModifiedMillis: now
            )
            item.beta = current?.beta
            let row = ConfigRevision(
                key: key,
                content: content,
                type: resolvedType,
                appName: item.appName,
                operation: current?.hasMain == true ? .update : .insert,
                sourceIP: source.ip,
                sourceUser: source.user,
                createdMillis: now
            )
            return (item, row)
        }
    }

    /// Deletes a config (its beta too). Returns false when there was none.
    @discardableResult
    public func delete(_ key: ConfigKey, source: Source = Source()) throws(ConfigError) -> Bool {
        try Self.validate(key)
        let now = wallMillis()
        return try change(key) { current throws(ConfigError) -> (ConfigItem?, ConfigRevision)? in
            guard let current else { return nil }
            let row = ConfigRevision(
                key: key,
                content: current.hasMain ? current.content : current.beta?.content ?? "",
                type: current.type,
                appName: current.appName,
                operation: .delete,
                sourceIP: source.ip,
                sourceUser: source.user,
                createdMillis: now
            )
            return (nil, row)
        }
    }

    /// Ends a beta: its clients read the main content again. Returns false when there was none.
    @discardableResult
    public func stopBeta(_ key: ConfigKey, source: Source = Source()) throws(ConfigError) -> Bool {
        try Self.validate(key)
        let now = wallMillis()
        return try change(key) { current throws(ConfigError) -> (ConfigItem?, ConfigRevision)? in
            guard var item = current, let beta = item.beta else { return nil }
            item.beta = nil
            item.lastModifiedMillis = now
            let row = ConfigRevision(
                key: key,
                content: beta.content,
                type: item.type,
                appName: item.appName,
                operation: .delete,
                release: .beta,
                betaIPs: beta.ips,
                sourceIP: source.ip,
                sourceUser: source.user,
                createdMillis: now
            )
            return (item.hasMain ? item : nil, row)
        }
    }

    /// Publishes again the content of revision `id` of `key`, byte for byte (a new revision).
    public func rollback(_ key: ConfigKey, to id: Int64, source: Source = Source()) throws(ConfigError) {
        let revision: ConfigRevision?
        do { revision = try store.revision(id: id) } catch {
            throw ConfigError(.storage, "cannot read revision \(id): \(error)")
        }
        guard let revision, revision.key == key else { throw ConfigError(.notFound, "\(key) has no revision \(id)") }
        guard revision.release == .formal, revision.operation != .delete else {
            throw ConfigError(.invalid, "revision \(id) is a \(revision.release == .beta ? "beta release" : "deletion"); roll back to a publish")
        }
        try publish(key, content: revision.content, type: revision.type, appName: revision.appName, source: source)
    }

    public func history(of key: ConfigKey, offset: Int = 0, limit: Int = 100) throws(ConfigError) -> (total: Int, revisions: [ConfigRevision]) {
        do { return try store.history(of: key, offset: offset, limit: limit) } catch {
            throw ConfigError(.storage, "cannot read the history of \(key): \(error)")
        }
    }

    public func revision(id: Int64) throws(ConfigError) -> ConfigRevision? {
        do { return try store.revision(id: id) } catch { throw ConfigError(.storage, "cannot read revision \(id): \(error)") }
    }

    /// The one path every change takes: decide from the current item, commit to the store,
    /// swap in memory, and collect who must hear of it, all under the lock; call them after.
    private func change(
        _ key: ConfigKey,
        _ decide: (ConfigItem?) throws(ConfigError) -> (ConfigItem?, ConfigRevision)?
    ) throws(ConfigError) -> Bool {
        let result:
            Result<(woken: [(@Sendable ([ConfigKey]) -> Void)], watchers: [@Sendable (ConfigItem?) -> Void], item: ConfigItem?)?, ConfigError> =
                state.withLockedValue { s in
                    let current = s.items[key]
                    let decision: (ConfigItem?, ConfigRevision)?
                    do throws(ConfigError) { decision = try decide(current) } catch { return .failure(error) }
                    guard let (next, revision) = decision else { return .success(nil) }
                    var stored = next
                    do {
                        let id = try store.commit(next, key: key, revision: revision)
                        stored?.revision = id
                    } catch let e as ConfigError {
                        return .failure(e)
                    } catch {
                        return .failure(ConfigError(.storage, "the config store failed: \(error)"))
                    }
                    s.items[key] = stored
                    var woken: [(@Sendable ([ConfigKey]) -> Void)] = []
                    for id in s.waitersByKey[key] ?? [] {
                        guard let waiter = s.waiters[id], Self.md5(current, waiter.clientIP) != Self.md5(stored, waiter.clientIP) else { continue }
                        Self.remove(id, from: &s)
                        woken.append(waiter.wake)
                    }
                    let watchers = s.watchers.values.filter { $0.key == key }.map(\.handler)
                    return .success((woken, watchers, stored))
                }
        switch result {
        case .failure(let error): throw error
        case .success(nil): return false
        case .success(let done?):
            for wake in done.woken { wake([key]) }
            for watcher in done.watchers { watcher(done.item) }
            return true
        }
    }

    // MARK: - Listening

    public enum ListenResult: Sendable, Equatable {
        /// These keys already differ from what the client holds: answer now.
        case changed([ConfigKey])
        /// Nothing differs; `wake` is called once when something does (unless cancelled).
        case waiting(UInt64)
    }

    /// Checks the client's MD5s and, when all match, waits for a change, atomically.
    public func listen(
        _ entries: [(key: ConfigKey, md5: String)],
        clientIP: String,
        wake: @escaping @Sendable ([ConfigKey]) -> Void
    ) -> ListenResult {
        state.withLockedValue { s in
            let changed = entries.filter { Self.md5(s.items[$0.key], clientIP) != $0.md5 }.map(\.key)
            if !changed.isEmpty { return .changed(changed) }
            s.nextID += 1
            let id = s.nextID
            let keys = entries.map(\.key)
            s.waiters[id] = Waiter(keys: keys, clientIP: clientIP, wake: wake)
            for key in keys { s.waitersByKey[key, default: []].insert(id) }
            return .waiting(id)
        }
    }

    /// Stops a wait (timeout, client gone). Returns false when it had already been woken.
    @discardableResult
    public func cancel(_ id: UInt64) -> Bool {
        state.withLockedValue { s in
            guard s.waiters[id] != nil else { return false }
            Self.remove(id, from: &s)
            return true
        }
    }

    /// Long-polls waiting now.
    public var waitingListeners: Int { state.withLockedValue { $0.waiters.count } }

    private static func remove(_ id: UInt64, from s: inout State) {
        guard let waiter = s.waiters.removeValue(forKey: id) else { return }
        for key in waiter.keys {
            s.waitersByKey[key]?.remove(id)
            if s.waitersByKey[key]?.isEmpty == true { s.waitersByKey[key] = nil }
        }
    }

    /// In-process watch of a config's main content (nil when deleted); Switchyard's own
    /// config living in the config center uses it.
    @discardableResult
    public func watch(_ key: ConfigKey, _ handler: @escaping @Sendable (ConfigItem?) -> Void) -> UInt64 {
        state.withLockedValue { s in
            s.nextID += 1
            s.watchers[s.nextID] = (key, handler)
            return s.nextID
        }
    }

    public func unwatch(_ id: UInt64) { state.withLockedValue { _ = $0.watchers.removeValue(forKey: id) } }

    /// Content published to `key` must pass `validate` (nil: fine; else the reason it is refused).
    public func setValidator(_ key: ConfigKey, _ validate: (@Sendable (String) -> String?)?) {
        state.withLockedValue { $0.validators[key] = validate }
    }

    // MARK: - Validation

    /// dataId and group: `[A-Za-z0-9_.:-]`, 1–256 characters (what Nacos clients accept).
    public static func nameProblem(_ name: String, _ field: String) -> String? {
        if name.isEmpty { return "\(field) is required" }
        if name.utf8.count > 256 { return "\(field) is longer than 256 characters" }
        if !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.:-".contains($0)) }) {
            return "\(field) \"\(name)\" may use letters, digits, _ . : - only"
        }
        return nil
    }

    static func validate(_ key: ConfigKey) throws(ConfigError) {
        if let p = nameProblem(key.dataId, "dataId") ?? nameProblem(key.group, "group") { throw ConfigError(.invalid, p) }
        if !key.tenant.isEmpty, let p = nameProblem(key.tenant, "tenant") { throw ConfigError(.invalid, p) }
    }
}

extension ConfigItem {
    /// A beta-only config (published to beta clients before any main content) has no main content.
    var hasMain: Bool { !md5.isEmpty }
    var withoutMain: ConfigItem {
        var copy = self
        copy.content = ""
        copy.md5 = ""
        return copy
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}
