import SwitchyardCore
import Testing

@testable import HTTPIngress

/// The one-pass field-line reader (eight value bytes at a time) against the two-pass rule it
/// replaced, kept here as the reference: find the CR LF, then check the name's and the value's
/// bytes.
@Suite struct FieldLineTests {
    /// The rule as two passes, byte by byte: the reference.
    static func reference(_ raw: UnsafeRawBufferPointer, from start: Int) -> (name: [UInt8], value: [UInt8], next: Int)? {
        guard let n = HTTP1Syntax.lineLength(UnsafeRawBufferPointer(rebasing: raw[start...])) else { return nil }
        let line = UnsafeRawBufferPointer(rebasing: raw[start..<(start + n)])
        var colon = 0
        while colon < line.count && line[colon] != UInt8(ascii: ":") {
            guard HTTP1Syntax.isTokenByte(line[colon]) else { return nil }
            colon += 1
        }
        guard colon > 0, colon < line.count else { return nil }
        let value = HTTP1Syntax.trimmed(UnsafeRawBufferPointer(rebasing: line[(colon + 1)...]))
        guard value.allSatisfy(HTTP1Syntax.isFieldValueByte) else { return nil }
        return (Array(line[..<colon]), Array(value), start + n + 2)
    }

    static func onePass(_ raw: UnsafeRawBufferPointer, from start: Int) -> (name: [UInt8], value: [UInt8], next: Int)? {
        guard let line = HTTP1Message.fieldLine(raw, from: start) else { return nil }
        return (Array(raw[line.name]), Array(raw[line.value]), line.next)
    }

    @Test func readsLinesAsTheTwoPassRuleDoes() {
        let cases: [String] = [
            "Host: example.com\r\n",
            "host:example.com\r\nnext: 1\r\n",
            "X-Empty:\r\n",
            "X-Spaces:    \r\n",
            "X-Tab:\tvalue\twith\ttabs\t\r\n",
            "X-Long: " + String(repeating: "abcdefgh", count: 9) + "\r\n",
            "X-Long-Tab: " + String(repeating: "abcdefg\t", count: 5) + "\r\n",
            "Bad Name: x\r\n",
            "NoColon\r\n",
            ": no name\r\n",
            "X-Bare-LF: a\nb\r\n",
            "X-Bare-CR: abcdefghij\rk\r\n",
            "X-NUL: abcdefghijkl\u{0}mn\r\n",
            "X-DEL: abcdefghijkl\u{7F}mn\r\n",
            "X-Unit-Separator: abcdefghijk\u{1F}\r\n",
            "X-No-End: abcdefghijklmnop",
            "X-CR-At-End: abcdefgh\r",
            "\r\n",
        ]
        for text in cases {
            let bytes = Array(text.utf8)
            bytes.withUnsafeBytes { raw in
                let expected = Self.reference(raw, from: 0)
                let actual = Self.onePass(raw, from: 0)
                #expect(
                    actual?.name == expected?.name && actual?.value == expected?.value && actual?.next == expected?.next,
                    "\(text.debugDescription)"
                )
            }
        }
    }

    /// Random lines over the bytes that matter (controls, CR, LF, tab, space, colon, DEL,
    /// obs-text, letters) at every offset within a word: the same verdict and the same parts.
    @Test func agreesWithTheTwoPassRuleOnRandomLines() {
        let alphabet: [UInt8] = [0x00, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x3A, 0x7E, 0x7F, 0x80, 0xFF, 0x61, 0x62, 0x2D, 0x41]
        var rng = SystemRandomNumberGenerator()
        var accepted = 0
        for _ in 0..<20_000 {
            var bytes = Array("x-f:".utf8)
            for _ in 0..<Int.random(in: 0..<40, using: &rng) {
                // Mostly ordinary value bytes, so that lines long enough for whole words pass.
                bytes.append(Int.random(in: 0..<4, using: &rng) == 0 ? alphabet.randomElement(using: &rng)! : 0x61)
            }
            if Bool.random(using: &rng) { bytes += [0x0D, 0x0A] }
            bytes.withUnsafeBytes { raw in
                let expected = Self.reference(raw, from: 0)
                let actual = Self.onePass(raw, from: 0)
                if expected != nil { accepted += 1 }
                #expect(actual?.name == expected?.name && actual?.value == expected?.value && actual?.next == expected?.next, "\(bytes)")
            }
        }
        #expect(accepted > 1_000)  // (both verdicts were tried)
    }
}
