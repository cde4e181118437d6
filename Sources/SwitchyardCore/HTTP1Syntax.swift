public import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Byte-level pieces of HTTP/1.1 syntax (RFC 9112) shared by the server codec, the
/// forwarder's response parser and the benchmark's sink: heads are read in place, and only
/// the parts a caller keeps become Strings.
public enum HTTP1Syntax {
    /// Bytes up to and including the blank line that ends a head, if it has arrived.
    @inlinable public static func headLength(_ buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes in
            guard bytes.count >= 4 else { return nil }
            var i = 0
            while i <= bytes.count - 4 {
                if bytes[i + 3] != 10 {
                    i += bytes[i + 3] == 13 ? 1 : 4
                    continue
                }
                if bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 { return i + 4 }
                i += 1
            }
            return nil
        }
    }

    /// The length of the line at the start of `bytes` without its CR LF, if a CR LF has arrived.
    /// (Each CR is found by `memchr`, which reads many bytes per step: this runs over every
    /// line of every head.)
    public static func lineLength(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard let base = bytes.baseAddress, bytes.count >= 2 else { return nil }
        var from = 0
        while from < bytes.count - 1, let cr = memchr(base + from, 13, bytes.count - 1 - from) {
            let i = base.distance(to: UnsafeRawPointer(cr))
            if bytes[i + 1] == 10 { return i }
            from = i + 1
        }
        return nil
    }

    /// The bytes are exactly `text` (a fixed token: a version, a method).
    @inline(__always) public static func bytes(_ bytes: UnsafeRawBufferPointer, are text: StaticString) -> Bool {
        bytes.count == text.utf8CodeUnitCount && (bytes.isEmpty || memcmp(bytes.baseAddress!, text.utf8Start, bytes.count) == 0)
    }

    /// Digits only, at most 18 of them (a length, never negative or signed).
    public static func decimal(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 18 else { return nil }
        var n = 0
        for b in bytes {
            guard b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") else { return nil }
            n = n * 10 + Int(b - UInt8(ascii: "0"))
        }
        return n
    }

    /// A chunk size: 1…15 hex digits, optionally followed by whitespace and `;` extensions
    /// (ignored). Nil for anything else.
    public static func chunkSize(_ line: UnsafeRawBufferPointer) -> Int? {
        var n = 0
        var digits = 0
        var i = 0
        while i < line.count, let v = hexValue(line[i]) {
            n = n << 4 | v
            digits += 1
            i += 1
        }
        guard digits > 0, digits <= 15 else { return nil }
        while i < line.count && (line[i] == 0x20 || line[i] == 0x09) { i += 1 }
        guard i == line.count || line[i] == UInt8(ascii: ";") else { return nil }
        return n
    }

    private static func hexValue(_ b: UInt8) -> Int? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(b - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(b - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(b - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    /// Without leading and trailing spaces and tabs.
    @inlinable public static func trimmed(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var start = 0
        var end = bytes.count
        while start < end && (bytes[start] == 0x20 || bytes[start] == 0x09) { start += 1 }
        while end > start && (bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09) { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: bytes[start..<end])
    }

    /// A header name compared with a lowercase one, ignoring ASCII case.
    @inlinable public static func name(_ bytes: UnsafeRawBufferPointer, is lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        let expected = UnsafeRawBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        for i in 0..<bytes.count {
            let b = bytes[i]
            let lower = b >= 0x41 && b <= 0x5A ? b | 0x20 : b
            if lower != expected[i] { return false }
        }
        return true
    }

    /// A header name that begins with a lowercase prefix, ignoring ASCII case.
    @inlinable public static func name(_ bytes: UnsafeRawBufferPointer, hasPrefix lowercase: StaticString) -> Bool {
        guard bytes.count >= lowercase.utf8CodeUnitCount else { return false }
        return name(UnsafeRawBufferPointer(rebasing: bytes[..<lowercase.utf8CodeUnitCount]), is: lowercase)
    }

    /// `HTTP/1.x NNN[ reason]` (runs of spaces allowed before the code): the code, 100…999,
    /// and where the reason phrase starts (`line.count` when there is none).
    public static func statusLine(_ line: UnsafeRawBufferPointer) -> (code: Int, reason: Int)? {
        guard line.count >= 12, line.starts(with: "HTTP/1.".utf8), line[8] == 0x20 else { return nil }
        var i = 8
        while i < line.count && line[i] == 0x20 { i += 1 }
        guard i + 3 <= line.count, i + 3 == line.count || line[i + 3] == 0x20 else { return nil }
        guard let code = decimal(UnsafeRawBufferPointer(rebasing: line[i..<(i + 3)])), code >= 100 else { return nil }
        return (code, min(i + 4, line.count))
    }

    /// Hop-by-hop header names (RFC 9110 §7.6.1): never passed on by a proxy.
    @inlinable public static func isHopByHop(_ name: UnsafeRawBufferPointer) -> Bool {
        switch name.count {
        case 2: self.name(name, is: "te")
        case 7: self.name(name, is: "upgrade") || self.name(name, is: "trailer")
        case 10: self.name(name, is: "connection") || self.name(name, is: "keep-alive")
        case 16: self.name(name, is: "proxy-connection")
        case 19: self.name(name, is: "proxy-authorization")
        default: false
        }
    }

    public static func isHopByHop(_ name: String) -> Bool {
        name.withUTF8Bytes { isHopByHop($0) }
    }

    /// A header name compared with a lowercase one, ignoring ASCII case (no String made).
    public static func name(_ name: String, is lowercase: StaticString) -> Bool {
        name.withUTF8Bytes { self.name($0, is: lowercase) }
    }

    /// A comma-separated header value (`connection: keep-alive, Upgrade`) holds `lowercase` as
    /// one of its elements, ignoring ASCII case and surrounding spaces.
    public static func list(_ value: String, contains lowercase: StaticString) -> Bool {
        value.withUTF8Bytes { list($0, contains: lowercase) }
    }

    public static func list(_ bytes: UnsafeRawBufferPointer, contains lowercase: StaticString) -> Bool {
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: ",") { end += 1 }
            if name(trimmed(UnsafeRawBufferPointer(rebasing: bytes[start..<end])), is: lowercase) { return true }
            start = end + 1
        }
        return false
    }

    /// The field names a `Connection` value nominates as this hop's own (RFC 9110 §7.6.1: a
    /// proxy removes them before passing a message on), lowercased; the options that are not
    /// field names or are hop-by-hop anyway (`close`, `keep-alive`, `upgrade`) are left out, and
    /// so are the fields that frame or address the message (`content-length`,
    /// `transfer-encoding`, `host`): a peer cannot make a proxy drop those.
    public static func nominatedFields(_ bytes: UnsafeRawBufferPointer) -> [String] {
        connectionOptions(bytes).nominated
    }

    /// A `Connection` value read once: whether it says `close`, whether it says `keep-alive`,
    /// and the field names it nominates (as `nominatedFields`).
    public static func connectionOptions(_ bytes: UnsafeRawBufferPointer) -> (close: Bool, keepAlive: Bool, nominated: [String]) {
        var close = false
        var keepAlive = false
        var names: [String] = []
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: ",") { end += 1 }
            let option = trimmed(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            start = end + 1
            if name(option, is: "close") {
                close = true
            } else if name(option, is: "keep-alive") {
                keepAlive = true
            } else if !option.isEmpty, !isHopByHop(option), option.allSatisfy(isTokenByte),
                !(name(option, is: "content-length") || name(option, is: "transfer-encoding") || name(option, is: "host"))
            {
                names.append(String(decoding: option.map { $0 | (($0 >= 0x41 && $0 <= 0x5A) ? 0x20 : 0) }, as: UTF8.self))
            }
        }
        return (close, keepAlive, names)
    }

    public static func nominatedFields(_ value: String) -> [String] {
        value.withUTF8Bytes { nominatedFields($0) }
    }

    /// A `tchar` of RFC 9110 (§5.6.2): what methods and header names are made of.
    /// (Two bit masks, bytes 0–63 and 64–127: no global's once-check or bounds check per byte.)
    @inline(__always)
    @inlinable public static func isTokenByte(_ b: UInt8) -> Bool {
        if b < 64 { return (0x03FF_6CFA_0000_0000 as UInt64) >> UInt64(b) & 1 == 1 }
        if b < 128 { return (0x57FF_FFFF_C7FF_FFFE as UInt64) >> UInt64(b - 64) & 1 == 1 }
        return false
    }

    /// A byte a header value may hold: visible ASCII, obs-text (≥ 0x80), space and tab.
    @inline(__always)
    @inlinable public static func isFieldValueByte(_ b: UInt8) -> Bool { b >= 0x20 ? b != 0x7F : b == 0x09 }

}
