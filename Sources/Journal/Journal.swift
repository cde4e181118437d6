import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
public import NIOCore
public import SwitchyardCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A segmented append-only log in a directory. Each record is `[length][crc32c][kind,
/// sequence, body]`; appends are group-committed by one writer thread (everything queued
/// while an fsync runs goes into the next write + fsync), and an append's future succeeds
/// only once its record is on disk. Segments whose messages are all settled are deleted.
public final class Journal: Sendable {
    public enum Kind: UInt8, Sendable {
        case message = 1
        case settled = 2
        /// In `dead-letters.log`: a dead letter (sequence = its key) and its removal.
        case deadLetter = 3
        case deadLetterRemoved = 4
        /// A message's delivery attempt number (body: UInt32), written when a retry is scheduled.
        case attempted = 5
    }

    static let deadLetterFile = "dead-letters.log"

    let directory: String
    let options: JournalOptions
    let logger: Logger
    private let state: NIOLockedValueBox<State>
    private let commitTimer = Metrics.Timer(label: "switchyard_journal_commit_duration_seconds")
    private let fsyncCounter = Counter(label: "switchyard_journal_fsyncs_total")
    private let appendCounter = Counter(label: "switchyard_messages_journaled_total")
    private let writeErrors = Counter(label: "switchyard_journal_write_errors_total")
    private let wakeup = ConditionVariable()

    struct Pending {
        /// Dead-letter records go to their own file, in the same batch and before its fsync ends.
        var deadLetterFile = false
        /// A settlement record (it releases its message's bytes and segment once written).
        var settles = false
        /// A message (an append): counted as unsettled once written, failed when the write fails.
        var isMessage = false
        var sequence: UInt64
        var bytes: ByteBuffer
        /// Completed with the record's sequence once it is on disk (for a group of appends,
        /// only the last record carries one).
        var promise: EventLoopPromise<UInt64>?
    }

    struct State {
        var nextSequence: UInt64
        var queue: [Pending] = []
        /// When the oldest record in `queue` was queued (uptime nanoseconds; 0 when empty):
        /// the linger for a shared fsync counts from there.
        var queuedSince: UInt64 = 0
        var closing = false
        var closed = false
        /// The last write error, while writes fail (cleared by the next successful write).
        var failure: String?
        /// Unsettled messages per segment (keyed by the segment's first sequence).
        var unsettledBySegment: [UInt64: Int] = [:]
        var segmentOfSequence: [UInt64: UInt64] = [:]
        /// Record bytes of unsettled messages (what backpressure is measured against).
        var unsettledBytes = 0
        var bytesOfSequence: [UInt64: Int] = [:]
        var activeSegment: UInt64
        /// Segment files on disk, oldest first.
        var liveSegments: [UInt64] = []
        var pendingBytes = 0
        var fsyncs: UInt64 = 0
    }

    /// Opens (creating) the journal in `directory` and recovers what it holds.
    public static func open(directory: String, options: JournalOptions = JournalOptions(), logger: Logger) throws -> (Journal, RecoveryReport) {
        guard mkdirAll(directory) else { throw JournalError("cannot create the journal directory \(directory)") }
        var report = RecoveryReport()
        var nextSequence: UInt64 = 1
        var unsettledBySegment: [UInt64: Int] = [:]
        var segmentOfSequence: [UInt64: UInt64] = [:]
        var bytesOfSequence: [UInt64: Int] = [:]
        var unsettled: [UInt64: Envelope] = [:]
        var attempts: [UInt64: Int] = [:]
        let segments = try listSegments(directory)
        for (index, first) in segments.enumerated() {
            let path = segmentPath(directory, first)
            let isLast = index == segments.count - 1
            let result = try Recovery.scan(path: path, isLast: isLast, maxRecord: options.maxRecordBytes)
            report.segments += 1
            report.recordsRead += result.records.count
            report.problems += result.problems
            report.truncatedBytes += result.truncatedBytes
            for record in result.records {
                switch record.kind {
                case .deadLetter, .deadLetterRemoved:
                    report.problems.append("\(path): a dead-letter record in a journal segment; skipped")
                    continue
                default:
                    nextSequence = max(nextSequence, record.sequence + 1)
                }
                switch record.kind {
                case .deadLetter, .deadLetterRemoved:
                    continue
                case .attempted:
                    var body = record.body
                    if let n = body.readInteger(as: UInt32.self) { attempts[record.sequence] = max(attempts[record.sequence] ?? 0, Int(n)) }
                case .message:
                    var body = record.body
                    guard let envelope = EnvelopeCodec.decode(&body) else {
                        report.problems.append("\(path): record \(record.sequence) has an undecodable envelope; skipped")
                        continue
                    }
                    unsettled[record.sequence] = envelope
                    segmentOfSequence[record.sequence] = first
                    bytesOfSequence[record.sequence] = record.body.readableBytes + 17
                    unsettledBySegment[first, default: 0] += 1
                case .settled:
                    attempts.removeValue(forKey: record.sequence)
                    bytesOfSequence.removeValue(forKey: record.sequence)
                    if unsettled.removeValue(forKey: record.sequence) != nil, let segment = segmentOfSequence.removeValue(forKey: record.sequence) {
                        unsettledBySegment[segment, default: 1] -= 1
                    }
                }
            }
        }
        report.unsettled = unsettled.sorted { $0.key < $1.key }.map { ($0.key, $0.value, max(1, attempts[$0.key] ?? 0)) }
        let (letters, letterIndex, letterProblems) = try recoverDeadLetters(directory: directory, maxRecord: options.maxRecordBytes)
        report.deadLetters = letters
        report.problems += letterProblems
        for problem in report.problems { logger.warning("journal recovery", metadata: ["problem": "\(problem)"]) }
        // Appends go to a fresh segment; fully settled old segments can go now.
        let active = nextSequence
        // Keep recovered segments from the oldest with unsettled messages on; delete the settled prefix.
        var live = segments
        while let oldest = live.first, (unsettledBySegment[oldest] ?? 0) == 0 {
            unlink(segmentPath(directory, oldest))
            live.removeFirst()
        }
        var initial = State(
            nextSequence: nextSequence,
            unsettledBySegment: unsettledBySegment,
            segmentOfSequence: segmentOfSequence,
            activeSegment: active
        )
        initial.liveSegments = live + [active]
        initial.bytesOfSequence = bytesOfSequence
        initial.unsettledBytes = bytesOfSequence.values.reduce(0, +)
        let journal = Journal(directory: directory, options: options, logger: logger, state: initial)
        try journal.startWriter(letterIndex: letterIndex)
        return (journal, report)
    }

    private init(directory: String, options: JournalOptions, logger: Logger, state: State) {
        self.directory = directory
        self.options = options
        self.logger = logger
        self.state = NIOLockedValueBox(state)
    }

    // MARK: - Appending

    /// Appends a message; the future (on `loop`) carries its sequence once it is on disk.
    public func append(_ envelope: Envelope, on loop: any EventLoop) -> EventLoopFuture<UInt64> {
        // Encoded straight into its frame; the sequence and checksum are filled in under the lock.
        let promise = loop.makePromise(of: UInt64.self)
        var frames = [Self.messageFrame(envelope)]
        enqueue(&frames, promise: promise)
        return promise.futureResult
    }

    /// Appends messages as one group: consecutive sequences, one commit, one completion.
    public func append(contentsOf envelopes: [Envelope], on loop: any EventLoop) -> EventLoopFuture<[UInt64]> {
        guard !envelopes.isEmpty else { return loop.makeSucceededFuture([]) }
        var frames = envelopes.map(Self.messageFrame)
        let promise = loop.makePromise(of: UInt64.self)
        enqueue(&frames, promise: promise)
        let count = UInt64(envelopes.count)
        return promise.futureResult.map { last in Array((last - count + 1)...last) }
    }

    /// Records that a message reached its final outcome; its segment can go once all its messages have.
    public func settle(_ sequence: UInt64) {
        // The writer writes the record straight into its batch (no buffer per message here).
        enqueue(Self.noBytes, sequence: sequence, settles: true)
    }

    /// The bytes of a record the writer builds itself (a settlement).
    static let noBytes = ByteBuffer()

    /// Records that delivery attempt `attempt` of a message is about to go out, so that after a
    /// restart its attempts go on from there (not awaited: at worst a number is skipped).
    public func recordAttempt(_ sequence: UInt64, attempt: Int) {
        let frame = Self.frame(kind: .attempted, sequence: sequence) { $0.writeInteger(UInt32(clamping: attempt)) }
        enqueue(frame, sequence: sequence)
    }

    /// Queues message frames built outside the lock: sequences are assigned under it (and
    /// written into each frame with its checksum); `promise` goes with the last one.
    /// (`frames` inout: each is the only reference to its storage, so writing the sequence into
    /// it does not copy it.)
    private func enqueue(_ frames: inout [ByteBuffer], promise: EventLoopPromise<UInt64>) {
        let (refused, wake): (String?, Bool) = state.withLockedValue { s in
            if s.closing { return ("the journal is closed", false) }
            if s.queue.isEmpty { s.queuedSince = DispatchTime.now().uptimeNanoseconds }
            for i in frames.indices {
                let seq = s.nextSequence
                s.nextSequence += 1
                Self.setSequence(seq, in: &frames[i])
                s.pendingBytes += frames[i].readableBytes
                s.queue.append(Pending(isMessage: true, sequence: seq, bytes: frames[i], promise: i == frames.count - 1 ? promise : nil))
            }
            // Wake the writer only for the first records of a batch or a full batch: a wake-up per
            // record would cost a context switch per message while it lingers.
            return (nil, s.queue.count == frames.count || s.pendingBytes >= options.maxBatchBytes)
        }
        if let refused {
            promise.fail(JournalError(refused))
            return
        }
        if wake { wakeup.signal() }
    }

    /// Queues a record that is not a message (its sequence is the message's or dead letter's).
    /// Dropped once the journal is closing: the message is then redelivered, or the dead letter
    /// change not made, after the next start.
    private func enqueue(_ frame: ByteBuffer, sequence: UInt64, deadLetterFile: Bool = false, settles: Bool = false) {
        let wake: Bool = state.withLockedValue { s in
            if s.closing { return false }
            if s.queue.isEmpty { s.queuedSince = DispatchTime.now().uptimeNanoseconds }
            s.pendingBytes += frame.readableBytes
            s.queue.append(Pending(deadLetterFile: deadLetterFile, settles: settles, sequence: sequence, bytes: frame, promise: nil))
            return s.queue.count == 1 || s.pendingBytes >= options.maxBatchBytes
        }
        if wake { wakeup.signal() }
    }

    /// Writes the sequence into a built frame and fixes its checksum (sequences are assigned under the lock).
    static func setSequence(_ sequence: UInt64, in frame: inout ByteBuffer) {
        frame.setInteger(sequence, at: frame.readerIndex + 9)
        setChecksum(in: &frame)
    }

    static func setChecksum(in frame: inout ByteBuffer) {
        setChecksum(ofFrameAt: frame.readerIndex, in: &frame)
    }

    /// The checksum of the frame that starts at `start` and ends `buffer`'s bytes.
    private static func setChecksum(ofFrameAt start: Int, in buffer: inout ByteBuffer) {
        let offset = start - buffer.readerIndex
        let crc = buffer.withUnsafeReadableBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[(offset + 8)...])) }
        buffer.setInteger(crc, at: start + 4)
    }

    /// A settlement's frame, written at the end of `buffer` (the writer's batch).
    static func writeSettlement(_ sequence: UInt64, into buffer: inout ByteBuffer) {
        writeFrame(kind: .settled, sequence: sequence, into: &buffer)
    }

    /// `[length][crc32c][kind, sequence, body]` at the end of `buffer`, the body written in
    /// place by `writeBody`.
    private static func writeFrame(
        kind: Kind,
        sequence: UInt64,
        checksum: Bool = true,
        into buffer: inout ByteBuffer,
        writeBody: (inout ByteBuffer) -> Void = { _ in }
    ) {
        let start = buffer.writerIndex
        buffer.writeInteger(UInt32(0))  // length, set below
        buffer.writeInteger(UInt32(0))  // checksum, set below or under the lock
        buffer.writeInteger(kind.rawValue)
        buffer.writeInteger(sequence)
        writeBody(&buffer)
        buffer.setInteger(UInt32(buffer.writerIndex - start - 8), at: start)
        if checksum { setChecksum(ofFrameAt: start, in: &buffer) }
    }

    /// A frame in a buffer of its own.
    static func frame(
        kind: Kind,
        sequence: UInt64,
        checksum: Bool = true,
        capacity: Int = 32,
        writeBody: (inout ByteBuffer) -> Void = { _ in }
    ) -> ByteBuffer {
        var frame = ByteBufferAllocator().buffer(capacity: capacity)
        writeFrame(kind: kind, sequence: sequence, checksum: checksum, into: &frame, writeBody: writeBody)
        return frame
    }

    /// A message's frame, sized once: its sequence and checksum are filled in under the lock.
    private static func messageFrame(_ envelope: Envelope) -> ByteBuffer {
        let size = EnvelopeCodec.size(of: envelope)
        return frame(kind: .message, sequence: 0, checksum: false, capacity: 32 + size) {
            EnvelopeCodec.encode(envelope, into: &$0, size: size)
        }
    }

    /// Bytes appended and not yet on disk.
    public var pendingBytes: Int { state.withLockedValue { $0.pendingBytes } }
    /// Bytes of messages not yet settled, queued or on disk: what backpressure limits.
    public var backlogBytes: Int { state.withLockedValue { $0.unsettledBytes + $0.pendingBytes } }
    /// Messages appended and not settled.
    public var unsettledCount: Int { state.withLockedValue { $0.segmentOfSequence.count } }
    public var fsyncCount: UInt64 { state.withLockedValue { $0.fsyncs } }
    /// The last write error while writes fail (disk full, I/O error); nil when writes succeed.
    public var writeFailure: String? { state.withLockedValue { $0.failure } }

    // MARK: - Writer

    private func startWriter(letterIndex: LetterIndex) throws {
        let fd = try openSegment(state.withLockedValue { $0.activeSegment })
        let letters = try openDeadLetterFile()
        let thread = WriterThread { [self] in self.writerLoop(fd: fd, deadLetters: letters, letterIndex: letterIndex) }
        thread.start()
    }

    /// Read-write: compaction reads the live entries back.
    private func openDeadLetterFile() throws -> Int32 {
        let fd = Glibc.open("\(directory)/\(Self.deadLetterFile)", O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JournalError("cannot open \(directory)/\(Self.deadLetterFile): errno \(errno)") }
        return fd
    }

    private func openSegment(_ first: UInt64) throws -> Int32 {
        let fd = Glibc.open(Self.segmentPath(directory, first), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JournalError("cannot open segment \(Self.segmentPath(directory, first)): errno \(errno)") }
        return fd
    }

    private func writerLoop(fd initial: Int32, deadLetters initialLetters: Int32, letterIndex initialIndex: LetterIndex) {
        var fd = initial
        var deadLetters = initialLetters
        var letterIndex = initialIndex
        var segmentSize = Int(lseek(fd, 0, SEEK_END))
        var lettersSize = Int(lseek(deadLetters, 0, SEEK_END))
        var mustRoll = false
        var failures = 0
        while true {
            wakeup.wait(until: { self.state.withLockedValue { !$0.queue.isEmpty || $0.closing } })
            if failures > 0 {
                // Failing (disk full, I/O error): wait before the next try instead of spinning.
                let pause = min(1.0, 0.05 * Double(1 << min(failures - 1, 5)))
                wakeup.wait(until: { self.state.withLockedValue { $0.closing } }, deadline: Date().addingTimeInterval(pause))
            } else if options.maxCommitLatencySeconds > 0 {
                // Linger so that more records share this fsync, up to the commit latency counted
                // from the oldest queued record: records that queued during the last fsync have
                // waited already, and go at once when they have waited long enough.
                let since = state.withLockedValue { $0.queuedSince }
                let waited = Double(DispatchTime.now().uptimeNanoseconds &- since) / 1e9
                if since > 0, waited < options.maxCommitLatencySeconds {
                    wakeup.wait(
                        until: { self.state.withLockedValue { $0.pendingBytes >= self.options.maxBatchBytes || $0.closing } },
                        deadline: Date().addingTimeInterval(options.maxCommitLatencySeconds - waited)
                    )
                }
            }
            let (batch, closing): ([Pending], Bool) = state.withLockedValue { s in
                let b = s.queue
                s.queue = []
                s.queuedSince = 0
                return (b, s.closing)
            }
            if batch.isEmpty && closing { break }
            let commitStart = DispatchTime.now().uptimeNanoseconds
            var failure: String?
            // Segments roll between batches, at the first message of a batch (its sequence names the file).
            if let first = batch.first(where: \.isMessage), mustRoll || segmentSize >= options.segmentBytes {
                do {
                    let next = try openSegment(first.sequence)
                    if options.sync { fdatasync(fd) }
                    Glibc.close(fd)
                    fd = next
                    segmentSize = Int(lseek(fd, 0, SEEK_END))
                    mustRoll = false
                    state.withLockedValue { s in
                        s.liveSegments.append(first.sequence)
                        s.activeSegment = first.sequence
                    }
                } catch {
                    failure = "\(error)"
                }
            }
            var buffer = ByteBuffer()
            var letterBuffer = ByteBuffer()
            for item in batch {
                if item.settles && item.bytes.readableBytes == 0 {
                    Self.writeSettlement(item.sequence, into: &buffer)
                    continue
                }
                var bytes = item.bytes
                if item.deadLetterFile { letterBuffer.writeBuffer(&bytes) } else { buffer.writeBuffer(&bytes) }
            }
            // Dead letters first: a message's settlement must never be durable before its dead
            // letter, so nothing of the batch goes to the journal when they fail.
            if failure == nil, letterBuffer.readableBytes > 0 {
                let size = letterBuffer.readableBytes
                failure = writeAll(deadLetters, &letterBuffer)
                if failure == nil && options.sync && fdatasync(deadLetters) != 0 { failure = "fdatasync failed: errno \(errno)" }
                if failure == nil {
                    letterIndex.wrote(batch.filter(\.deadLetterFile), at: lettersSize)
                    lettersSize += size
                } else if ftruncate(deadLetters, off_t(lettersSize)) != 0 {
                    logger.error("cannot cut a failed write off dead-letters.log", metadata: ["errno": "\(errno)"])
                }
            }
            if failure == nil, buffer.readableBytes > 0 {
                let size = buffer.readableBytes
                failure = writeAll(fd, &buffer)
                if failure == nil && options.sync && fdatasync(fd) != 0 { failure = "fdatasync failed: errno \(errno)" }
                if failure == nil {
                    segmentSize += size
                } else {
                    // Cut the failed write off (if that fails too, recovery reports the torn tail)
                    // and go on in a new segment: a file-size limit or a bad block stays behind.
                    if ftruncate(fd, off_t(segmentSize)) != 0 {
                        logger.error("cannot cut a failed write off the journal segment", metadata: ["errno": "\(errno)"])
                    }
                    mustRoll = segmentSize > 0
                }
            }
            // On failure the appends in the batch fail (their senders hear it and retry); the
            // records that are not appends (settlements, attempts, dead letters) are written again
            // with the next batch.
            let retained = failure == nil ? [] : batch.filter { !$0.isMessage }
            let toDelete = state.withLockedValue { s -> [UInt64] in
                s.fsyncs += 1
                s.pendingBytes -= batch.reduce(0) { $0 + $1.bytes.readableBytes } - retained.reduce(0) { $0 + $1.bytes.readableBytes }
                s.failure = failure
                if failure != nil {
                    if !retained.isEmpty && s.queue.isEmpty { s.queuedSince = DispatchTime.now().uptimeNanoseconds }
                    s.queue = retained + s.queue
                    return []
                }
                let segment = s.activeSegment
                for item in batch where !item.deadLetterFile {
                    if item.isMessage {
                        s.segmentOfSequence[item.sequence] = segment
                        s.unsettledBySegment[segment, default: 0] += 1
                        s.bytesOfSequence[item.sequence] = item.bytes.readableBytes
                        s.unsettledBytes += item.bytes.readableBytes
                    } else if item.settles, let of = s.segmentOfSequence.removeValue(forKey: item.sequence) {
                        s.unsettledBySegment[of, default: 1] -= 1
                        s.unsettledBytes -= s.bytesOfSequence.removeValue(forKey: item.sequence) ?? 0
                    }
                }
                // Only a prefix of settled segments goes: a settlement record always lives in a
                // segment at or after its message's, so it outlives the message's segment.
                var deletable: [UInt64] = []
                while let oldest = s.liveSegments.first, oldest != s.activeSegment, (s.unsettledBySegment[oldest] ?? 0) <= 0 {
                    s.liveSegments.removeFirst()
                    s.unsettledBySegment.removeValue(forKey: oldest)
                    deletable.append(oldest)
                }
                return deletable
            }
            commitTimer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - commitStart))
            fsyncCounter.increment()
            for segment in toDelete { unlink(Self.segmentPath(directory, segment)) }
            if failure == nil, letterIndex.deadBytes >= options.deadLetterCompactionBytes, letterIndex.deadBytes > letterIndex.liveBytes {
                compactDeadLetters(&deadLetters, index: &letterIndex, size: &lettersSize)
            }
            Self.complete(batch, failure: failure)
            if let failure {
                writeErrors.increment()
                if failures == 0 {
                    logger.error("journal write failed; appends fail (HTTP 503) until a write succeeds", metadata: ["error": "\(failure)"])
                }
                failures += 1
                if closing {
                    logger.error("journal closing while writes fail", metadata: ["records_not_written": "\(retained.count)"])
                    break
                }
            } else {
                appendCounter.increment(by: batch.reduce(0) { $0 + ($1.isMessage ? 1 : 0) })
                if failures > 0 { logger.notice("journal writes succeed again", metadata: ["failed_batches": "\(failures)"]) }
                failures = 0
            }
        }
        if options.sync {
            fdatasync(fd)
            fdatasync(deadLetters)
        }
        Glibc.close(fd)
        Glibc.close(deadLetters)
        state.withLockedValue { $0.closed = true }
        wakeup.signal()
    }

    /// Completes a batch's appends with one task per event loop rather than one cross-thread
    /// hand-off per record.
    static func complete(_ batch: [Pending], failure: String?) {
        var byLoop: [ObjectIdentifier: (loop: any EventLoop, items: [(EventLoopPromise<UInt64>, UInt64)])] = [:]
        for item in batch {
            guard let promise = item.promise else { continue }
            let loop = promise.futureResult.eventLoop
            byLoop[ObjectIdentifier(loop), default: (loop, [])].items.append((promise, item.sequence))
        }
        for (_, group) in byLoop {
            let items = group.items
            group.loop.execute {
                for (promise, sequence) in items {
                    if let failure { promise.fail(JournalError(failure)) } else { promise.succeed(sequence) }
                }
            }
        }
    }

    private func writeAll(_ fd: Int32, _ buffer: inout ByteBuffer) -> String? {
        while buffer.readableBytes > 0 {
            let n = buffer.withUnsafeReadableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return "write failed: errno \(errno)"
            }
            buffer.moveReaderIndex(forwardBy: n)
        }
        buffer.clear()
        return nil
    }

    /// Writes what is queued, stops the writer and waits for it.
    public func close() {
        state.withLockedValue { $0.closing = true }
        wakeup.signal()
        wakeup.wait(until: { self.state.withLockedValue { $0.closed } })
    }

    // MARK: - Dead letters

    /// Reads `dead-letters.log` back and rewrites it with only the live entries (compaction).
    static func recoverDeadLetters(directory: String, maxRecord: Int) throws -> ([DeadLetter], LetterIndex, [String]) {
        let path = "\(directory)/\(deadLetterFile)"
        guard access(path, F_OK) == 0 else { return ([], LetterIndex(), []) }
        let scan = try Recovery.scan(path: path, isLast: true, maxRecord: maxRecord)
        var problems = scan.problems
        var live: [UInt64: DeadLetter] = [:]
        for record in scan.records {
            switch record.kind {
            case .deadLetter:
                var body = record.body
                guard var letter = DeadLetterCodec.decode(&body) else {
                    problems.append("\(path): dead letter \(record.sequence) is undecodable; skipped")
                    continue
                }
                letter.key = record.sequence
                live[record.sequence] = letter
            case .deadLetterRemoved:
                live.removeValue(forKey: record.sequence)
            default:
                problems.append("\(path): unexpected record kind \(record.kind.rawValue); skipped")
            }
        }
        let letters = live.values.sorted { $0.key < $1.key }
        var compacted = ByteBuffer()
        var index = LetterIndex()
        for letter in letters {
            var frame = Journal.frame(kind: .deadLetter, sequence: letter.key) { DeadLetterCodec.encode(letter, into: &$0) }
            index.live[letter.key] = (compacted.writerIndex, frame.readableBytes)
            index.liveBytes += frame.readableBytes
            compacted.writeBuffer(&frame)
        }
        let tmp = path + ".tmp"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw JournalError("cannot write \(tmp): errno \(errno)") }
        while compacted.readableBytes > 0 {
            let n = compacted.withUnsafeReadableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard n >= 0 else {
                Glibc.close(fd)
                throw JournalError("cannot write \(tmp): errno \(errno)")
            }
            compacted.moveReaderIndex(forwardBy: n)
        }
        fsync(fd)
        Glibc.close(fd)
        guard rename(tmp, path) == 0 else { throw JournalError("cannot replace \(path): errno \(errno)") }
        return (letters, index, problems)
    }

    // MARK: - Files

    static func segmentPath(_ directory: String, _ first: UInt64) -> String {
        let digits = String(first)
        return "\(directory)/segment-\(String(repeating: "0", count: max(0, 20 - digits.count)) + digits).log"
    }

    static func listSegments(_ directory: String) throws -> [UInt64] {
        guard let dir = opendir(directory) else { throw JournalError("cannot read \(directory): errno \(errno)") }
        defer { closedir(dir) }
        var firsts: [UInt64] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix("segment-"), name.hasSuffix(".log"), let n = UInt64(name.dropFirst(8).dropLast(4)) {
                firsts.append(n)
            }
        }
        return firsts.sorted()
    }

    static func mkdirAll(_ path: String) -> Bool {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/\(part)"
            if mkdir(current, 0o700) != 0 && errno != EEXIST { return false }
        }
        return true
    }
}

