// MQTTBroker: the device channel over MQTT — per-connection protocol state machine, the
// listener, and client-id sessions (takeover).
public import MQTTWire
public import NIOCore
public import SwitchyardCore

/// The MQTT protocol of one connection as a value: packets and results go in, `Action`s
/// come out; the channel handler performs them. Time is passed in (`now`, nanoseconds).
public struct MQTTConnectionMachine: Sendable {
    public struct Options: Sendable {
        /// Accept CONNECT without credentials (product and device then come from the topic).
        public var allowAnonymous = false
        /// Largest packet accepted (and announced in a v5 CONNACK).
        public var maximumPacketSize = 1 << 20
        /// QoS 1/2 PUBLISHes a client may have unacknowledged (announced in a v5 CONNACK).
        public var receiveMaximum: UInt16 = 64
        /// A client asking for a longer keep-alive (or none) gets this one (v5: Server Keep Alive).
        public var maximumKeepAliveSeconds: UInt16 = 3600
        public var channelName = "mqtt"
        public init() {}
    }

    public enum Action: Sendable {
        case send(MQTTPacket)
        /// Hand a device message to the pipeline; answer with `submitted(token:result:)`.
        case submit(Envelope, token: UInt64)
        /// Register the client id (taking over an older connection with the same id).
        case register(clientID: String)
        /// Close the connection (after the packets sent before it).
        case close(reason: String)
        /// Publish the will (the connection ended without a normal DISCONNECT).
        case publishWill(MQTTPacket.Will, clientID: String)
        /// A PUBLISH refused before it reached the pipeline: count it (received and rejected).
        case countRefused(reason: String)
    }

    enum State: Equatable {
        case awaitingConnect
        case connected
        case closed
    }

    /// A QoS 1/2 PUBLISH whose acknowledgement waits for the pipeline (acks go out in order).
    struct PendingAck {
        var token: UInt64
        var packetID: UInt16
        var qos: QoS
        var result: SubmitResult?
    }

    public let options: Options
    var state = State.awaitingConnect
    public private(set) var version: MQTTVersion?
    public private(set) var clientID: String?
    var keepAliveNanos: UInt64 = 0
    var lastPacketAt: UInt64 = 0
    var will: MQTTPacket.Will?
    var pendingAcks: [PendingAck] = []
    /// QoS 2 messages accepted and awaiting PUBREL (not submitted again if resent).
    var awaitingRelease: Set<UInt16> = []
    var nextToken: UInt64 = 1
    let remoteAddress: SocketAddress?
    let makeID: @Sendable () -> String

    public init(options: Options, remoteAddress: SocketAddress?, makeID: @escaping @Sendable () -> String = { MessageID.generate() }) {
        self.options = options
        self.remoteAddress = remoteAddress
        self.makeID = makeID
    }

    // MARK: - Events

    /// A packet arrived.
    public mutating func received(_ packet: MQTTPacket, now: UInt64) -> [Action] {
        lastPacketAt = now
        switch state {
        case .closed:
            return []
        case .awaitingConnect:
            guard case .connect(let connect) = packet else {
                return close("the first packet must be CONNECT")
            }
            return self.connect(connect)
        case .connected:
            switch packet {
            case .connect:
                return disconnect(.protocolError, "a second CONNECT")
            case .publish(let publish):
                return self.publish(publish)
            case .pubrel(let rel):
                let known = awaitingRelease.remove(rel.packetID) != nil
                let reason: ReasonCode = known || version != .v5 ? .success : .packetIdentifierNotFound
                return [.send(.pubcomp(MQTTPacket.Ack(packetID: rel.packetID, reason: reason)))]
            case .subscribe(let s):
                // Subscriptions (downlink to devices) come with the broker's fan-out; until then
                // every filter is refused out loud, never silently granted.
                var props = MQTTProperties()
                if version == .v5 { props.reasonString = "subscriptions are not available on this server yet" }
                return [
                    .send(
                        .suback(
                            MQTTPacket.SubAck(
                                packetID: s.packetID,
                                reasons: s.subscriptions.map { _ in .implementationSpecificError },
                                properties: props
                            )
                        )
                    )
                ]
            case .unsubscribe(let u):
                return [
                    .send(
                        .unsuback(
                            MQTTPacket.UnsubAck(packetID: u.packetID, reasons: version == .v5 ? u.filters.map { _ in .noSubscriptionExisted } : [])
                        )
                    )
                ]
            case .pingreq:
                return [.send(.pingresp)]
            case .disconnect(let d):
                state = .closed
                var actions: [Action] = []
                if d.reason == .disconnectWithWillMessage, let will, let clientID { actions.append(.publishWill(will, clientID: clientID)) }
                will = nil
                return actions + [.close(reason: "client disconnected (\(d.reason))")]
            case .puback, .pubrec, .pubcomp:
                return []  // nothing is sent to devices with QoS > 0 yet
            case .auth:
                return disconnect(.badAuthenticationMethod, "enhanced authentication is not supported")
            case .connack, .suback, .unsuback, .pingresp:
                return disconnect(.protocolError, "a client may not send \(packet.kind)")
            }
        }
    }

