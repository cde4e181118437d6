import Synchronization

/// Cheap random 64-bit values for ids, trace ids and load balancing: a splitmix64 sequence
/// from a process-wide atomic counter, seeded once from the system generator. Not for
/// secrets (tokens use `SystemRandomNumberGenerator`), but unique and well mixed, and
/// without the `getrandom` syscall per value that the system generator costs on Linux.
public struct FastRandom: RandomNumberGenerator, Sendable {
    private static let state = Atomic<UInt64>(0)
    private static let seed: UInt64 = {
        var rng = SystemRandomNumberGenerator()
        return rng.next()
    }()

    public init() {}

    public mutating func next() -> UInt64 { Self.next() }

    public static func next() -> UInt64 {
        mix(state.wrappingAdd(golden, ordering: .relaxed).newValue &+ seed)
    }

    /// Three values from one step of the shared counter (one atomic update, not three: the
    /// counter's cache line is shared by every event loop). Distinct from all others, as
    /// `next()`'s are: each is splitmix64's bijective mix of its own point of the sequence.
    public static func next3() -> (UInt64, UInt64, UInt64) {
        let z = state.wrappingAdd(3 &* golden, ordering: .relaxed).newValue &+ seed
        return (mix(z &- 2 &* golden), mix(z &- golden), mix(z))
    }

    private static let golden: UInt64 = 0x9E37_79B9_7F4A_7C15

    private static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
