/// Well-formed UTF-8 (what `String(validating:as: UTF8.self)` accepts), checked in place:
/// no String is made just to learn that bytes are text.
public enum UTF8Validation {
    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let n = bytes.count
        var i = 0
        while i < n {
            // ASCII runs eight bytes at a time.
            while i + 8 <= n, bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 { i += 8 }
            guard i < n else { return true }
            let lead = bytes[i]
            if lead < 0x80 {
                i += 1
                continue
            }
            // Table 3-7 of the Unicode standard: no overlong forms, no surrogates, nothing past U+10FFFF.
            let length: Int
            var low: UInt8 = 0x80
            var high: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: length = 2
            case 0xE0: (length, low) = (3, 0xA0)
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: (length, high) = (3, 0x9F)
            case 0xF0: (length, low) = (4, 0x90)
            case 0xF1...0xF3: length = 4
            case 0xF4: (length, high) = (4, 0x8F)
            default: return false
            }
            guard i + length <= n, bytes[i + 1] >= low, bytes[i + 1] <= high else { return false }
            for k in 2..<length where bytes[i + k] & 0xC0 != 0x80 { return false }
            i += length
        }
        return true
    }

    /// `isValid` for any bytes: in place when they are contiguous.
    public static func isValid<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> Bool {
        if let valid = bytes.withContiguousStorageIfAvailable({ isValid(UnsafeRawBufferPointer($0)) }) { return valid }
        return Array(bytes).withUnsafeBytes { isValid($0) }
    }
}

extension String {
    /// The string's UTF-8 bytes in place (a bridged or otherwise non-contiguous string is made
    /// contiguous first): the one way the byte-level parsers and writers read a String.
    @inlinable public func withUTF8Bytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        // (In place without a copy: a copy retains the string's storage and releases it after.)
        if let result = try utf8.withContiguousStorageIfAvailable({ try body(UnsafeRawBufferPointer($0)) }) { return result }
        var contiguous = self
        return try contiguous.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
    }
}
