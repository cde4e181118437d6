public import NIOCore

/// The variable byte integer of MQTT: 7 bits per byte, at most 4 bytes (0…268,435,455),
/// minimal encoding only.
public enum VariableByteInteger {
    public static let max = 268_435_455

    /// Reads one; throws when it is longer than 4 bytes, not minimal, or cut off.
    static func read(from buffer: inout ByteBuffer, field: @autoclosure () -> String) throws(MQTTWireError) -> Int {
        switch peek(buffer, at: buffer.readerIndex) {
        case .value(let value, let length):
            buffer.moveReaderIndex(forwardBy: length)
            return value
        case .incomplete: throw .malformed("\(field()): the variable byte integer is cut off")
        case .invalid(let why): throw .malformed("\(field()): \(why)")
        }
    }

    enum Peek {
        case value(Int, length: Int)
        case incomplete
        case invalid(String)
    }

    /// Reads one at `index` without moving the reader.
    static func peek(_ buffer: ByteBuffer, at index: Int) -> Peek {
        var value = 0
        var multiplier = 1
        for i in 0..<4 {
            guard let byte = buffer.getInteger(at: index + i, as: UInt8.self) else { return .incomplete }
            value += Int(byte & 0x7F) * multiplier
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 { return .invalid("the variable byte integer is not minimally encoded") }
                return .value(value, length: i + 1)
            }
            multiplier *= 128
        }
        return .invalid("the variable byte integer is longer than 4 bytes")
    }

    static func write(_ value: Int, into buffer: inout ByteBuffer) throws(MQTTWireError) {
        guard value >= 0 && value <= max else { throw .malformed("\(value) does not fit a variable byte integer") }
        var v = value
        repeat {
            var byte = UInt8(v % 128)
            v /= 128
            if v > 0 { byte |= 0x80 }
            buffer.writeInteger(byte)
        } while v > 0
    }

    static func size(of value: Int) -> Int {
        value < 128 ? 1 : value < 16_384 ? 2 : value < 2_097_152 ? 3 : 4
    }
}

/// Reading and writing the MQTT data types; every failure names its field.
enum Wire {
    static func byte(_ buffer: inout ByteBuffer, _ field: @autoclosure () -> String) throws(MQTTWireError) -> UInt8 {
        guard let v = buffer.readInteger(as: UInt8.self) else { throw .malformed("\(field()) is cut off") }
        return v
    }

    /// A byte that must be 0 or 1.
    static func flag(_ buffer: inout ByteBuffer, _ field: @autoclosure () -> String) throws(MQTTWireError) -> UInt8 {
        let v = try byte(&buffer, field())
        guard v <= 1 else { throw .protocolError("\(field()) must be 0 or 1, got \(v)") }
        return v
    }

    static func uint16(_ buffer: inout ByteBuffer, _ field: @autoclosure () -> String) throws(MQTTWireError) -> UInt16 {
        guard let v = buffer.readInteger(as: UInt16.self) else { throw .malformed("\(field()) is cut off") }
        return v
    }

    static func uint32(_ buffer: inout ByteBuffer, _ field: @autoclosure () -> String) throws(MQTTWireError) -> UInt32 {
        guard let v = buffer.readInteger(as: UInt32.self) else { throw .malformed("\(field()) is cut off") }
        return v
    }

    static func binary(_ buffer: inout ByteBuffer, _ field: @autoclosure () -> String) throws(MQTTWireError) -> ByteBuffer {
        let length = Int(try uint16(&buffer, "\(field()) length"))
        guard let bytes = buffer.readSlice(length: length) else { throw .malformed("\(field()) is cut off") }
        return bytes
    }

    /// A UTF-8 string: well-formed, no U+0000 (MQTT-1.5.4-1, -2).
    static func string(_ buffer: inout ByteBuffer, _ field: @autoclosure () -> String) throws(MQTTWireError) -> String {
        let bytes = try binary(&buffer, field())
        guard let s = String(validating: bytes.readableBytesView, as: UTF8.self) else { throw .malformed("\(field()) is not valid UTF-8") }
        guard !bytes.readableBytesView.contains(0) else { throw .malformed("\(field()) contains U+0000") }
        return s
    }

    static func writeString(_ s: String, into buffer: inout ByteBuffer) throws(MQTTWireError) {
        let count = s.utf8.count
        guard count <= 65_535 else { throw .malformed("a string of \(count) bytes is over the 65,535 limit") }
        buffer.writeInteger(UInt16(count))
        buffer.writeString(s)
    }

    static func writeBinary(_ b: ByteBuffer, into buffer: inout ByteBuffer) throws(MQTTWireError) {
        guard b.readableBytes <= 65_535 else { throw .malformed("binary data of \(b.readableBytes) bytes is over the 65,535 limit") }
        buffer.writeInteger(UInt16(b.readableBytes))
        var copy = b
        buffer.writeBuffer(&copy)
    }
}
