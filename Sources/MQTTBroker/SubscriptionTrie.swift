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

    struct Node: Sendable {
        var children: [Substring: Node] = [:]
        /// Subscribers whose filter ends here, by client id.
        var subscribers: [String: Entry] = [:]
        var isEmpty: Bool { children.isEmpty && subscribers.isEmpty }
    }

    var root = Node()
    public private(set) var count = 0

    public init() {}

    /// Adds or replaces `clientID`'s subscription to `filter` (a valid, non-shared filter).
    /// Returns whether it is new (for retain handling 1).
    @discardableResult
    public mutating func subscribe(_ clientID: String, filter: String, entry: Entry) -> Bool {
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        let isNew = Self.insert(&root, levels[...], clientID, entry)
        if isNew { count += 1 }
        return isNew
    }

    static func insert(_ node: inout Node, _ levels: ArraySlice<Substring>, _ clientID: String, _ entry: Entry) -> Bool {
        guard let level = levels.first else {
            return node.subscribers.updateValue(entry, forKey: clientID) == nil
        }
        return insert(&node.children[level, default: Node()], levels.dropFirst(), clientID, entry)
    }

    /// Removes one subscription; returns whether it existed.
    @discardableResult
    public mutating func unsubscribe(_ clientID: String, filter: String) -> Bool {
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        let existed = Self.remove(&root, levels[...], clientID)
        if existed { count -= 1 }
        return existed
    }

    static func remove(_ node: inout Node, _ levels: ArraySlice<Substring>, _ clientID: String) -> Bool {
        guard let level = levels.first else { return node.subscribers.removeValue(forKey: clientID) != nil }
        guard var child = node.children[level] else { return false }
        let removed = remove(&child, levels.dropFirst(), clientID)
        node.children[level] = child.isEmpty ? nil : child  // no empty branches left behind
        return removed
    }

    /// Every client whose subscriptions match `topic`.
    public func matches(_ topic: String) -> [String: Match] {
        var out: [String: Match] = [:]
        let levels = topic.split(separator: "/", omittingEmptySubsequences: false)
        Self.collect(root, levels[...], isFirst: true, dollar: topic.hasPrefix("$"), into: &out)
        return out
    }

    static func collect(_ node: Node, _ levels: ArraySlice<Substring>, isFirst: Bool, dollar: Bool, into out: inout [String: Match]) {
        let wildcardsAllowed = !(isFirst && dollar)
        if wildcardsAllowed, let multi = node.children["#"] { add(multi.subscribers, into: &out) }  // `a/#` matches `a` too
        guard let level = levels.first else {
            add(node.subscribers, into: &out)
            return
        }
        if let exact = node.children[level] { collect(exact, levels.dropFirst(), isFirst: false, dollar: dollar, into: &out) }
        if wildcardsAllowed, let single = node.children["+"] { collect(single, levels.dropFirst(), isFirst: false, dollar: dollar, into: &out) }
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