/// Where each live dead letter sits in `dead-letters.log`, and how many bytes are dead.
struct LetterIndex: Sendable {
    var live: [UInt64: (offset: Int, length: Int)] = [:]
    var liveBytes = 0
    var deadBytes = 0

    /// Accounts for frames just appended at `offset`, in order.
    mutating func wrote(_ items: [Journal.Pending], at offset: Int) {
        var at = offset
        for item in items {
            let length = item.bytes.readableBytes
            let kind = item.bytes.getInteger(at: item.bytes.readerIndex + 8, as: UInt8.self)
            if let old = live.removeValue(forKey: item.sequence) {
                liveBytes -= old.length
                deadBytes += old.length
            }
            if kind == Journal.Kind.deadLetter.rawValue {
                live[item.sequence] = (at, length)
                liveBytes += length
            } else {
                deadBytes += length  // a removal record is dead once written
            }
            at += length
        }
    }
}

extension Journal {
    /// Rewrites `dead-letters.log` with its live entries only (read back from the file), then
    /// swaps it in. On any error the old file stays as it is.
    func compactDeadLetters(_ fd: inout Int32, index: inout LetterIndex, size: inout Int) {
        let path = "\(directory)/\(Self.deadLetterFile)"
        let tmp = path + ".tmp"
        var out = ByteBuffer()
        var fresh = LetterIndex()
        for (key, place) in index.live.sorted(by: { $0.value.offset < $1.value.offset }) {
            var bytes = [UInt8](repeating: 0, count: place.length)
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, place.length, off_t(place.offset)) }
            guard n == place.length else {
                logger.error("dead-letter compaction skipped: cannot read the file back", metadata: ["errno": "\(errno)"])
                return
            }
            fresh.live[key] = (out.writerIndex, place.length)
            fresh.liveBytes += place.length
            out.writeBytes(bytes)
        }
        // Opened as the dead-letter file will be used: after the rename it simply is that file.
        let tmpFD = Glibc.open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard tmpFD >= 0 else {
            logger.error("dead-letter compaction skipped", metadata: ["error": "cannot create \(tmp): errno \(errno)"])
            return
        }
        let newSize = out.readableBytes
        let failure = writeAll(tmpFD, &out) ?? (fsync(tmpFD) != 0 ? "fsync failed: errno \(errno)" : nil)
        if let failure {
            Glibc.close(tmpFD)
            unlink(tmp)
            logger.error("dead-letter compaction skipped", metadata: ["error": "\(failure)"])
            return
        }
        guard rename(tmp, path) == 0 else {
            Glibc.close(tmpFD)
            unlink(tmp)
            logger.error("dead-letter compaction skipped", metadata: ["error": "cannot replace \(path): errno \(errno)"])
            return
        }
        let dirFD = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            fsync(dirFD)  // the rename itself is durable
            Glibc.close(dirFD)
        }
        let reclaimed = size - newSize
        Glibc.close(fd)
        fd = tmpFD
        index = fresh
        size = newSize
        logger.info("dead letters compacted", metadata: ["live": "\(fresh.live.count)", "reclaimed_bytes": "\(reclaimed)"])
    }
}

extension Journal: DeadLetterPersistence {
    /// Written by the writer thread with the next batch, fsynced before that batch's journal records.
    public func added(_ letter: DeadLetter) {
        let frame = Self.frame(kind: .deadLetter, sequence: letter.key) { DeadLetterCodec.encode(letter, into: &$0) }
        enqueue(frame, sequence: letter.key, deadLetterFile: true)
    }

    public func removed(keys: [UInt64]) {
        for key in keys { enqueue(Self.frame(kind: .deadLetterRemoved, sequence: key), sequence: key, deadLetterFile: true) }
    }
}

public struct JournalError: Error, Sendable, CustomStringConvertible {
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}
