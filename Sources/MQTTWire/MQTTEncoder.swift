public import NIOCore

/// Writes MQTT packets for a protocol version. Throws only for values the wire cannot carry
/// (a string over 65,535 bytes, a packet over the variable byte integer's range, a v5-only
/// packet for 3.1.1, a QoS above 0 without a packet identifier).
public enum MQTTEncoder {
    public static func encode(_ packet: MQTTPacket, version: MQTTVersion, into buffer: inout ByteBuffer) throws(MQTTWireError) {
        let v5 = version == .v5
        var body = ByteBuffer()
        var flags: UInt8 = 0
        switch packet {
        case .connect(let c):
            try Wire.writeString("MQTT", into: &body)
            body.writeInteger(c.version.rawValue)
            var f: UInt8 = c.cleanStart ? 0x02 : 0
            if let will = c.will {
                f |= 0x04 | will.qos.rawValue << 3 | (will.retain ? 0x20 : 0)
            }
            if c.username != nil { f |= 0x80 }
            if c.password != nil { f |= 0x40 }
            body.writeInteger(f)
            body.writeInteger(c.keepAliveSeconds)
            let connectV5 = c.version == .v5
            if connectV5 { try c.properties.encode(into: &body, context: .connect) }
            try Wire.writeString(c.clientID, into: &body)
            if let will = c.will {
                if connectV5 { try will.properties.encode(into: &body, context: .will) }
                try Wire.writeString(will.topic, into: &body)
                try Wire.writeBinary(will.payload, into: &body)
            }
            if let u = c.username { try Wire.writeString(u, into: &body) }
            if let p = c.password { try Wire.writeBinary(p, into: &body) }
        case .connack(let a):
            body.writeInteger(UInt8(a.sessionPresent ? 1 : 0))
            body.writeInteger(v5 ? a.reason.rawValue : a.v3ReturnCode)
            if v5 { try a.properties.encode(into: &body, context: .connack) }
        case .publish(let p):
            flags = (p.dup ? 0x08 : 0) | p.qos.rawValue << 1 | (p.retain ? 0x01 : 0)
            try Wire.writeString(p.topic, into: &body)
            if p.qos != .atMostOnce {
                guard let id = p.packetID, id != 0 else { throw .protocolError("a QoS \(p.qos.rawValue) PUBLISH needs a packet identifier") }
                body.writeInteger(id)
            }
            if v5 { try p.properties.encode(into: &body, context: .publish) }
            var payload = p.payload
            body.writeBuffer(&payload)
        case .puback(let a), .pubrec(let a), .pubrel(let a), .pubcomp(let a):
            if case .pubrel = packet { flags = 0b0010 }
            body.writeInteger(a.packetID)
            // The short forms: reason and properties left out when they say nothing.
            if v5 && (a.reason != .success || !a.properties.isEmpty) {
                body.writeInteger(a.reason.rawValue)
                if !a.properties.isEmpty { try a.properties.encode(into: &body, context: .ack) }
            }
        case .subscribe(let s):
            flags = 0b0010
            body.writeInteger(s.packetID)
            if v5 { try s.properties.encode(into: &body, context: .subscribe) }
            for sub in s.subscriptions {
                try Wire.writeString(sub.filter, into: &body)
                var options = sub.qos.rawValue
                if v5 {
                    options |= (sub.noLocal ? 0x04 : 0) | (sub.retainAsPublished ? 0x08 : 0) | sub.retainHandling.rawValue << 4
                }
                body.writeInteger(options)
            }
        case .suback(let s):
            body.writeInteger(s.packetID)
            if v5 { try s.properties.encode(into: &body, context: .suback) }
            for r in s.reasons { body.writeInteger(v5 || !r.isFailure ? r.rawValue : 0x80) }
        case .unsubscribe(let u):
            flags = 0b0010
            body.writeInteger(u.packetID)
            if v5 { try u.properties.encode(into: &body, context: .unsubscribe) }
            for f in u.filters { try Wire.writeString(f, into: &body) }
        case .unsuback(let u):
            body.writeInteger(u.packetID)
            if v5 {
                try u.properties.encode(into: &body, context: .unsuback)
                for r in u.reasons { body.writeInteger(r.rawValue) }
            }
        case .pingreq, .pingresp:
            break
        case .disconnect(let d):
            if v5 && (d.reason != .success || !d.properties.isEmpty) {
                body.writeInteger(d.reason.rawValue)
                if !d.properties.isEmpty { try d.properties.encode(into: &body, context: .disconnect) }
            }
        case .auth(let a):
            guard v5 else { throw .protocolError("AUTH does not exist in MQTT 3.1.1") }
            if a.reason != .success || !a.properties.isEmpty {
                body.writeInteger(a.reason.rawValue)
                if !a.properties.isEmpty { try a.properties.encode(into: &body, context: .auth) }
            }
        }
        buffer.writeInteger(packet.kind.rawValue << 4 | flags)
        try VariableByteInteger.write(body.readableBytes, into: &buffer)
        buffer.writeBuffer(&body)
    }

    /// The whole packet's size on the wire (for Maximum Packet Size checks before sending).
    public static func size(of packet: MQTTPacket, version: MQTTVersion) throws(MQTTWireError) -> Int {
        var buffer = ByteBuffer()
        try encode(packet, version: version, into: &buffer)
        return buffer.readableBytes
    }
}