    /// The pipeline answered for a submitted message.
    public mutating func submitted(token: UInt64, result: SubmitResult) -> [Action] {
        guard state == .connected else { return [] }
        guard let index = pendingAcks.firstIndex(where: { $0.token == token }) else {
            // QoS 0: nothing to answer; a v3 rejection is all the client could learn, and it can't.
            return []
        }
        pendingAcks[index].result = result
        var actions: [Action] = []
        // Acknowledgements leave in the order the PUBLISHes came (MQTT 4.6).
        while let head = pendingAcks.first, let result = head.result {
            pendingAcks.removeFirst()
            switch result {
            case .accepted, .duplicate:
                if head.qos == .exactlyOnce { awaitingRelease.insert(head.packetID) }
                actions.append(.send(ack(head, reason: .success, message: nil)))
            case .rejected(let r):
                guard version == .v5 else {
                    // MQTT 3.1.1 has no negative acknowledgement: close rather than pretend.
                    state = .closed
                    return actions + [.close(reason: "message refused (\(r.reason)): \(r.message)")]
                }
                actions.append(.send(ack(head, reason: Self.reasonCode(for: r), message: "\(r.reason): \(r.message)")))
            }
        }
        return actions
    }

    /// Time passes: the keep-alive (×1.5) is enforced.
    public mutating func tick(now: UInt64) -> [Action] {
        guard state == .connected, keepAliveNanos > 0, now > lastPacketAt, now - lastPacketAt > keepAliveNanos * 3 / 2 else { return [] }
        return disconnect(.keepAliveTimeout, "nothing heard for 1.5 × the keep-alive")
    }

    /// The connection closed (by either side): the will goes out unless a normal DISCONNECT came.
    public mutating func connectionClosed() -> [Action] {
        defer {
            state = .closed
            will = nil
        }
        guard state == .connected, let will, let clientID else { return [] }
        return [.publishWill(will, clientID: clientID)]
    }

    /// A newer connection took this client id over.
    public mutating func takenOver() -> [Action] {
        disconnect(.sessionTakenOver, "another connection with the same client id")
    }

    /// Switchyard is shutting down.
    public mutating func serverShuttingDown() -> [Action] {
        disconnect(.serverShuttingDown, "the server is shutting down")
    }

    /// The decoder refused the bytes: v5 hears why.
    public mutating func decodeFailed(_ error: MQTTWireError) -> [Action] {
        if state == .awaitingConnect, error.code == .unsupportedProtocolVersion {
            // Answered in the 3.1.1 form every client understands (return code 1), then closed.
            state = .closed
            return [.send(.connack(MQTTPacket.ConnAck(reason: .unsupportedProtocolVersion))), .close(reason: error.message)]
        }
        return disconnect(error.code, error.message)
    }

    // MARK: - Steps

    mutating func connect(_ c: MQTTPacket.Connect) -> [Action] {
        version = c.version
        var clientID = c.clientID
        var ackProperties = MQTTProperties()
        if clientID.isEmpty {
            guard c.cleanStart || c.version == .v5 else {
                return refuse(.clientIdentifierNotValid, "an empty client id needs a clean session (MQTT 3.1.1)")
            }
            clientID = "auto-" + makeID()
            if c.version == .v5 { ackProperties.assignedClientIdentifier = clientID }
        }
        guard clientID.utf8.count <= 256 else { return refuse(.clientIdentifierNotValid, "the client id is over 256 bytes") }
        guard c.username != nil || options.allowAnonymous else {
            return refuse(.notAuthorized, "anonymous access is off on this listener (channels.mqtt.allow_anonymous)")
        }
        guard options.allowAnonymous else {
            return refuse(.badUserNameOrPassword, "device credentials are not supported yet; enable channels.mqtt.allow_anonymous")
        }
        var keepAlive = c.keepAliveSeconds
        if keepAlive == 0 || keepAlive > options.maximumKeepAliveSeconds {
            keepAlive = options.maximumKeepAliveSeconds
            if c.version == .v5 { ackProperties.serverKeepAlive = keepAlive }
        }
        keepAliveNanos = UInt64(keepAlive) * 1_000_000_000
        if c.version == .v5 {
            ackProperties.receiveMaximum = options.receiveMaximum
            ackProperties.maximumPacketSize = UInt32(options.maximumPacketSize)
            ackProperties.topicAliasMaximum = 0
            ackProperties.retainAvailable = 0
            ackProperties.wildcardSubscriptionAvailable = 0
            ackProperties.subscriptionIdentifiersAvailable = 0
            ackProperties.sharedSubscriptionAvailable = 0
        }
        state = .connected
        self.clientID = clientID
        will = c.will
        // Sessions are not kept across connections yet: never "session present".
        return [
            .register(clientID: clientID),
            .send(.connack(MQTTPacket.ConnAck(sessionPresent: false, reason: .success, properties: ackProperties))),
        ]
    }

