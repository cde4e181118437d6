import NIOConcurrencyHelpers
import NIOCore
public import SwitchyardCore

/// A message (or one fan-out target of it) that could not be delivered.
public struct DeadLetter: Sendable {
    public var id: String
    public var route: String
    public var service: String?
    public var reason: String
    public var attempts: Int
    public var lastError: String
    /// Wall-clock time it was dead-lettered, nanoseconds since the epoch.
    public var at: UInt64
    public var envelope: Envelope

    public init(id: String, route: String, service: String?, reason: String, attempts: Int, lastError: String, at: UInt64, envelope: Envelope) {
        self.id = id
        self.route = route
        self.service = service
        self.reason = reason
        self.attempts = attempts
        self.lastError = lastError
        self.at = at
        self.envelope = envelope
    }
}

/// Dead letters kept in memory, newest last, bounded (the journal makes them durable later).
/// When full, the oldest entry is dropped and counted in `evicted`.
public final class DeadLetterList: Sendable {
    public let limit: Int
    private let state: NIOLockedValueBox<(entries: CircularBuffer<DeadLetter>, evicted: UInt64)>

    public init(limit: Int) {
        self.limit = max(1, limit)
        state = NIOLockedValueBox((CircularBuffer(initialCapacity: min(limit, 1024)), 0))
    }

    public func append(_ letter: DeadLetter) {
        state.withLockedValue {
            if $0.entries.count >= limit {
                $0.entries.removeFirst()
                $0.evicted += 1
            }
            $0.entries.append(letter)
        }
    }

    /// Newest first, optionally filtered.
    public func list(route: String? = nil, reason: String? = nil, limit: Int = 100) -> [DeadLetter] {
        state.withLockedValue { s in
            var out: [DeadLetter] = []
            for letter in s.entries.reversed() where out.count < limit {
                if let route, letter.route != route { continue }
                if let reason, letter.reason != reason { continue }
                out.append(letter)
            }
            return out
        }
    }

    public var count: Int { state.withLockedValue { $0.entries.count } }
    public var evicted: UInt64 { state.withLockedValue { $0.evicted } }
}
