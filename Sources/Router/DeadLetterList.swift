import NIOConcurrencyHelpers
import NIOCore
public import SwitchyardCore

/// Dead letters, newest last, bounded: when full the oldest is dropped and counted in
/// `evicted`. Every change goes to the persistence (when given) so the list survives restarts.
public final class DeadLetterList: Sendable {
    public let limit: Int
    private let persistence: (any DeadLetterPersistence)?
    private let state: NIOLockedValueBox<State>

    struct State {
        var entries = CircularBuffer<DeadLetter>()
        var evicted: UInt64 = 0
        var nextKey: UInt64 = 1
    }

    /// A filter over dead letters; nil fields match anything.
    public struct Filter: Sendable {
        public var keys: Set<UInt64>?
        public var id: String?
        public var route: String?
        public var reason: String?
        /// Dead-lettered at or after this wall-clock time (nanoseconds since the epoch).
        public var since: UInt64?
        public var until: UInt64?

        public init(
            keys: Set<UInt64>? = nil,
            id: String? = nil,
            route: String? = nil,
            reason: String? = nil,
            since: UInt64? = nil,
            until: UInt64? = nil
        ) {
            self.keys = keys
            self.id = id
            self.route = route
            self.reason = reason
            self.since = since
            self.until = until
        }

        func matches(_ d: DeadLetter) -> Bool {
            if let keys, !keys.contains(d.key) { return false }
            if let id, d.id != id { return false }
            if let route, d.route != route { return false }
            if let reason, d.reason != reason { return false }
            if let since, d.at < since { return false }
            if let until, d.at > until { return false }
            return true
        }
    }

    /// `restored`: dead letters loaded from persistence at start (oldest first).
    public init(limit: Int, persistence: (any DeadLetterPersistence)? = nil, restored: [DeadLetter] = []) {
        self.limit = max(1, limit)
        self.persistence = persistence
        var s = State()
        for letter in restored.suffix(self.limit) {
            s.entries.append(letter)
            s.nextKey = max(s.nextKey, letter.key + 1)
        }
        state = NIOLockedValueBox(s)
    }

    public func append(_ letter: DeadLetter) {
        let (stored, dropped): (DeadLetter, UInt64?) = state.withLockedValue {
            var letter = letter
            letter.key = $0.nextKey
            $0.nextKey += 1
            var dropped: UInt64?
            if $0.entries.count >= limit {
                dropped = $0.entries.removeFirst().key
                $0.evicted += 1
            }
            $0.entries.append(letter)
            return (letter, dropped)
        }
        persistence?.added(stored)
        if let dropped { persistence?.removed(keys: [dropped]) }
    }

    /// Newest first, filtered.
    public func list(_ filter: Filter = Filter(), limit: Int = 100) -> [DeadLetter] {
        state.withLockedValue { s in
            var out: [DeadLetter] = []
            for letter in s.entries.reversed() where out.count < limit && filter.matches(letter) {
                out.append(letter)
            }
            return out
        }
    }

    public func list(route: String? = nil, reason: String? = nil, limit: Int = 100) -> [DeadLetter] {
        list(Filter(route: route, reason: reason), limit: limit)
    }

    /// Removes and returns the matching dead letters, oldest first (replay and purge).
    public func take(_ filter: Filter) -> [DeadLetter] {
        let taken: [DeadLetter] = state.withLockedValue { s in
            var kept = CircularBuffer<DeadLetter>()
            var taken: [DeadLetter] = []
            for letter in s.entries {
                if filter.matches(letter) { taken.append(letter) } else { kept.append(letter) }
            }
            s.entries = kept
            return taken
        }
        if !taken.isEmpty { persistence?.removed(keys: taken.map(\.key)) }
        return taken
    }

    public var count: Int { state.withLockedValue { $0.entries.count } }
    public var evicted: UInt64 { state.withLockedValue { $0.evicted } }
}
