/// A message (or one fan-out target of it) that could not be delivered.
public struct DeadLetter: Sendable {
    /// Identifies this dead letter (a message can have several: one per failed target, or after a replay).
    public var key: UInt64
    /// The message id (kept by replays).
    public var id: String
    public var route: String
    public var service: String?
    public var reason: String
    public var attempts: Int
    public var lastError: String
    /// Wall-clock time it was dead-lettered, nanoseconds since the epoch.
    public var at: UInt64
    public var envelope: Envelope

    public init(
        key: UInt64 = 0,
        id: String,
        route: String,
        service: String?,
        reason: String,
        attempts: Int,
        lastError: String,
        at: UInt64,
        envelope: Envelope
    ) {
        self.key = key
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

/// Where dead letters are kept beyond memory (the journal's dead-letter log).
public protocol DeadLetterPersistence: Sendable {
    func added(_ letter: DeadLetter)
    func removed(keys: [UInt64])
}
