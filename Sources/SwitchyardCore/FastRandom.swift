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
        var z = state.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue &+ seed
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
