package import NIOCore

/// Writes pieces into the memory a buffer reserved beforehand, one bounds check per piece
/// (ByteBuffer's own writes check capacity and uniqueness and move the writer index per call:
/// a head written piece by piece paid that some twenty times).
package struct ByteCursor {
    package let memory: UnsafeMutableRawBufferPointer
    /// Bytes written so far.
    package var count = 0

    @inlinable package init(_ memory: UnsafeMutableRawBufferPointer) { self.memory = memory }

    @inlinable package mutating func put(_ bytes: UnsafeRawBufferPointer) {
        precondition(count + bytes.count <= memory.count, "written past the space reserved")
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        (memory.baseAddress! + count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    @inlinable package mutating func put(_ string: String) {
        let copied: Void? = string.utf8.withContiguousStorageIfAvailable { put(UnsafeRawBufferPointer($0)) }
        if copied == nil { for byte in string.utf8 { put(byte) } }
    }

    @inlinable package mutating func put(_ string: StaticString) {
        put(UnsafeRawBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    @inlinable package mutating func put(_ byte: UInt8) {
        precondition(count < memory.count, "written past the space reserved")
        memory[count] = byte
        count += 1
    }
}

extension ByteBuffer {
    /// Writes through a cursor into `capacity` bytes reserved at once; writing more traps.
    package mutating func write(capacity: Int, with body: (inout ByteCursor) -> Void) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { memory in
            var cursor = ByteCursor(memory)
            body(&cursor)
            return cursor.count
        }
    }
}
