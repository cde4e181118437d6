import Foundation
import Logging
import NIOCore
import NIOPosix
import SwitchyardCore
import Testing

@testable import Journal

@Suite(.serialized) struct JournalTests {
    let loop = MultiThreadedEventLoopGroup.singleton.next()

    func tempDir() -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("journal-\(UUID().uuidString)").path
        return dir
    }

    func envelope(_ i: Int) -> Envelope {
        Envelope(
            id: "m-\(i)",
            channel: "http",
            topic: "devices/p/d\(i % 7)/t",
            product: "p",
            device: "d\(i % 7)",
            payload: ByteBuffer(string: "{\"seq\":\(i)}"),
            headers: [HeaderField("content-type", "application/json")],
            tags: ["kind": "t"],
            lane: i % 2 == 0 ? "gray" : nil,
            receivedAt: UInt64(i),
            trace: .generate(),
            clientAddress: try? SocketAddress(ipAddress: "127.0.0.1", port: 1),
            idFromSender: true
        )
    }

    func open(_ dir: String, segmentBytes: Int = 64 << 20) throws -> (Journal, RecoveryReport) {
        var options = JournalOptions()
        options.segmentBytes = segmentBytes
        return try Journal.open(directory: dir, options: options, logger: Logger(label: "test"))
    }

    func segments(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
    }

    /// Ten messages, the journal closed; returns the segment holding them.
    func writeTenAndClose(_ dir: String) async throws -> String {
        let (journal, _) = try open(dir)
        for i in 0..<10 { _ = try await journal.append(envelope(i), on: loop).get() }
        journal.close()
        return "\(dir)/\(segments(dir).last!)"
    }

    /// The writer's in-place settlement frame is the same bytes as a built one, wherever it
    /// lands in the batch buffer.
    @Test func settlementWrittenInPlaceIsTheSameFrame() {
        var batch = ByteBuffer(string: "earlier records")
        batch.moveReaderIndex(forwardBy: 3)
        for sequence: UInt64 in [1, 77, .max] {
            let start = batch.writerIndex
            Journal.writeSettlement(sequence, into: &batch)
            #expect(batch.getSlice(at: start, length: batch.writerIndex - start) == Journal.frame(kind: .settled, sequence: sequence))
        }
    }

    @Test func crc32cKnownAnswer() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        // RFC 3720 B.4: 32 bytes of zeros, of ones, ascending and descending.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
    }

    /// Eight bytes at a time gives the byte-by-byte result at every length, offset and seed.
    @Test func crc32cSlicedMatchesBytewise() {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<600).map { _ in UInt8.random(in: 0...255, using: &generator) }
        data.withUnsafeBytes { all in
            for start in 0..<9 {
                for length in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 300, 591] where start + length <= all.count {
                    let slice = UnsafeRawBufferPointer(rebasing: all[start..<(start + length)])
                    for seed: UInt32 in [0, 0xDEAD_BEEF] {
                        #expect(CRC32C.checksum(slice, seed: seed) == CRC32C.checksumBytewise(slice, seed: seed))
                    }
                }
            }
        }
    }

    @Test func envelopeRoundTrip() throws {
        let e = envelope(3)
        var buffer = ByteBuffer()
        EnvelopeCodec.encode(e, into: &buffer)
        let d = try #require(EnvelopeCodec.decode(&buffer))
        #expect(d.id == e.id && d.topic == e.topic && d.device == e.device && d.lane == e.lane && d.tags == e.tags)
        #expect(d.payload == e.payload && d.headers == e.headers && d.trace == e.trace && d.idFromSender)
        var truncated = ByteBuffer()
        EnvelopeCodec.encode(e, into: &truncated)
        truncated.moveWriterIndex(to: truncated.writerIndex - 3)
        #expect(EnvelopeCodec.decode(&truncated) == nil)
    }

    /// The client address is written as text (IPv4 formatted in place) and read back as given.
    @Test(arguments: ["0.0.0.0", "10.9.99.100", "192.168.1.255", "255.255.255.255", "::1", "2001:db8::7"])
    func clientAddressRoundTrip(_ ip: String) throws {
        var e = envelope(1)
        e.clientAddress = try SocketAddress(ipAddress: ip, port: 4000)
        var buffer = ByteBuffer()
        EnvelopeCodec.encode(e, into: &buffer)
        let d = try #require(EnvelopeCodec.decode(&buffer))
        #expect(d.clientAddress?.ipAddress == ip)
        #expect(d.payload == e.payload)
    }

    /// The one-pass encoder writes exactly the bytes of the field-by-field one (the on-disk
    /// format does not change): any address, tags (one, several, none), headers, empty parts.
    @Test func encoderMatchesTheFieldByFieldForm() throws {
        var cases: [Envelope] = []
        for (n, ip) in [nil, "0.0.0.0", "10.9.99.100", "255.255.255.255", "::1", "2001:db8::7"].enumerated() {
            var e = envelope(n)
            e.clientAddress = try ip.map { try SocketAddress(ipAddress: $0, port: 1) }
            cases.append(e)
        }
        var bare = Envelope(id: "", channel: "", topic: "", payload: ByteBuffer(), receivedAt: .max, trace: .generate(baggage: "k=v"))
        cases.append(bare)
        bare.tags = ["b": "2", "a": "1", "c": "3"]
        bare.headers = [HeaderField("x-ü", "wért"), HeaderField("e", "")]
        bare.product = "prödukt"
        bare.payload = ByteBuffer(bytes: (0..<1000).map { UInt8($0 % 256) })
        cases.append(bare)
        for e in cases {
            var fast = ByteBuffer()
            var reference = ByteBuffer()
            EnvelopeCodec.encode(e, into: &fast)
            EnvelopeCodec.encodeByFields(e, into: &reference)
            #expect(fast == reference)
            #expect(fast.readableBytes <= EnvelopeCodec.size(of: e))
            var decoded = fast
            #expect(EnvelopeCodec.decode(&decoded)?.tags == e.tags)
        }
    }

    @Test func noClientAddressRoundTrip() throws {
        var e = envelope(2)
        e.clientAddress = nil
        var buffer = ByteBuffer()
        EnvelopeCodec.encode(e, into: &buffer)
        #expect(try #require(EnvelopeCodec.decode(&buffer)).clientAddress == nil)
    }

    @Test func appendsSurviveReopenAndSettledOnesDoNot() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (journal, first) = try open(dir)
        #expect(first.unsettled.isEmpty)
        var sequences: [UInt64] = []
        for i in 0..<50 { sequences.append(try await journal.append(envelope(i), on: loop).get()) }
        #expect(sequences == Array(1...50))
        for s in sequences where s % 5 == 0 { journal.settle(s) }
        journal.close()

        let (again, report) = try open(dir)
        #expect(report.problems.isEmpty)
        #expect(report.unsettled.map(\.sequence) == sequences.filter { $0 % 5 != 0 })
        #expect(report.unsettled.first?.envelope.id == "m-0")
        #expect(try await again.append(envelope(99), on: loop).get() == 51)  // sequences continue
        again.close()
    }

    @Test func groupCommitBatchesFsyncs() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (journal, _) = try open(dir)
        let count = 2000
        let futures = (0..<count).map { journal.append(envelope($0), on: loop) }
        let sequences = try await EventLoopFuture.whenAllSucceed(futures, on: loop).get()
        #expect(Set(sequences).count == count)
        #expect(journal.fsyncCount < UInt64(count / 4), "fsyncs: \(journal.fsyncCount)")
        journal.close()
        let (_, report) = try open(dir)
        #expect(report.unsettled.count == count)
    }

    @Test func tornTailIsTruncatedAndReported() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try await writeTenAndClose(dir)
        let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as! Int
        #expect(truncate(file, off_t(size - 7)) == 0)  // the last record cut mid-way

        let (again, report) = try open(dir)
        #expect(report.unsettled.count == 9)
        #expect(report.problems.count == 1)
        #expect(report.problems.first?.contains("truncated") == true)
        #expect(report.truncatedBytes > 0)
        _ = try await again.append(envelope(10), on: loop).get()
        again.close()
        let (_, third) = try open(dir)
        #expect(third.problems.isEmpty)
        #expect(third.unsettled.count == 10)
    }

    @Test func flippedByteSkipsOnlyThatRecord() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try await writeTenAndClose(dir)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        let recordSize = bytes.count / 10  // records are the same size give or take a digit
        bytes[recordSize * 4 + 20] ^= 0xFF  // inside the fifth record's body
        try bytes.write(to: URL(fileURLWithPath: file))

        let (again, report) = try open(dir)
        #expect(report.problems.count == 1)
        #expect(report.problems.first?.contains("checksum") == true)
        #expect(report.unsettled.count == 9)
        again.close()
    }

    @Test func segmentsRollAndSettledOnesAreDeleted() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (journal, _) = try open(dir, segmentBytes: 2048)
        var sequences: [UInt64] = []
        for i in 0..<100 { sequences.append(try await journal.append(envelope(i), on: loop).get()) }
        #expect(segments(dir).count > 3)
        // Settling messages in the middle deletes nothing: only a settled prefix goes.
        for s in sequences[50...] { journal.settle(s) }
        _ = try await journal.append(envelope(100), on: loop).get()  // the settlements are written by now
        let before = segments(dir).count
        for s in sequences[..<50] { journal.settle(s) }
        _ = try await journal.append(envelope(101), on: loop).get()
        #expect(segments(dir).count < before)
        #expect(journal.unsettledCount == 2)
        journal.close()
        let (_, report) = try open(dir)
        #expect(report.unsettled.map(\.envelope.id) == ["m-100", "m-101"])
    }

    @Test func attemptNumbersGoOnAfterARestart() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (journal, _) = try open(dir)
        let a = try await journal.append(envelope(0), on: loop).get()
        let b = try await journal.append(envelope(1), on: loop).get()
        let c = try await journal.append(envelope(2), on: loop).get()
        journal.recordAttempt(a, attempt: 2)
        journal.recordAttempt(a, attempt: 4)
        journal.recordAttempt(a, attempt: 3)  // out of order: the highest counts
        journal.recordAttempt(c, attempt: 2)
        journal.settle(c)
        // An attempt record does not settle its message: its segment and bytes stay.
        _ = try await journal.append(envelope(3), on: loop).get()
        #expect(journal.unsettledCount == 3)
        journal.close()
        let (again, report) = try open(dir)
        defer { again.close() }
        let attempts = Dictionary(uniqueKeysWithValues: report.unsettled.map { ($0.sequence, $0.attempts) })
        #expect(attempts[a] == 4)
        #expect(attempts[b] == 1)  // never retried, but it may have been sent once
        #expect(attempts[c] == nil)  // settled
        #expect(report.problems.isEmpty)
    }

    @Test func deadLettersAreCompactedWhileRunning() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = JournalOptions()
        options.deadLetterCompactionBytes = 16 << 10
        let (journal, _) = try Journal.open(directory: dir, options: options, logger: Logger(label: "test"))
        let file = "\(dir)/\(Journal.deadLetterFile)"
        func size() -> Int { ((try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int) ?? -1 }
        func letter(_ key: UInt64) -> DeadLetter {
            var e = envelope(Int(key))
            e.payload = ByteBuffer(string: String(repeating: "p", count: 1000))
            return DeadLetter(key: key, id: "m-\(key)", route: "r", service: "s", reason: "expired", attempts: 2, lastError: "e", at: 1, envelope: e)
        }
        for key in 1...100 { journal.added(letter(UInt64(key))) }
        _ = try await journal.append(envelope(0), on: loop).get()  // the letters are written by now
        let full = size()
        #expect(full > 100_000)
        journal.removed(keys: (1...90).map(UInt64.init))  // 90 KB dead, 10 KB live: compacted
        _ = try await journal.append(envelope(1), on: loop).get()
        // The writer compacts between batches, on its own thread: on a loaded machine that can
        // come a batch later, so wait (bounded) for it rather than assume the next append saw it.
        var compacted = size()
        for _ in 0..<100 where compacted >= 10 * 1_100 + options.deadLetterCompactionBytes {
            try await Task.sleep(nanoseconds: 20_000_000)
            _ = try await journal.append(envelope(1), on: loop).get()
            compacted = size()
        }
        // Compaction runs between batches, so how the removals were grouped decides when it ran;
        // what is promised is that dead bytes stay under the threshold: ~10 KB live + < 16 KiB dead.
        #expect(compacted < 10 * 1_100 + options.deadLetterCompactionBytes, "\(compacted) of \(full) bytes left")
        // Appends after the compaction land in the new file.
        journal.added(letter(200))
        journal.removed(keys: [91])
        _ = try await journal.append(envelope(2), on: loop).get()
        #expect(size() > compacted)
        #expect(!FileManager.default.fileExists(atPath: file + ".tmp"))
        journal.close()
        let (again, report) = try Journal.open(directory: dir, options: options, logger: Logger(label: "test"))
        defer { again.close() }
        #expect(report.deadLetters.map(\.key) == Array(92...100).map(UInt64.init) + [200])
        #expect(report.deadLetters.first?.envelope.payload.readableBytes == 1000)
        #expect(report.problems.isEmpty)
    }

    @Test func aGroupOfAppendsGetsConsecutiveSequencesAndOneCompletion() async throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (journal, _) = try open(dir)
        let single = try await journal.append(envelope(0), on: loop).get()
        let group = try await journal.append(contentsOf: (1...5).map(envelope), on: loop).get()
        #expect(group == Array((single + 1)...(single + 5)))
        #expect(try await journal.append(contentsOf: [], on: loop).get().isEmpty)
        journal.settle(group[2])
        journal.close()
        let (again, report) = try open(dir)
        defer { again.close() }
        #expect(report.unsettled.map(\.envelope.id) == ["m-0", "m-1", "m-2", "m-4", "m-5"])
    }
}
