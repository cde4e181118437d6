public import NIOCore

/// Writes pieces into the memory a buffer reserved beforehand, one bounds check per piece
/// (ByteBuffer's own writes check capacity and uniqueness and move the writer index per call:
/// a head written piece by piece paid that some twenty times). HTTP heads and journal records
/// are written with it.
public struct ByteCursor {
    public let memory: UnsafeMutableRawBufferPointer
    /// Bytes written so far.
    public var count = 0

    @inlinable public init(_ memory: UnsafeMutableRawBufferPointer) { self.memory = memory }

    @inlinable public mutating func put(_ bytes: UnsafeRawBufferPointer) {
        precondition(count + bytes.count <= memory.count, "written past the space reserved")
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        (memory.baseAddress! + count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    @inlinable public mutating func put(_ string: String) {
        string.withUTF8Bytes { put($0) }
    }

    @inlinable public mutating func put(_ string: StaticString) {
        put(UnsafeRawBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    @inlinable public mutating func put(_ byte: UInt8) {
        precondition(count < memory.count, "written past the space reserved")
        memory[count] = byte
        count += 1
    }

    /// 16 lower-case hex digits.
    @inlinable public mutating func put(hex word: UInt64) {
        precondition(count + 16 <= memory.count, "written past the space reserved")
        memory.baseAddress!.storeBytes(of: Self.hexDigits(UInt32(truncatingIfNeeded: word >> 32)), toByteOffset: count, as: UInt64.self)
        memory.baseAddress!.storeBytes(of: Self.hexDigits(UInt32(truncatingIfNeeded: word)), toByteOffset: count + 8, as: UInt64.self)
        count += 16
    }

    /// The 8 hex digits of `half`, as the 8 bytes of a word in memory order (most significant
    /// digit first), computed a word at a time: each nibble spread to a byte of its own, then
    /// `'0'` added to each, and `'a' - '0' - 10` more to those above 9. (A trace context is 48
    /// digits per request.)
    @inlinable static func hexDigits(_ half: UInt32) -> UInt64 {
        var x = UInt64(half)
        x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF
        x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF
        x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F  // byte k holds nibble k (from the least significant)
        let aboveNine = ((x &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101
        let ascii = x &+ 0x3030_3030_3030_3030 &+ aboveNine &* 39
        return ascii.bigEndian  // nibble 7 first in memory
    }

    /// Big-endian, as `ByteBuffer.writeInteger`.
    @inlinable public mutating func put<T: FixedWidthInteger>(integer value: T) {
        precondition(count + MemoryLayout<T>.size <= memory.count, "written past the space reserved")
        memory.baseAddress!.storeBytes(of: value.bigEndian, toByteOffset: count, as: T.self)
        count += MemoryLayout<T>.size
    }

    /// Overwrites a big-endian integer written before (a length known only after what follows).
    @inlinable public func set<T: FixedWidthInteger>(integer value: T, at position: Int) {
        precondition(position >= 0 && position + MemoryLayout<T>.size <= count, "set outside what was written")
        memory.baseAddress!.storeBytes(of: value.bigEndian, toByteOffset: position, as: T.self)
    }
}

extension ByteBuffer {
    /// Writes through a cursor into `capacity` bytes reserved at once; writing more traps.
    @inlinable public mutating func write(capacity: Int, with body: (inout ByteCursor) -> Void) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { memory in
            var cursor = ByteCursor(memory)
            body(&cursor)
            return cursor.count
        }
    }
}
