import NIOCore
import SwitchyardCore
import Testing

/// Text helpers of the delivery path (SwitchyardCore): UTF-8 checked in place, decimals
/// written without Strings, JSON strings read without escapes as byte ranges.
@Suite struct CoreTextTests {
    /// `isValid` accepts exactly what `String(validating:)` accepts: edge sequences of the
    /// Unicode table, then random bytes biased towards lead and continuation bytes.
    @Test func utf8ValidationAgreesWithTheStandardLibrary() {
        let edges: [[UInt8]] = [
            [], [0x41], [0x7F], [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF], [0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0x9F, 0x80],
            [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xED, 0xA0, 0x80], [0xEF, 0xBF, 0xBF], [0xF0, 0x8F, 0x80, 0x80],
            [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFF],
            [0xE2, 0x82], [0xE2, 0x82, 0xAC], Array("0123456789abcdef€".utf8), Array("0123456\u{0}789abcdefg".utf8) + [0x80],
        ]
        let pool: [UInt8] = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF]
        var generator = SystemRandomNumberGenerator()
        let random = (0..<20_000).map { _ in (0..<Int.random(in: 0...24, using: &generator)).map { _ in pool.randomElement(using: &generator)! } }
        for bytes in edges + random {
            let expected = String(validating: bytes, as: UTF8.self) != nil
            #expect(bytes.withUnsafeBytes { UTF8Validation.isValid($0) } == expected, "\(bytes.map { String($0, radix: 16) })")
            #expect(UTF8Validation.isValid(bytes[...]) == expected)
        }
    }

    /// The token bytes of header names (two bit masks) are exactly RFC 9110's tchar.
    @Test func tokenBytesAreTheRFCsTchar() {
        let tchar = Set(Array("!#$%&'*+-.^_`|~0123456789".utf8) + Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8))
        for byte in 0...255 {
            #expect(HTTP1Syntax.isTokenByte(UInt8(byte)) == tchar.contains(UInt8(byte)), "byte \(byte)")
        }
    }

    /// The fields a Connection value names (for a proxy to remove): lowercased, without the
    /// options that are no field (close) or hop-by-hop anyway, nor what is no token.
    @Test func connectionNamesTheHopsOwnFields() {
        #expect(HTTP1Syntax.nominatedFields("keep-alive, X-Foo ,close,Upgrade, two words,,TE, x-bar") == ["x-foo", "x-bar"])
        #expect(HTTP1Syntax.nominatedFields("close").isEmpty && HTTP1Syntax.nominatedFields("").isEmpty)
        #expect(HTTP1Syntax.nominatedFields("Content-Length, transfer-encoding, Host, x-a") == ["x-a"])
        // Read once for all three answers.
        func options(_ value: String) -> (Bool, Bool, [String]) { value.withUTF8Bytes { HTTP1Syntax.connectionOptions($0) } }
        #expect(options("Keep-Alive") == (false, true, []))
        #expect(options(" close , X-Trace") == (true, false, ["x-trace"]))
        #expect(options("keep-alive, Upgrade, close") == (true, true, []))
        #expect(options("") == (false, false, []))
    }

    /// Hex digits a word at a time, as `String(_:radix:)` writes them (zero-padded to 16).
    @Test func hexDigitsMatchTheStandardLibrary() {
        var words: [UInt64] = [0, 1, 9, 10, 15, 16, 0xABCD_EF01_2345_6789, 0x0F0F_0F0F_F0F0_F0F0, .max, 1 << 63]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<1000 { words.append(rng.next()) }
        for word in words {
            var buffer = ByteBuffer()
            buffer.write(capacity: 16) { $0.put(hex: word) }
            let expected = String(repeating: "0", count: 16 - String(word, radix: 16).count) + String(word, radix: 16)
            #expect(String(buffer: buffer) == expected)
        }
    }

    /// A cursor writes its pieces (bridged or native strings, static strings, bytes) into the
    /// space reserved, and the buffer grows by exactly what was written; past it, it traps.
    @Test func aCursorWritesWithinItsSpace() async {
        var buffer = ByteBuffer(string: "<")
        let native = String(repeating: "é", count: 20)
        buffer.write(capacity: 64) { cursor in
            cursor.put(native)
            cursor.put(": ")
            cursor.put(UInt8(ascii: "!"))
        }
        #expect(String(buffer: buffer) == "<" + native + ": !")
        await #expect(processExitsWith: .failure) {
            var buffer = ByteBuffer()
            buffer.write(capacity: 4) { cursor in
                cursor.put(String(repeating: "x", count: cursor.memory.count + 1))
            }
        }
    }

    /// A shutdown's pause between checks pauses in a cancelled task too (`Task.sleep` returns
    /// at once there, and a drain loop would spin).
    @Test func aShutdownPauseWaitsInACancelledTask() async {
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            let started = ContinuousClock.now
            try? await Task.sleep(nanoseconds: 50_000_000)
            let slept = ContinuousClock.now - started
            await pauseEvenIfCancelled(nanoseconds: 50_000_000)
            return (slept, ContinuousClock.now - started - slept)
        }
        let (slept, paused) = await task.value
        #expect(slept < .milliseconds(40), "Task.sleep in a cancelled task returns at once")
        #expect(paused >= .milliseconds(45))
    }

    /// A fresh trace's `traceparent`, kept as numbers, is a valid one (version 00, sampled),
    /// differs from the next, and is written as bytes as its text reads; a caller's passes as it came.
    @Test func freshTraceparentsAreValidAndDistinct() {
        let fresh = Traceparent.fresh()
        let first = fresh.text
        let parsed = TraceContext(traceparent: first)
        #expect(parsed != nil && parsed?.traceparent == first, "\(first)")
        #expect(first.hasPrefix("00-") && first.hasSuffix("-01") && first.utf8.count == 55 && fresh.utf8Count == 55)
        #expect(Set((0..<100).map { _ in Traceparent.fresh().text }).count == 100)
        #expect(fresh.traceID == parsed?.traceID)
        for traceparent in [fresh, Traceparent(given: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")] {
            var buffer = ByteBuffer()
            buffer.write(capacity: traceparent.utf8Count) { traceparent.write(into: &$0) }
            #expect(String(buffer: buffer) == traceparent.text)
        }
    }

    /// Three values from one step of the counter are points of the same sequence as `next()`'s:
    /// none repeats, however the two are mixed.
    @Test func fastRandomValuesDoNotRepeat() {
        var seen: Set<UInt64> = []
        for _ in 0..<1000 {
            let (a, b, c) = FastRandom.next3()
            for value in [a, b, c, FastRandom.next()] { seen.insert(value) }
        }
        #expect(seen.count == 4000)
    }

    /// The envelope is a value: changing a copy's tags or headers in place leaves the other alone.
    @Test func envelopeCopiesStayApart() {
        var a = Envelope(id: "1", channel: "http", topic: "t", payload: ByteBuffer(), receivedAt: 0, trace: .generate())
        a.tags["kind"] = "event"
        var b = a
        b.tags["kind"] = "alarm"
        b.tags["x"] = "y"
        b.headers.append(HeaderField("h", "v"))
        #expect(a.tags == ["kind": "event"] && a.headers.isEmpty)
        #expect(b.tags == ["kind": "alarm", "x": "y"] && b.headers.count == 1)
        a.tags.removeValue(forKey: "kind")
        #expect(a.tags.isEmpty && b.tags["kind"] == "alarm")
    }

    /// Quoting into a buffer (eight bytes at a time where nothing needs escaping) writes what
    /// `quote` returns, for text with quotes, backslashes, control characters and non-ASCII
    /// at every position.
    @Test func quotingIntoABufferMatchesQuote() {
        let pieces = ["a", "bcdefgh", "\"", "\\", "\n", "\r", "\t", "\u{1}", "\u{1F}", " ", "é", "€", "😀", "0123456789abcdef", "\u{7F}"]
        var generator = SystemRandomNumberGenerator()
        let texts =
            [""] + pieces
            + (0..<5000).map { _ in (0..<Int.random(in: 0...12, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }.joined() }
        for text in texts {
            var buffer = ByteBuffer()
            JSONText.writeQuoted(text, into: &buffer)
            #expect(buffer.readString(length: buffer.readableBytes) == JSONText.quote(text), "\(text.debugDescription)")
        }
    }

    @Test func decimalsAreWrittenAsDigits() {
        var values: [UInt64] = [0, 9, 10, 99, 100, 1_000_000_007, UInt64.max]
        values += (0..<1000).map { _ in UInt64.random(in: 0...UInt64.max) >> UInt64.random(in: 0...63) }
        for v in values {
            var buffer = ByteBuffer()
            JSONText.writeDecimal(v, into: &buffer)
            #expect(buffer.readString(length: buffer.readableBytes) == String(v))
        }
        for (v, width, text) in [
            (0, 3, "000"), (42, 20, String(repeating: "0", count: 18) + "42"), (UInt64.max, 20, String(UInt64.max)), (7, 0, "7"),
        ] {
            var buffer = ByteBuffer()
            JSONText.writeDecimal(v, into: &buffer, minimumDigits: width)
            #expect(buffer.readString(length: buffer.readableBytes) == text)
        }
    }

    /// A string without escapes comes back as its byte range; escapes, control characters,
    /// an open string or bytes that are not UTF-8 leave the scanner where it was.
    @Test func plainStringsAreReadAsRanges() {
        func scan(_ bytes: [UInt8]) -> (range: Range<Int>?, index: Int, string: String?) {
            var scanner = JSONScanner(bytes)
            let range = scanner.readPlainString()
            let index = scanner.index
            return (range, index, range == nil ? scanner.readString() : nil)
        }
        #expect(scan(Array(#"  "abc" ,"#.utf8)).range == 3..<6)
        #expect(scan(Array(#"  "abc" ,"#.utf8)).index == 7)
        #expect(scan(Array(#""h€llo""#.utf8)).range == 1..<8)
        #expect(scan(Array(#""""#.utf8)).range == 1..<1)
        let escaped = scan(Array(#""a\"b\n""#.utf8))
        #expect(escaped.range == nil && escaped.string == "a\"b\n")
        #expect(scan([0x22, 0xFF, 0x22]).range == nil)
        #expect(scan([0x22, 0xFF, 0x22]).string == nil)  // and readString refuses it too
        #expect(scan([0x22, 0x61, 0x09, 0x22]).range == nil)  // a raw tab
        #expect(scan(Array(#""open"#.utf8)).range == nil)
        #expect(scan(Array("42".utf8)).range == nil)
    }
}
