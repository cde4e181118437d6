public import SwitchyardCore

/// How the journal writes.
public struct JournalOptions: Sendable {
    /// Roll to a new segment file past this size.
    public var segmentBytes = 64 << 20
    /// Group commit: a record waits at most this long for others to share its fsync.
    public var maxCommitLatencySeconds = 0.002
    /// A batch is committed at once when it reaches this size.
    public var maxBatchBytes = 1 << 20
    /// fsync each commit (turning it off loses the durability promise; for benchmarks only).
    public var sync = true
    /// Largest record accepted (a bigger length read back is corruption).
    public var maxRecordBytes = 16 << 20
    /// `dead-letters.log` is rewritten with only its live entries once this many bytes of it
    /// are dead (replayed or purged entries) and they outweigh the live ones.
    public var deadLetterCompactionBytes = 4 << 20

    public init() {}
}

/// What recovery found when the journal was opened.
public struct RecoveryReport: Sendable {
    /// Messages appended and not settled, in append order: to be delivered again. `attempts`:
    /// how many delivery attempts it may have had (at least 1: it may have been sent before
    /// the stop), so the next attempt number is higher than any a service has seen.
    public var unsettled: [(sequence: UInt64, envelope: Envelope, attempts: Int)] = []
    public var recordsRead = 0
    public var segments = 0
    /// Each bad record or torn tail, with the file and offset.
    public var problems: [String] = []
    public var truncatedBytes = 0
    /// Dead letters kept in `dead-letters.log`, oldest first.
    public var deadLetters: [DeadLetter] = []
}
