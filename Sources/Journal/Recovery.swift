import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// Reads a segment back, verifying each record's length and checksum.
enum Recovery {
    struct Record {
        var kind: Journal.Kind
        var sequence: UInt64
        var body: ByteBuffer
    }

    struct Result {
        var records: [Record] = []
        var problems: [String] = []
        var truncatedBytes = 0
    }

    /// A bad record whose frame is intact (the next record checks out) is skipped and reported;
    /// anything else from there on is a torn tail: truncated in the last segment, reported elsewhere.
    static func scan(path: String, isLast: Bool, maxRecord: Int) throws -> Result {
        var result = Result()
        let bytes = try readFile(path)
        var offset = 0

        /// The frame at `at`, if its length fits and its checksum matches.
        func frame(at: Int) -> (length: Int, ok: Bool)? {
            guard bytes.count - at >= 8 else { return nil }
            let length = Int(load(at))
            guard length >= 9, length <= maxRecord, at + 8 + length <= bytes.count else { return nil }
            let crc = load(at + 4)
            let actual = bytes[(at + 8)..<(at + 8 + length)].withUnsafeBytes { CRC32C.checksum($0) }
            return (length, crc == actual)
        }
        func load(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
        }

        /// Everything from `offset` on is lost: cut off in the last segment (appends continue
        /// after it), only reported in an older one.
        func cutTail(_ what: String) throws -> Result {
            let cut = bytes.count - offset
            if isLast {
                result.problems.append("\(path): \(what) at offset \(offset); truncated \(cut) bytes")
                result.truncatedBytes += cut
                guard truncate(path, off_t(offset)) == 0 else { throw JournalError("cannot truncate \(path): errno \(errno)") }
            } else {
                result.problems.append("\(path): \(what) at offset \(offset); \(cut) bytes ignored")
            }
            return result
        }

        while offset < bytes.count {
            guard let (length, ok) = frame(at: offset) else { return try cutTail("torn or corrupt record") }
            let next = offset + 8 + length
            if !ok {
                if next == bytes.count || frame(at: next)?.ok == true {
                    result.problems.append("\(path): record at offset \(offset) fails its checksum; skipped")
                    offset = next
                    continue
                }
                return try cutTail("corrupt record")
            }
            var body = ByteBuffer(bytes: bytes[(offset + 8)..<next])
            guard let kindByte = body.readInteger(as: UInt8.self), let kind = Journal.Kind(rawValue: kindByte),
                let sequence = body.readInteger(as: UInt64.self)
            else {
                result.problems.append("\(path): record at offset \(offset) has an unknown kind; skipped")
                offset = next
                continue
            }
            result.records.append(Record(kind: kind, sequence: sequence, body: body))
            offset = next
        }
        return result
    }

    static func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw JournalError("cannot open \(path): errno \(errno)") }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw JournalError("cannot read \(path): errno \(errno)")
            }
            if n == 0 { break }
            out += chunk[0..<n]
        }
        return out
    }
}