    mutating func publish(_ p: MQTTPacket.Publish) -> [Action] {
        if p.properties.topicAlias != nil {
            return [.countRefused(reason: "topic_alias_invalid")]
                + disconnect(.topicAliasInvalid, "topic aliases are not accepted (Topic Alias Maximum 0)")
        }
        if p.retain && version == .v5 {
            return [.countRefused(reason: "retain_not_supported")]
                + disconnect(.retainNotSupported, "retained messages are not available (Retain Available 0)")
        }
        if p.qos == .exactlyOnce, let id = p.packetID, awaitingRelease.contains(id) {
            return [.send(.pubrec(MQTTPacket.Ack(packetID: id)))]  // a resend of a message already taken
        }
        if p.qos != .atMostOnce, pendingAcks.count >= Int(options.receiveMaximum) {
            return [.countRefused(reason: "receive_maximum_exceeded")]
                + disconnect(.receiveMaximumExceeded, "more than \(options.receiveMaximum) unacknowledged QoS 1/2 messages")
        }
        let token = nextToken
        nextToken += 1
        if p.qos != .atMostOnce, let id = p.packetID {
            pendingAcks.append(PendingAck(token: token, packetID: id, qos: p.qos, result: nil))
        }
        return [.submit(envelope(for: p), token: token)]
    }

    func envelope(for p: MQTTPacket.Publish) -> Envelope {
        var headers: [HeaderField] = []
        if let type = p.properties.contentType { headers.append(HeaderField("content-type", type)) }
        var traceparent: String?
        var baggage: String?
        for u in p.properties.userProperties {
            let name = u.name.lowercased()
            guard HTTPToken.isToken(name), !name.hasPrefix("x-switchyard-"),
                u.value.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F })
            else { continue }
            if name == "traceparent" { traceparent = u.value }
            if name == "baggage" { baggage = u.value }
            headers.append(HeaderField(name, u.value))
        }
        if p.retain { headers.append(HeaderField("x-mqtt-retain", "true")) }
        headers.append(HeaderField("x-mqtt-qos", String(p.qos.rawValue)))
        if let clientID { headers.append(HeaderField("x-mqtt-client-id", clientID)) }
        let now = WallClock.nowNanos()
        return Envelope(
            id: makeID(),
            channel: options.channelName,
            topic: p.topic,
            payload: p.payload,
            headers: headers,
            receivedAt: now,
            trace: TraceContext(traceparent: traceparent, baggage: baggage) ?? .generate(baggage: baggage),
            clientAddress: remoteAddress
        )
    }

    func ack(_ pending: PendingAck, reason: ReasonCode, message: String?) -> MQTTPacket {
        var props = MQTTProperties()
        if version == .v5, let message { props.reasonString = message }
        let ack = MQTTPacket.Ack(packetID: pending.packetID, reason: version == .v5 ? reason : .success, properties: props)
        return pending.qos == .exactlyOnce ? .pubrec(ack) : .puback(ack)
    }

    /// The v5 PUBACK/PUBREC reason for a pipeline refusal.
    static func reasonCode(for r: Rejection) -> ReasonCode {
        switch r.status {
        case 403: .notAuthorized
        case 429, 503: .quotaExceeded
        case 400 where r.reason == "malformed_topic": .topicNameInvalid
        case 413: .packetTooLarge  // not a PUBACK code in the spec's table; clients treat any ≥ 0x80 as failure
        default: .unspecifiedError
        }
    }

    mutating func refuse(_ reason: ReasonCode, _ message: String) -> [Action] {
        state = .closed
        var props = MQTTProperties()
        if version == .v5 { props.reasonString = message }
        return [.send(.connack(MQTTPacket.ConnAck(reason: reason, properties: props))), .close(reason: message)]
    }

    /// v5: DISCONNECT with the reason, then close; v3: close.
    mutating func disconnect(_ reason: ReasonCode, _ message: String) -> [Action] {
        let wasConnected = state == .connected
        state = .closed
        var actions: [Action] = []
        if wasConnected, version == .v5 {
            var props = MQTTProperties()
            props.reasonString = message
            actions.append(.send(.disconnect(MQTTPacket.Disconnect(reason: reason, properties: props))))
        }
        // A will goes out when the server ends the connection (an error, a takeover), not on shutdown.
        if wasConnected, reason != .serverShuttingDown, let will, let clientID {
            actions.append(.publishWill(will, clientID: clientID))
        }
        will = nil
        return actions + [.close(reason: message)]
    }

    mutating func close(_ message: String) -> [Action] {
        state = .closed
        return [.close(reason: message)]
    }
}
