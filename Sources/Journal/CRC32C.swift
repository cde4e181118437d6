// Journal: the durable append-only log (segments, CRC32C-framed records, group commit,
// recovery). Acceptance means durability: a channel acknowledges only what is on disk.

/// CRC-32C (Castagnoli), the checksum of every journal record.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        var crc = ~seed
        table.withUnsafeBufferPointer { t in
            for b in bytes { crc = t[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        }
        return ~crc
    }

    public static func checksum<C: Collection<UInt8>>(_ bytes: C) -> UInt32 {
        Array(bytes).withUnsafeBytes { checksum($0) }
    }
}
