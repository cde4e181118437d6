import NIOConcurrencyHelpers

/// Where configs and their history live. `commit` is atomic: the new state of the config
/// (nil: deleted) and its history row are written together, or neither is.
public protocol ConfigStore: Sendable {
    func loadConfigs() throws -> [ConfigItem]
    /// Saves `item` (or deletes `key` when nil) and appends `revision`; returns the id given to the revision.
    func commit(_ item: ConfigItem?, key: ConfigKey, revision: ConfigRevision) throws -> Int64
    /// A config's history, newest first, and how many rows it has in all.
    func history(of key: ConfigKey, offset: Int, limit: Int) throws -> (total: Int, revisions: [ConfigRevision])
    func revision(id: Int64) throws -> ConfigRevision?
}

/// Configs in memory (tests; a node that keeps nothing).
public final class InMemoryConfigStore: ConfigStore {
    private struct State {
        var items: [ConfigKey: ConfigItem] = [:]
        var revisions: [ConfigRevision] = []
        var failing = false
    }
    private let state = NIOLockedValueBox(State())
    public init() {}

    /// Every call fails while set.
    public var failing: Bool {
        get { state.withLockedValue { $0.failing } }
        set { state.withLockedValue { $0.failing = newValue } }
    }

    private func access<T>(_ body: (inout State) -> T) throws -> T {
        try state.withLockedValue { s in
            if s.failing { throw ConfigError(.storage, "the config store is unavailable") }
            return body(&s)
        }
    }

    public func loadConfigs() throws -> [ConfigItem] { try access { $0.items.values.sorted { $0.key < $1.key } } }

    public func commit(_ item: ConfigItem?, key: ConfigKey, revision: ConfigRevision) throws -> Int64 {
        try access { s in
            var row = revision
            row.id = Int64(s.revisions.count + 1)
            s.revisions.append(row)
            if var item {
                item.revision = row.id
                s.items[key] = item
            } else {
                s.items[key] = nil
            }
            return row.id
        }
    }

    public func history(of key: ConfigKey, offset: Int, limit: Int) throws -> (total: Int, revisions: [ConfigRevision]) {
        try access { s in
            let rows = s.revisions.reversed().filter { $0.key == key }
            return (rows.count, Array(rows.dropFirst(offset).prefix(limit)))
        }
    }

    public func revision(id: Int64) throws -> ConfigRevision? {
        try access { s in id >= 1 && id <= s.revisions.count ? s.revisions[Int(id - 1)] : nil }
    }
}
