/// Hashes that never change between runs or machines (Swift's `Hasher` is seeded per process).
public enum StableHash {
    /// 64-bit FNV-1a.
    public static func fnv1a(_ text: String, seed: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
        var h = seed
        for byte in text.utf8 {
            h ^= UInt64(byte)
            h &*= 0x0000_0100_0000_01b3
        }
        return h
    }

    /// FNV-1a over `namespace`, a separator and `key`, finished with a 64-bit mixer so that
    /// the low digits are uniform; result in basis points 0..<10_000.
    public static func basisPoints(namespace: String, key: String) -> Int {
        var h = fnv1a(key, seed: fnv1a(namespace + "\u{1F}"))
        h ^= h >> 33
        h &*= 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h &*= 0xc4ce_b9fe_1a85_ec53
        h ^= h >> 33
        return Int(h % 10_000)
    }
}
