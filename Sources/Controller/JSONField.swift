import SwitchyardCore

/// Reads one top-level field of a JSON object without parsing the rest: nested values
/// are skipped with a depth counter (no recursion), so a 10k-deep document costs a scan,
/// never a stack overflow. Strings are returned unescaped; numbers, `true`, `false`
/// and `null` as written. Objects and arrays return nil (only scalars are compared).
public enum JSONField {
    public static func value<Bytes: Collection<UInt8>>(of field: String, in json: Bytes) -> String? where Bytes.Index == Int {
        var scanner = JSONScanner(json)
        guard scanner.take(UInt8(ascii: "{")) else { return nil }
        if scanner.take(UInt8(ascii: "}")) { return nil }
        while true {
            guard let key = scanner.readString(), scanner.take(UInt8(ascii: ":")), let (value, _) = scanner.skipValue() else { return nil }
            if key == field {
                switch value {
                case .string(let s), .scalar(let s): return s
                case .composite: return nil
                }
            }
            guard scanner.take(UInt8(ascii: ",")) else { return nil }
        }
    }
}
