public import MQTTWire

/// Subscriptions by topic level: `+` and `#` children, and the MQTT rule that filters
/// starting with a wildcard do not match topics starting with `$`. A value type; the server
/// keeps one behind a lock.
public struct SubscriptionTrie: Sendable {
    public struct Entry: Sendable, Equatable {
        public var qos: QoS
        public var noLocal: Bool
        public var retainAsPublished: Bool
        /// v5 Subscription Identifier, when the SUBSCRIBE carried one.
        public var identifier: Int?

        public init(qos: QoS, noLocal: Bool = false, retainAsPublished: Bool = false, identifier: Int? = nil) {
            self.qos = qos
            self.noLocal = noLocal
            self.retainAsPublished = retainAsPublished
            self.identifier = identifier
        }
    }

    /// What one client gets for a topic: the highest QoS of its matching subscriptions and
    /// every identifier (MQTT 3.3.4: one delivery per client, not one per subscription).
    public struct Match: Sendable, Equatable {
        public var qos: QoS
        public var noLocal: Bool
        public var retainAsPublished: Bool
        public var identifiers: [Int]
    }

    /// The members of one shared subscription (`$share/{group}/{filter}`): each message
    /// goes to one of them.
    public struct SharedSet: Sendable, Equatable {
        public struct Member: Sendable, Equatable {
            public var clientID: String
            public var entry: Entry
        }
        /// The whole `$share/…` filter (what members subscribed with).
        public var filter: String
        public var members: [Member] = []
    }

    struct Node: Sendable {
        var children: [Substring: Node] = [:]
        /// Subscribers whose filter ends here, by client id.
        var subscribers: [String: Entry] = [:]
        /// Shared subscriptions whose filter ends here, by group name.
        var shared: [String: SharedSet] = [:]
        var isEmpty: Bool { children.isEmpty && subscribers.isEmpty && shared.isEmpty }
    }

    var root = Node()
    public private(set) var count = 0
    /// Recent lookups by topic (devices publish to the same topics again and again): emptied
    /// whenever a subscription changes, and when it reaches `cacheLimit`.
    var cache: [String: (direct: [String: Match], shared: [SharedSet])] = [:]
    static let cacheLimit = 8192

    public init() {}

    /// Adds or replaces `clientID`'s subscription to `filter` (a valid filter; `$share/…`
    /// joins the group). Returns whether it is new (for retain handling 1).
    @discardableResult
    public mutating func subscribe(_ clientID: String, filter: String, entry: Entry) -> Bool {
        let shared = MQTTTopic.shared(filter)
        let levels = (shared?.filter ?? filter).split(separator: "/", omittingEmptySubsequences: false)
        if !cache.isEmpty { cache.removeAll() }
        let isNew = Self.insert(&root, levels[...], clientID, entry, shared.map { ($0.group, filter) })
        if isNew { count += 1 }
        return isNew
    }

    static func insert(
        _ node: inout Node,
        _ levels: ArraySlice<Substring>,
        _ clientID: String,
        _ entry: Entry,
        _ share: (group: String, filter: String)?
    ) -> Bool {
        guard let level = levels.first else {
            guard let share else { return node.subscribers.updateValue(entry, forKey: clientID) == nil }
            var set = node.shared[share.group] ?? SharedSet(filter: share.filter)
            defer { node.shared[share.group] = set }
            if let i = set.members.firstIndex(where: { $0.clientID == clientID }) {
                set.members[i].entry = entry
                return false
            }
            set.members.append(SharedSet.Member(clientID: clientID, entry: entry))
            return true
        }
        return insert(&node.children[level, default: Node()], levels.dropFirst(), clientID, entry, share)
    }

    /// Removes one subscription; returns whether it existed.
    @discardableResult
    public mutating func unsubscribe(_ clientID: String, filter: String) -> Bool {
        let shared = MQTTTopic.shared(filter)
        let levels = (shared?.filter ?? filter).split(separator: "/", omittingEmptySubsequences: false)
        if !cache.isEmpty { cache.removeAll() }
        let existed = Self.remove(&root, levels[...], clientID, group: shared?.group)
        if existed { count -= 1 }
        return existed
    }

