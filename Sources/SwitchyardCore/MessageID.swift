/// Generates message ids: 32 hex digits, time-ordered prefix (milliseconds) + random suffix,
/// so ids sort roughly by arrival and never collide in practice.
public enum MessageID {
    public static func generate(nowNanos: UInt64 = WallClock.nowNanos()) -> String {
        var rng = FastRandom()
        let millis = nowNanos / 1_000_000
        return Hex.string(millis << 16 | (rng.next() & 0xFFFF), rng.next())
    }

    /// Sender-supplied ids must be printable, without spaces, and at most 128 bytes.
    public static func isValid(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128 && id.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }
}
