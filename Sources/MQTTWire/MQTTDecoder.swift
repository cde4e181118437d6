public import NIOCore

/// Reads MQTT packets in two steps: the fixed header (type, flags, remaining length —
/// checked against the maximum packet size before the body has arrived), then the typed
/// packet. The protocol version comes from CONNECT (server side) or is given (client side).
public struct MQTTDecoder: Sendable {
    public var version: MQTTVersion?
    /// Largest whole packet accepted (fixed header included); larger ones fail with `packetTooLarge`.
    public var maximumPacketSize: Int

    public init(version: MQTTVersion? = nil, maximumPacketSize: Int = VariableByteInteger.max + 5) {
        self.version = version
        self.maximumPacketSize = maximumPacketSize
    }

    /// The next whole packet; nil (and nothing consumed) when more bytes are needed.
    public mutating func decode(_ buffer: inout ByteBuffer) throws(MQTTWireError) -> MQTTPacket? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        // The type and flags are checked as soon as they arrive: garbage is refused at once,
        // not waited on until its made-up length has come in.
        let kind = try Self.kind(first)
        if version == nil && kind != .connect { throw .protocolError("the first packet must be CONNECT, got \(kind)") }
        let length: Int
        let lengthBytes: Int
        switch VariableByteInteger.peek(buffer, at: buffer.readerIndex + 1) {
        case .incomplete: return nil
        case .invalid(let why): throw .malformed("remaining length: \(why)")
        case .value(let value, let size): (length, lengthBytes) = (value, size)
        }
        let total = 1 + lengthBytes + length
        guard total <= maximumPacketSize else {
            throw MQTTWireError(.packetTooLarge, "a packet of \(total) bytes is over the maximum packet size \(maximumPacketSize)")
        }
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(forwardBy: 1 + lengthBytes)
        var body = buffer.readSlice(length: length)!
        let packet = try decodeBody(kind, flags: first & 0x0F, &body)
        if body.readableBytes > 0 { throw .malformed("\(body.readableBytes) bytes left over after the \(kind) packet") }
        return packet
    }

    /// The packet type, with the fixed flags the spec requires for all but PUBLISH.
    static func kind(_ first: UInt8) throws(MQTTWireError) -> MQTTPacket.Kind {
        guard let kind = MQTTPacket.Kind(rawValue: first >> 4) else { throw .malformed("packet type 0 is reserved") }
        let flags = first & 0x0F
        let required: UInt8 = (kind == .pubrel || kind == .subscribe || kind == .unsubscribe) ? 0b0010 : 0
        if kind != .publish && flags != required {
            throw .malformed("\(kind) must have fixed header flags \(required), got \(flags)")
        }
        return kind
    }

    mutating func decodeBody(_ kind: MQTTPacket.Kind, flags: UInt8, _ body: inout ByteBuffer) throws(MQTTWireError) -> MQTTPacket {
        if kind == .connect {
            let connect = try Self.decodeConnect(&body)
            version = connect.version
            return .connect(connect)
        }
        guard let version else { throw .protocolError("the first packet must be CONNECT, got \(kind)") }
        let v5 = version == .v5
        switch kind {
        case .connect:
            preconditionFailure("handled above")
        case .connack:
            let ackFlags = try Wire.byte(&body, "CONNACK flags")
            guard ackFlags & 0xFE == 0 else { throw .malformed("CONNACK flags bits 7–1 are reserved") }
            let code = try Wire.byte(&body, "CONNACK reason code")
            let reason: ReasonCode?
            if v5 { reason = ReasonCode(rawValue: code) } else { reason = MQTTPacket.ConnAck.reason(v3ReturnCode: code) }
            guard let reason else { throw .malformed("unknown CONNACK code 0x\(String(code, radix: 16))") }
            let properties = v5 ? try MQTTProperties.decode(from: &body, context: .connack) : MQTTProperties()
            return .connack(MQTTPacket.ConnAck(sessionPresent: ackFlags & 1 == 1, reason: reason, properties: properties))
        case .publish:
            return .publish(try Self.decodePublish(flags: flags, v5: v5, &body))
        case .puback, .pubrec, .pubrel, .pubcomp:
            let id = try Self.packetID(&body, kind)
            var ack = MQTTPacket.Ack(packetID: id)
            if v5 && body.readableBytes > 0 {
                ack.reason = try Self.reason(&body, kind)
                if body.readableBytes > 0 { ack.properties = try MQTTProperties.decode(from: &body, context: .ack) }
            }
            switch kind {
            case .puback: return .puback(ack)
            case .pubrec: return .pubrec(ack)
            case .pubrel: return .pubrel(ack)
            default: return .pubcomp(ack)
            }
        case .subscribe:
            let id = try Self.packetID(&body, kind)
            let properties = v5 ? try MQTTProperties.decode(from: &body, context: .subscribe) : MQTTProperties()
            var subscriptions: [MQTTPacket.Subscription] = []
            while body.readableBytes > 0 {
                let filter = try Wire.string(&body, "topic filter")
                let options = try Wire.byte(&body, "subscription options")
                guard options & (v5 ? 0xC0 : 0xFC) == 0 else { throw .malformed("reserved bits set in the options of \"\(filter)\"") }
                guard let qos = QoS(rawValue: options & 0x03) else { throw .malformed("QoS 3 requested for \"\(filter)\"") }
                guard let handling = MQTTPacket.Subscription.RetainHandling(rawValue: options >> 4 & 0x03) else {
                    throw .protocolError("retain handling 3 for \"\(filter)\"")
                }
                subscriptions.append(
                    MQTTPacket.Subscription(
                        filter: filter,
                        qos: qos,
                        noLocal: options & 0x04 != 0,
                        retainAsPublished: options & 0x08 != 0,
                        retainHandling: handling
                    )
                )
            }
            guard !subscriptions.isEmpty else { throw .protocolError("SUBSCRIBE without a topic filter") }
            return .subscribe(MQTTPacket.Subscribe(packetID: id, subscriptions: subscriptions, properties: properties))
        case .suback:
            let id = try Self.packetID(&body, kind)
            let properties = v5 ? try MQTTProperties.decode(from: &body, context: .suback) : MQTTProperties()
            var reasons: [ReasonCode] = []
            while body.readableBytes > 0 {
                let code = try Wire.byte(&body, "SUBACK code")
                guard let reason = ReasonCode(rawValue: code), v5 || [0, 1, 2, 0x80].contains(code) else {
                    throw .malformed("unknown SUBACK code 0x\(String(code, radix: 16))")
                }
                reasons.append(reason)
            }
            return .suback(MQTTPacket.SubAck(packetID: id, reasons: reasons, properties: properties))
        case .unsubscribe:
            let id = try Self.packetID(&body, kind)
            let properties = v5 ? try MQTTProperties.decode(from: &body, context: .unsubscribe) : MQTTProperties()
            var filters: [String] = []
            while body.readableBytes > 0 { filters.append(try Wire.string(&body, "topic filter")) }
            guard !filters.isEmpty else { throw .protocolError("UNSUBSCRIBE without a topic filter") }
            return .unsubscribe(MQTTPacket.Unsubscribe(packetID: id, filters: filters, properties: properties))
        case .unsuback:
            let id = try Self.packetID(&body, kind)
            guard v5 else { return .unsuback(MQTTPacket.UnsubAck(packetID: id)) }
            let properties = try MQTTProperties.decode(from: &body, context: .unsuback)
            var reasons: [ReasonCode] = []
            while body.readableBytes > 0 { reasons.append(try Self.reason(&body, kind)) }
            return .unsuback(MQTTPacket.UnsubAck(packetID: id, reasons: reasons, properties: properties))
        case .pingreq, .pingresp:
            guard body.readableBytes == 0 else { throw .malformed("\(kind) has no body") }
            return kind == .pingreq ? .pingreq : .pingresp
        case .disconnect:
            var d = MQTTPacket.Disconnect()
            guard v5 else {
                guard body.readableBytes == 0 else { throw .malformed("a 3.1.1 DISCONNECT has no body") }
                return .disconnect(d)
            }
            if body.readableBytes > 0 { d.reason = try Self.reason(&body, kind) }
            if body.readableBytes > 0 { d.properties = try MQTTProperties.decode(from: &body, context: .disconnect) }
            return .disconnect(d)
        case .auth:
            guard v5 else { throw .malformed("AUTH does not exist in MQTT 3.1.1") }
            var a = MQTTPacket.Auth()
            if body.readableBytes > 0 { a.reason = try Self.reason(&body, kind) }
            if body.readableBytes > 0 { a.properties = try MQTTProperties.decode(from: &body, context: .auth) }
            return .auth(a)
        }
    }

    static func packetID(_ body: inout ByteBuffer, _ kind: MQTTPacket.Kind) throws(MQTTWireError) -> UInt16 {
        let id = try Wire.uint16(&body, "\(kind) packet identifier")
        guard id != 0 else { throw .protocolError("\(kind) packet identifier 0 is not allowed") }
        return id
    }

    static func reason(_ body: inout ByteBuffer, _ kind: MQTTPacket.Kind) throws(MQTTWireError) -> ReasonCode {
        let code = try Wire.byte(&body, "\(kind) reason code")
        guard let reason = ReasonCode(rawValue: code) else { throw .malformed("unknown \(kind) reason code 0x\(String(code, radix: 16))") }
        return reason
    }

    static func decodeConnect(_ body: inout ByteBuffer) throws(MQTTWireError) -> MQTTPacket.Connect {
        let name = try Wire.string(&body, "protocol name")
        let level = try Wire.byte(&body, "protocol level")
        guard name == "MQTT" || name == "MQIsdp" else { throw .protocolError("protocol name \"\(name)\" is not MQTT") }
        guard name == "MQTT", let version = MQTTVersion(rawValue: level) else {
            throw MQTTWireError(.unsupportedProtocolVersion, "protocol \(name) level \(level): only MQTT 3.1.1 (4) and 5.0 (5) are spoken")
        }
        let flags = try Wire.byte(&body, "connect flags")
        guard flags & 0x01 == 0 else { throw .malformed("the reserved connect flag is set") }
        let keepAlive = try Wire.uint16(&body, "keep alive")
        let v5 = version == .v5
        let properties = v5 ? try MQTTProperties.decode(from: &body, context: .connect) : MQTTProperties()
        let clientID = try Wire.string(&body, "client identifier")
        let hasWill = flags & 0x04 != 0
        let willQoSBits = flags >> 3 & 0x03
        let willRetain = flags & 0x20 != 0
        var will: MQTTPacket.Will?
        if hasWill {
            guard let qos = QoS(rawValue: willQoSBits) else { throw .malformed("will QoS 3") }
            let willProperties = v5 ? try MQTTProperties.decode(from: &body, context: .will) : MQTTProperties()
            let topic = try Wire.string(&body, "will topic")
            if let problem = MQTTTopic.problemWithName(topic) { throw MQTTWireError(.topicNameInvalid, "will topic: \(problem)") }
            let payload = try Wire.binary(&body, "will payload")
            will = MQTTPacket.Will(topic: topic, payload: payload, qos: qos, retain: willRetain, properties: willProperties)
        } else if willQoSBits != 0 || willRetain {
            throw .malformed("will QoS or will retain set without the will flag")
        }
        let hasUsername = flags & 0x80 != 0
        let hasPassword = flags & 0x40 != 0
        if !v5 && hasPassword && !hasUsername { throw .malformed("a password without a user name (MQTT 3.1.1)") }
        let username = hasUsername ? try Wire.string(&body, "user name") : nil
        let password = hasPassword ? try Wire.binary(&body, "password") : nil
        return MQTTPacket.Connect(
            version: version,
            clientID: clientID,
            cleanStart: flags & 0x02 != 0,
            keepAliveSeconds: keepAlive,
            username: username,
            password: password,
            will: will,
            properties: properties
        )
    }

    static func decodePublish(flags: UInt8, v5: Bool, _ body: inout ByteBuffer) throws(MQTTWireError) -> MQTTPacket.Publish {
        guard let qos = QoS(rawValue: flags >> 1 & 0x03) else { throw .malformed("PUBLISH with QoS 3") }
        let dup = flags & 0x08 != 0
        if qos == .atMostOnce && dup { throw .malformed("DUP set on a QoS 0 PUBLISH") }
        let topic = try Wire.string(&body, "topic name")
        let packetID = qos == .atMostOnce ? nil : try packetID(&body, .publish)
        let properties = v5 ? try MQTTProperties.decode(from: &body, context: .publish) : MQTTProperties()
        if topic.isEmpty {
            // v5: an empty topic stands for the topic of the alias (the broker resolves it).
            guard v5, properties.topicAlias != nil else { throw MQTTWireError(.topicNameInvalid, "PUBLISH with an empty topic name") }
        } else if let problem = MQTTTopic.problemWithName(topic) {
            throw MQTTWireError(.topicNameInvalid, problem)
        }
        let payload = body.readSlice(length: body.readableBytes)!
        return MQTTPacket.Publish(
            topic: topic,
            payload: payload,
            qos: qos,
            retain: flags & 0x01 != 0,
            dup: dup,
            packetID: packetID,
            properties: properties
        )
    }
}
