/// Reads one top-level field of a JSON object without parsing the rest: nested values
/// are skipped with a depth counter (no recursion), so a 10k-deep document costs a scan,
/// never a stack overflow. Strings are returned unescaped; numbers, `true`, `false`
/// and `null` as written. Objects and arrays return nil (only scalars are compared).
public enum JSONField {
    public static func value<Bytes: Collection<UInt8>>(of field: String, in json: Bytes) -> String? where Bytes.Index == Int {
        var i = json.startIndex
        let end = json.endIndex
        func skipSpace() {
            while i < end, json[i] == 0x20 || json[i] == 0x0A || json[i] == 0x0D || json[i] == 0x09 { i += 1 }
        }
        func readString() -> String? {  // at opening quote
            guard i < end, json[i] == UInt8(ascii: "\"") else { return nil }
            i += 1
            var bytes: [UInt8] = []
            while i < end {
                let c = json[i]
                if c == UInt8(ascii: "\"") {
                    i += 1
                    return String(validating: bytes, as: UTF8.self)
                }
                if c == UInt8(ascii: "\\") {
                    i += 1
                    guard i < end else { return nil }
                    switch json[i] {
                    case UInt8(ascii: "n"): bytes.append(0x0A)
                    case UInt8(ascii: "t"): bytes.append(0x09)
                    case UInt8(ascii: "r"): bytes.append(0x0D)
                    case UInt8(ascii: "b"): bytes.append(0x08)
                    case UInt8(ascii: "f"): bytes.append(0x0C)
                    case UInt8(ascii: "u"):
                        guard i + 4 < end, let code = UInt32(String(decoding: json[(i + 1)...(i + 4)], as: UTF8.self), radix: 16),
                            let scalar = Unicode.Scalar(code)
                        else { return nil }
                        bytes.append(contentsOf: Array(String(Character(scalar)).utf8))
                        i += 4
                    default: bytes.append(json[i])
                    }
                    i += 1
                    continue
                }
                bytes.append(c)
                i += 1
            }
            return nil
        }
        /// Skips one value; returns its text when scalar.
        func skipValue() -> (ok: Bool, scalar: String?) {
            skipSpace()
            guard i < end else { return (false, nil) }
            let c = json[i]
            if c == UInt8(ascii: "\"") {
                guard let s = readString() else { return (false, nil) }
                return (true, s)
            }
            if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
                var depth = 0
                var inString = false
                while i < end {
                    let b = json[i]
                    if inString {
                        if b == UInt8(ascii: "\\") { i += 2; continue }
                        if b == UInt8(ascii: "\"") { inString = false }
                    } else if b == UInt8(ascii: "\"") {
                        inString = true
                    } else if b == UInt8(ascii: "{") || b == UInt8(ascii: "[") {
                        depth += 1
                    } else if b == UInt8(ascii: "}") || b == UInt8(ascii: "]") {
                        depth -= 1
                        if depth == 0 { i += 1; return (true, nil) }
                    }
                    i += 1
                }
                return (false, nil)
            }
            let start = i
            while i < end, ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x0A, 0x0D, 0x09].contains(json[i]) {
                i += 1
            }
            guard i > start else { return (false, nil) }
            return (true, String(decoding: json[start..<i], as: UTF8.self))
        }

        skipSpace()
        guard i < end, json[i] == UInt8(ascii: "{") else { return nil }
        i += 1
        while true {
            skipSpace()
            guard i < end else { return nil }
            if json[i] == UInt8(ascii: "}") { return nil }
            guard let key = readString() else { return nil }
            skipSpace()
            guard i < end, json[i] == UInt8(ascii: ":") else { return nil }
            i += 1
            let (ok, scalar) = skipValue()
            guard ok else { return nil }
            if key == field { return scalar }
            skipSpace()
            guard i < end else { return nil }
            if json[i] == UInt8(ascii: ",") { i += 1; continue }
            return nil
        }
    }
}
