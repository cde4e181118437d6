import NIOCore
import Testing

@testable import MQTTWire

@Suite struct MQTTCodecTests {
    func bytes(_ packet: MQTTPacket, _ version: MQTTVersion) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try MQTTEncoder.encode(packet, version: version, into: &buffer)
        return buffer
    }

    func decodeOne(_ buffer: ByteBuffer, version: MQTTVersion?) throws(MQTTWireError) -> MQTTPacket? {
        var decoder = MQTTDecoder(version: version)
        var b = buffer
        let packet = try decoder.decode(&b)
        #expect(b.readableBytes == 0)
        return packet
    }

    func error(_ hex: [UInt8], version: MQTTVersion? = .v5, maximumPacketSize: Int = 1 << 20) -> MQTTWireError? {
        var decoder = MQTTDecoder(version: version, maximumPacketSize: maximumPacketSize)
        var b = ByteBuffer(bytes: hex)
        do {
            _ = try decoder.decode(&b)
            return nil
        } catch {
            return error
        }
    }

    static var v5Properties: MQTTProperties {
        var p = MQTTProperties()
        p.userProperties = [.init("region", "cn-hangzhou"), .init("region", "again")]
        p.reasonString = "why"
        return p
    }

    /// Every packet, as a server or a client would send it, in both versions.
    static func allPackets(_ version: MQTTVersion) -> [MQTTPacket] {
        let v5 = version == .v5
        var connectProps = MQTTProperties()
        if v5 {
            connectProps.sessionExpiryInterval = 3600
            connectProps.receiveMaximum = 20
            connectProps.maximumPacketSize = 1 << 20
            connectProps.topicAliasMaximum = 10
            connectProps.requestResponseInformation = 1
            connectProps.userProperties = [.init("firmware", "1.2.3")]
        }
        var willProps = MQTTProperties()
        if v5 {
            willProps.willDelayInterval = 30
            willProps.contentType = "text/plain"
            willProps.messageExpiryInterval = 600
        }
        var publishProps = MQTTProperties()
        if v5 {
            publishProps.responseTopic = "devices/p1/d1/reply"
            publishProps.correlationData = ByteBuffer(bytes: [1, 2, 3])
            publishProps.payloadFormatIndicator = 1
            publishProps.topicAlias = 3
            publishProps.subscriptionIdentifiers = [7, 300_000]
        }
        var connackProps = MQTTProperties()
        if v5 {
            connackProps.assignedClientIdentifier = "auto-1"
            connackProps.serverKeepAlive = 30
            connackProps.maximumQoS = 1
            connackProps.retainAvailable = 1
            connackProps.sharedSubscriptionAvailable = 1
            connackProps.wildcardSubscriptionAvailable = 1
            connackProps.subscriptionIdentifiersAvailable = 1
            connackProps.topicAliasMaximum = 16
            connackProps.receiveMaximum = 100
        }
        let props = v5 ? v5Properties : MQTTProperties()
        var userOnly = props
        userOnly.reasonString = nil  // a reason string is for answers only
        var subscribeProps = MQTTProperties()
        if v5 { subscribeProps.subscriptionIdentifiers = [42] }
        return [
            .connect(
                MQTTPacket.Connect(
                    version: version,
                    clientID: "d1",
                    cleanStart: false,
                    keepAliveSeconds: 45,
                    username: "p1&d1",
                    password: ByteBuffer(string: "secret"),
                    will: MQTTPacket.Will(
                        topic: "devices/p1/d1/status",
                        payload: ByteBuffer(string: "offline"),
                        qos: .atLeastOnce,
                        retain: true,
                        properties: willProps
                    ),
                    properties: connectProps
                )
            ),
            .connect(MQTTPacket.Connect(version: version, clientID: "")),
            .connack(MQTTPacket.ConnAck(sessionPresent: true, reason: .success, properties: connackProps)),
            .connack(MQTTPacket.ConnAck(reason: .notAuthorized)),
            .publish(MQTTPacket.Publish(topic: "devices/p1/d1/telemetry", payload: ByteBuffer(string: "{\"t\":1}"))),
            .publish(
                MQTTPacket.Publish(
                    topic: "a/b",
                    payload: ByteBuffer(),
                    qos: .exactlyOnce,
                    retain: true,
                    dup: true,
                    packetID: 65_535,
                    properties: publishProps
                )
            ),
            .puback(MQTTPacket.Ack(packetID: 1)),
            .puback(MQTTPacket.Ack(packetID: 2, reason: v5 ? .noMatchingSubscribers : .success, properties: props)),
            .pubrec(MQTTPacket.Ack(packetID: 3, reason: v5 ? .quotaExceeded : .success)),
            .pubrel(MQTTPacket.Ack(packetID: 4)),
            .pubcomp(MQTTPacket.Ack(packetID: 5, properties: props)),
            .subscribe(
                MQTTPacket.Subscribe(
                    packetID: 6,
                    subscriptions: [
                        MQTTPacket.Subscription(filter: "devices/+/d1/#", qos: .atLeastOnce),
                        MQTTPacket.Subscription(
                            filter: "$share/g/cmd/#",
                            qos: .exactlyOnce,
                            noLocal: v5,
                            retainAsPublished: v5,
                            retainHandling: v5 ? .doNotSend : .sendOnSubscribe
                        ),
                    ],
                    properties: subscribeProps
                )
            ),
            .suback(
                MQTTPacket.SubAck(
                    packetID: 6,
                    reasons: [.grantedQoS1, .grantedQoS2, .success, v5 ? .notAuthorized : .unspecifiedError],
                    properties: props
                )
            ),
            .unsubscribe(MQTTPacket.Unsubscribe(packetID: 7, filters: ["a/#", "b/+"], properties: userOnly)),
            .unsuback(MQTTPacket.UnsubAck(packetID: 7, reasons: v5 ? [.success, .noSubscriptionExisted] : [], properties: props)),
            .pingreq,
            .pingresp,
            .disconnect(MQTTPacket.Disconnect()),
        ]
            + (v5
                ? [
                    .disconnect(MQTTPacket.Disconnect(reason: .serverShuttingDown, properties: props)),
                    .auth(
                        MQTTPacket.Auth(
                            reason: .continueAuthentication,
                            properties: {
                                var p = MQTTProperties(); p.authenticationMethod = "SCRAM-SHA-1"; p.authenticationData = ByteBuffer(bytes: [9]);
                                return p
                            }()
                        )
                    ),
                ] : [])
    }

    @Test(arguments: [MQTTVersion.v3_1_1, .v5])
    func everyPacketRoundTrips(version: MQTTVersion) throws {
        for packet in Self.allPackets(version) {
            let encoded = try bytes(packet, version)
            let decoded = try decodeOne(encoded, version: packet.kind == .connect ? nil : version)
            #expect(decoded == packet, "\(packet.kind)")
        }
    }

    @Test(arguments: [MQTTVersion.v3_1_1, .v5])
    func everyPrefixWaitsForMoreAndConsumesNothing(version: MQTTVersion) throws {
        var stream = ByteBuffer()
        let packets = Self.allPackets(version).filter { $0.kind != .connect }
        for packet in packets { try MQTTEncoder.encode(packet, version: version, into: &stream) }
        // Fed in pieces of every size up to 7 bytes: the same packets come out, in order.
        for piece in 1...7 {
            var decoder = MQTTDecoder(version: version)
            var pending = ByteBuffer()
            var out: [MQTTPacket] = []
            var rest = stream
            while rest.readableBytes > 0 {
                var chunk = rest.readSlice(length: min(piece, rest.readableBytes))!
                pending.writeBuffer(&chunk)
                while let packet = try decoder.decode(&pending) { out.append(packet) }
            }
            #expect(out == packets, "pieces of \(piece)")
            #expect(pending.readableBytes == 0)
        }
    }

    @Test func knownBytesFromTheSpec() throws {
        // MQTT 3.1.1 CONNECT: clean session, keep alive 60, client id "abc".
        let connect: [UInt8] = [0x10, 0x0F, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, 0x61, 0x62, 0x63]
        #expect(try decodeOne(ByteBuffer(bytes: connect), version: nil) == .connect(MQTTPacket.Connect(version: .v3_1_1, clientID: "abc")))
        #expect(Array(try bytes(.connect(MQTTPacket.Connect(version: .v3_1_1, clientID: "abc")), .v3_1_1).readableBytesView) == connect)
        // QoS 1 PUBLISH "a/b" id 10 payload "hi".
        let publish: [UInt8] = [0x32, 0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x0A, 0x68, 0x69]
        let expected = MQTTPacket.publish(MQTTPacket.Publish(topic: "a/b", payload: ByteBuffer(string: "hi"), qos: .atLeastOnce, packetID: 10))
        #expect(try decodeOne(ByteBuffer(bytes: publish), version: .v3_1_1) == expected)
        // v5 PUBACK short form (2 bytes) and DISCONNECT with no body mean success.
        #expect(try decodeOne(ByteBuffer(bytes: [0x40, 0x02, 0x00, 0x0A]), version: .v5) == .puback(MQTTPacket.Ack(packetID: 10)))
        #expect(try decodeOne(ByteBuffer(bytes: [0xE0, 0x00]), version: .v5) == .disconnect(MQTTPacket.Disconnect()))
        #expect(Array(try bytes(.puback(MQTTPacket.Ack(packetID: 10)), .v5).readableBytesView) == [0x40, 0x02, 0x00, 0x0A])
        // Remaining length 321 takes two bytes: 0xC1 0x02.
        let big = try bytes(.publish(MQTTPacket.Publish(topic: "t", payload: ByteBuffer(repeating: 0x61, count: 318))), .v3_1_1)
        #expect(Array(big.readableBytesView.prefix(3)) == [0x30, 0xC1, 0x02])
    }

    @Test func malformedInputGetsItsReasonCode() {
        let cases: [(String, [UInt8], MQTTVersion?, ReasonCode)] = [
            ("remaining length over 4 bytes", [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], .v5, .malformedPacket),
            ("remaining length not minimal", [0xC0, 0x80, 0x00], .v5, .malformedPacket),
            ("packet type 0", [0x00, 0x00], .v5, .malformedPacket),
            ("SUBSCRIBE with flags 0", [0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00], .v5, .malformedPacket),
            ("PINGREQ with flags", [0xC1, 0x00], .v5, .malformedPacket),
            ("PINGREQ with a body", [0xC0, 0x01, 0x00], .v5, .malformedPacket),
            ("PUBLISH QoS 3", [0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01], .v5, .malformedPacket),
            ("DUP on QoS 0", [0x38, 0x03, 0x00, 0x01, 0x61], .v3_1_1, .malformedPacket),
            ("wildcard in a topic name", [0x30, 0x03, 0x00, 0x01, 0x2B], .v3_1_1, .topicNameInvalid),
            ("empty topic without an alias", [0x30, 0x03, 0x00, 0x00, 0x00], .v5, .topicNameInvalid),
            ("topic not UTF-8", [0x30, 0x04, 0x00, 0x02, 0xC3, 0x28], .v3_1_1, .malformedPacket),
            ("U+0000 in a topic", [0x30, 0x04, 0x00, 0x02, 0x61, 0x00], .v3_1_1, .malformedPacket),
            ("string runs past the packet", [0x30, 0x04, 0x00, 0x09, 0x61, 0x62], .v3_1_1, .malformedPacket),
            ("packet id 0", [0x40, 0x02, 0x00, 0x00], .v5, .protocolError),
            ("SUBSCRIBE without filters", [0x82, 0x03, 0x00, 0x01, 0x00], .v5, .protocolError),
            ("retain handling 3", [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61, 0x30], .v5, .protocolError),
            ("v3 subscription options with v5 bits", [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x04], .v3_1_1, .malformedPacket),
            ("duplicate property", [0x40, 0x0A, 0x00, 0x01, 0x00, 0x06, 0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00], .v5, .protocolError),
            ("property not allowed here", [0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01], .v5, .protocolError),
            ("unknown property", [0x40, 0x05, 0x00, 0x01, 0x00, 0x01, 0x7F], .v5, .malformedPacket),
            ("property length past the end", [0x40, 0x04, 0x00, 0x01, 0x00, 0x09], .v5, .malformedPacket),
            ("unknown reason code", [0x40, 0x03, 0x00, 0x01, 0x05], .v5, .malformedPacket),
            ("AUTH in 3.1.1", [0xF0, 0x00], .v3_1_1, .malformedPacket),
            ("3.1.1 DISCONNECT with a body", [0xE0, 0x01, 0x00], .v3_1_1, .malformedPacket),
            ("PUBLISH before CONNECT", [0x30, 0x03, 0x00, 0x01, 0x61], nil, .protocolError),
            (
                "MQTT 3.1 (MQIsdp)", [0x10, 0x0E, 0x00, 0x06] + Array("MQIsdp".utf8) + [0x03, 0x02, 0x00, 0x3C, 0x00, 0x00], nil,
                .unsupportedProtocolVersion
            ),
            (
                "protocol level 6", [0x10, 0x0C, 0x00, 0x04] + Array("MQTT".utf8) + [0x06, 0x02, 0x00, 0x3C, 0x00, 0x00], nil,
                .unsupportedProtocolVersion
            ),
            ("not MQTT", [0x10, 0x0C, 0x00, 0x04] + Array("HTTP".utf8) + [0x04, 0x02, 0x00, 0x3C, 0x00, 0x00], nil, .protocolError),
            ("reserved connect flag", [0x10, 0x0C, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x03, 0x00, 0x3C, 0x00, 0x00], nil, .malformedPacket),
            ("will QoS without will", [0x10, 0x0C, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x0A, 0x00, 0x3C, 0x00, 0x00], nil, .malformedPacket),
            (
                "3.1.1 password without user name",
                [0x10, 0x0F, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x42, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x01, 0x70], nil, .malformedPacket
            ),
            ("bytes left over", [0x40, 0x03, 0x00, 0x01, 0x00], .v3_1_1, .malformedPacket),
        ]
        for (name, hex, version, code) in cases {
            let e = error(hex, version: version)
            #expect(e?.code == code, "\(name): \(e.map { "\($0)" } ?? "no error")")
        }
    }

    @Test func tooLargeIsRefusedFromTheHeaderAlone() {
        // Only the fixed header of a 100 kB PUBLISH has arrived: refused at once, not buffered.
        let e = error([0x30, 0xA0, 0x8D, 0x06], maximumPacketSize: 64 * 1024)
        #expect(e?.code == .packetTooLarge)
        #expect(e?.message.contains("65536") == true)
    }

    @Test func theDecoderLearnsTheVersionFromConnect() throws {
        var stream = try bytes(.connect(MQTTPacket.Connect(version: .v5, clientID: "c")), .v5)
        var ack = MQTTPacket.Ack(packetID: 9, reason: .noMatchingSubscribers)
        ack.properties.reasonString = "nobody"
        try MQTTEncoder.encode(.puback(ack), version: .v5, into: &stream)
        var decoder = MQTTDecoder()
        #expect(try decoder.decode(&stream)?.kind == .connect)
        #expect(decoder.version == .v5)
        #expect(try decoder.decode(&stream) == .puback(ack))
    }

    @Test func encoderRefusesWhatTheWireCannotCarry() {
        #expect(throws: MQTTWireError.self) { try bytes(.auth(MQTTPacket.Auth()), .v3_1_1) }
        var willOnly = MQTTProperties()
        willOnly.willDelayInterval = 5  // a will's property, not a PUBLISH's
        #expect(throws: MQTTWireError.self) { try bytes(.publish(MQTTPacket.Publish(topic: "t", payload: ByteBuffer(), properties: willOnly)), .v5) }
        #expect(throws: MQTTWireError.self) { try bytes(.publish(MQTTPacket.Publish(topic: "t", payload: ByteBuffer(), qos: .atLeastOnce)), .v5) }
        #expect(throws: MQTTWireError.self) {
            try bytes(.publish(MQTTPacket.Publish(topic: String(repeating: "a", count: 70_000), payload: ByteBuffer())), .v5)
        }
    }
}