    static func remove(_ node: inout Node, _ levels: ArraySlice<Substring>, _ clientID: String, group: String?) -> Bool {
        guard let level = levels.first else {
            guard let group else { return node.subscribers.removeValue(forKey: clientID) != nil }
            guard var set = node.shared[group], let i = set.members.firstIndex(where: { $0.clientID == clientID }) else { return false }
            set.members.remove(at: i)
            node.shared[group] = set.members.isEmpty ? nil : set
            return true
        }
        guard var child = node.children[level] else { return false }
        let removed = remove(&child, levels.dropFirst(), clientID, group: group)
        node.children[level] = child.isEmpty ? nil : child  // no empty branches left behind
        return removed
    }

    /// The members of a shared subscription (`$share/{group}/{filter}`), if it has any.
    public func sharedSet(_ filter: String) -> SharedSet? {
        guard let (group, inner) = MQTTTopic.shared(filter) else { return nil }
        var node = root
        for level in inner.split(separator: "/", omittingEmptySubsequences: false) {
            guard let next = node.children[level] else { return nil }
            node = next
        }
        return node.shared[group]
    }

    /// Every client whose (non-shared) subscriptions match `topic`.
    public func matches(_ topic: String) -> [String: Match] {
        lookup(topic).direct
    }

    /// `lookup`, remembered for the next message on the same topic.
    public mutating func cachedLookup(_ topic: String) -> (direct: [String: Match], shared: [SharedSet]) {
        if let hit = cache[topic] { return hit }
        let result = lookup(topic)
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[topic] = result
        return result
    }

    /// The clients whose own subscriptions match `topic`, and the shared subscriptions that
    /// match it (one member of each gets the message).
    public func lookup(_ topic: String) -> (direct: [String: Match], shared: [SharedSet]) {
        var out: [String: Match] = [:]
        var shared: [SharedSet] = []
        let levels = topic.split(separator: "/", omittingEmptySubsequences: false)
        Self.collect(root, levels[...], isFirst: true, dollar: topic.hasPrefix("$"), into: &out, &shared)
        return (out, shared)
    }

    static func collect(
        _ node: Node,
        _ levels: ArraySlice<Substring>,
        isFirst: Bool,
        dollar: Bool,
        into out: inout [String: Match],
        _ shared: inout [SharedSet]
    ) {
        let wildcardsAllowed = !(isFirst && dollar)
        if wildcardsAllowed, let multi = node.children["#"] {  // `a/#` matches `a` too
            add(multi.subscribers, into: &out)
            if !multi.shared.isEmpty { shared.append(contentsOf: multi.shared.values) }
        }
        guard let level = levels.first else {
            add(node.subscribers, into: &out)
            if !node.shared.isEmpty { shared.append(contentsOf: node.shared.values) }
            return
        }
        if let exact = node.children[level] { collect(exact, levels.dropFirst(), isFirst: false, dollar: dollar, into: &out, &shared) }
        if wildcardsAllowed, let single = node.children["+"] {
            collect(single, levels.dropFirst(), isFirst: false, dollar: dollar, into: &out, &shared)
        }
    }

    static func add(_ subscribers: [String: Entry], into out: inout [String: Match]) {
        for (client, e) in subscribers {
            if var m = out[client] {
                m.qos = max(m.qos, e.qos)
                m.noLocal = m.noLocal && e.noLocal
                m.retainAsPublished = m.retainAsPublished || e.retainAsPublished
                if let id = e.identifier { m.identifiers.append(id) }
                out[client] = m
            } else {
                out[client] = Match(
                    qos: e.qos,
                    noLocal: e.noLocal,
                    retainAsPublished: e.retainAsPublished,
                    identifiers: e.identifier.map { [$0] } ?? []
                )
            }
        }
    }
}
