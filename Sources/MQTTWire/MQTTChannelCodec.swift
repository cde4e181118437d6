public import NIOCore

/// `MQTTDecoder` as a channel handler: emits `MQTTPacket`s; a malformed or oversized packet
/// is an error in the pipeline (the broker answers with its reason code and closes).
public struct MQTTPacketDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket

    public var decoder: MQTTDecoder

    public init(decoder: MQTTDecoder = MQTTDecoder()) { self.decoder = decoder }

    public mutating func decode(buffer: inout ByteBuffer) throws -> MQTTPacket? {
        try decoder.decode(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> MQTTPacket? {
        try decode(buffer: &buffer)
    }
}

/// Writes `MQTTPacket`s for a version (set it once CONNECT was read).
public final class MQTTPacketEncoder: MessageToByteEncoder {
    public typealias OutboundIn = MQTTPacket

    public var version: MQTTVersion

    public init(version: MQTTVersion) { self.version = version }

    public func encode(data: MQTTPacket, out: inout ByteBuffer) throws {
        try MQTTEncoder.encode(data, version: version, into: &out)
    }
}
