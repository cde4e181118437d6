/// A cursor over JSON text that reads strings and skips values without building a tree:
/// nested objects and arrays are skipped with a depth counter (no recursion), so a
/// 10k-deep document costs a scan, never a stack overflow. Used where only a few fields
/// matter (tag rules on one field, the items of a message batch).
@frozen public struct JSONScanner<Bytes: Collection<UInt8>> where Bytes.Index == Int {
    public let json: Bytes
    public var index: Int

    @inlinable public init(_ json: Bytes) {
        self.json = json
        index = json.startIndex
    }

    @inlinable public var atEnd: Bool { index >= json.endIndex }

    @inlinable public mutating func skipSpace() {
        while index < json.endIndex, json[index] == 0x20 || json[index] == 0x0A || json[index] == 0x0D || json[index] == 0x09 {
            index += 1
        }
    }

    /// After spaces: whether the next byte is `byte` (consumed when it is).
    @inlinable public mutating func take(_ byte: UInt8) -> Bool {
        skipSpace()
        guard index < json.endIndex, json[index] == byte else { return false }
        index += 1
        return true
    }

    /// After spaces, the next byte without consuming it.
    @inlinable public mutating func peek() -> UInt8? {
        skipSpace()
        return index < json.endIndex ? json[index] : nil
    }

    /// Reads a string (after spaces), unescaped; nil when there is none or it is malformed.
    @inlinable public mutating func readString() -> String? {
        skipSpace()
        guard index < json.endIndex, json[index] == UInt8(ascii: "\"") else { return nil }
        index += 1
        let start = index
        // The common case, no escapes: one validated copy.
        while index < json.endIndex, json[index] != UInt8(ascii: "\""), json[index] != UInt8(ascii: "\\"), json[index] >= 0x20 {
            index += 1
        }
        if index < json.endIndex, json[index] == UInt8(ascii: "\"") {
            index += 1
            return String(validating: json[start..<(index - 1)], as: UTF8.self)
        }
        var bytes = Array(json[start..<index])
        while index < json.endIndex {
            let c = json[index]
            if c == UInt8(ascii: "\"") {
                index += 1
                return String(validating: bytes, as: UTF8.self)
            }
            if c < 0x20 { return nil }  // raw control characters are not allowed in JSON strings
            if c == UInt8(ascii: "\\") {
                index += 1
                guard index < json.endIndex else { return nil }
                switch json[index] {
                case UInt8(ascii: "n"): bytes.append(0x0A)
                case UInt8(ascii: "t"): bytes.append(0x09)
                case UInt8(ascii: "r"): bytes.append(0x0D)
                case UInt8(ascii: "b"): bytes.append(0x08)
                case UInt8(ascii: "f"): bytes.append(0x0C)
                case UInt8(ascii: "u"):
                    guard let scalar = readUnicodeEscape() else { return nil }
                    bytes.append(contentsOf: Array(String(Character(scalar)).utf8))
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): bytes.append(json[index])
                default: return nil
                }
                index += 1
                continue
            }
            bytes.append(c)
            index += 1
        }
        return nil
    }

    /// At the `u` of `\uXXXX` (a surrogate pair takes both escapes); leaves the index on the last hex digit.
    @usableFromInline mutating func readUnicodeEscape() -> Unicode.Scalar? {
        func hex4(at i: Int) -> UInt32? {
            guard i + 4 <= json.endIndex else { return nil }
            return UInt32(String(decoding: json[i..<(i + 4)], as: UTF8.self), radix: 16)
        }
        guard let high = hex4(at: index + 1) else { return nil }
        index += 4
        if (0xD800..<0xDC00).contains(high) {
            guard index + 6 < json.endIndex, json[index + 1] == UInt8(ascii: "\\"), json[index + 2] == UInt8(ascii: "u"),
                let low = hex4(at: index + 3), (0xDC00..<0xE000).contains(low)
            else { return nil }
            index += 6
            return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        }
        return Unicode.Scalar(high)
    }

    /// A string without escapes, as the range of its bytes (between the quotes), checked to
    /// be UTF-8 — no String made. Nil (and nothing consumed) for anything else, escapes
    /// included: `readString` then takes it.
    @inlinable public mutating func readPlainString() -> Range<Int>? {
        skipSpace()
        guard index < json.endIndex, json[index] == UInt8(ascii: "\"") else { return nil }
        var end = index + 1
        while end < json.endIndex, json[end] != UInt8(ascii: "\""), json[end] != UInt8(ascii: "\\"), json[end] >= 0x20 { end += 1 }
        guard end < json.endIndex, json[end] == UInt8(ascii: "\""), UTF8Validation.isValid(json[(index + 1)..<end]) else { return nil }
        defer { index = end + 1 }
        return (index + 1)..<end
    }

    public enum Value: Equatable {
        case string(String)
        /// A number, `true`, `false` or `null`, as written.
        case scalar(String)
        /// An object or array; its text is `json[range]`.
        case composite
    }

    /// Skips one value (after spaces). `range` is its text; nil when malformed.
    @inlinable public mutating func skipValue() -> (value: Value, range: Range<Int>)? {
        skipSpace()
        guard index < json.endIndex else { return nil }
        let start = index
        let c = json[index]
        if c == UInt8(ascii: "\"") {
            guard let s = readString() else { return nil }
            return (.string(s), start..<index)
        }
        if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
            var depth = 0
            var inString = false
            while index < json.endIndex {
                let b = json[index]
                if inString {
                    if b == UInt8(ascii: "\\") {
                        index += 2
                        continue
                    }
                    if b == UInt8(ascii: "\"") { inString = false }
                } else if b == UInt8(ascii: "\"") {
                    inString = true
                } else if b == UInt8(ascii: "{") || b == UInt8(ascii: "[") {
                    depth += 1
                } else if b == UInt8(ascii: "}") || b == UInt8(ascii: "]") {
                    depth -= 1
                    if depth == 0 {
                        index += 1
                        return (.composite, start..<index)
                    }
                }
                index += 1
            }
            return nil
        }
        while index < json.endIndex,
            ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x0A, 0x0D, 0x09].contains(json[index])
        {
            index += 1
        }
        guard index > start else { return nil }
        let text = String(decoding: json[start..<index], as: UTF8.self)
        guard text == "true" || text == "false" || text == "null" || Double(text) != nil else { return nil }
        return (.scalar(text), start..<index)
    }
}
