public import NIOCore

/// Minimal JSON string quoting for hand-built response bodies on hot paths.
public enum JSONText {
    public static func quote(_ s: String) -> String {
        var out = "\""
        out.reserveCapacity(s.utf8.count + 2)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// `quote(s)` written straight into `buffer` as bytes.
    public static func writeQuoted(_ s: String, into buffer: inout ByteBuffer) {
        s.withUTF8Bytes { writeQuoted(utf8: $0, into: &buffer) }
    }

    /// Whether any of the eight bytes is below 0x20, `"` or `\\` (no false negatives; the
    /// bytes are then looked at one by one).
    @inline(__always)
    static func mayNeedEscaping(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        let below20 = (word &- ones &* 0x20) & ~word & high
        let quote = word ^ (ones &* 0x22)
        let backslash = word ^ (ones &* 0x5C)
        return (below20 | ((quote &- ones) & ~quote & high) | ((backslash &- ones) & ~backslash & high)) != 0
    }

    /// An unsigned integer's decimal digits, without making a String; zero-padded to
    /// `minimumDigits` (at most 20, the digits of `UInt64.max`).
    public static func writeDecimal(_ value: UInt64, into buffer: inout ByteBuffer, minimumDigits: Int = 1) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: UInt64.max has 20 digits
        withUnsafeMutableBytes(of: &digits) { scratch in
            var v = value
            var start = scratch.count
            let first = scratch.count - min(max(minimumDigits, 1), 20)
            repeat {
                start -= 1
                scratch[start] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
            } while v > 0 || start > first
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: scratch[start...]))
        }
    }

    /// Quotes text that is valid UTF-8 (the caller checked) into `buffer`.
    public static func writeQuoted(utf8 bytes: UnsafeRawBufferPointer, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "\""))
        var clean = 0  // start of the run that needs no escaping
        var i = 0
        while i < bytes.count {
            // Eight bytes at a time while none of them needs escaping.
            while i + 8 <= bytes.count, !mayNeedEscaping(bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)) { i += 8 }
            guard i < bytes.count else { break }
            let b = bytes[i]
            i += 1
            guard b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") else { continue }
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[clean..<(i - 1)]))
            switch b {
            case UInt8(ascii: "\""): buffer.writeStaticString("\\\"")
            case UInt8(ascii: "\\"): buffer.writeStaticString("\\\\")
            case 0x0A: buffer.writeStaticString("\\n")
            case 0x0D: buffer.writeStaticString("\\r")
            case 0x09: buffer.writeStaticString("\\t")
            default:
                let hex = Array("0123456789abcdef".utf8)
                buffer.writeStaticString("\\u00")
                buffer.writeInteger(hex[Int(b >> 4)])
                buffer.writeInteger(hex[Int(b & 0xF)])
            }
            clean = i
        }
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[clean...]))
        buffer.writeInteger(UInt8(ascii: "\""))
    }
}

/// Percent-decoding that reports invalid escapes and invalid UTF-8 instead of guessing.
public enum PercentDecoding {
    /// (Inlinable: specialised where it is called, e.g. for every message's topic.)
    @inlinable
    public static func decode<S: StringProtocol>(_ text: S, plusAsSpace: Bool = false) -> String? {
        if !text.utf8.contains(where: { $0 == UInt8(ascii: "%") || (plusAsSpace && $0 == UInt8(ascii: "+")) }) {
            return String(text)  // nothing to decode (and `S` is valid Unicode already)
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var it = text.utf8.makeIterator()
        while let b = it.next() {
            if b == UInt8(ascii: "%") {
                guard let h = it.next(), let l = it.next(), let hi = hexValue(h), let lo = hexValue(l) else { return nil }
                bytes.append(hi << 4 | lo)
            } else if plusAsSpace && b == UInt8(ascii: "+") {
                bytes.append(0x20)
            } else {
                bytes.append(b)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    @usableFromInline
    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
