// MQTTBroker: the device channel over MQTT — per-connection protocol state machine, the
// listener, and client-id sessions (takeover).
public import MQTTWire
public import NIOCore
public import SwitchyardCore

/// The MQTT protocol of one connection as a value: packets and results go in, `Action`s
/// come out; the channel handler performs them. Time is passed in (`now`, nanoseconds).
/// Who a device is, once its credentials were checked.
public struct DeviceIdentity: Sendable, Equatable {
    public var product: String
    public var device: String
    public init(product: String, device: String) {
        self.product = product
        self.device = device
    }
}

/// Checks CONNECT credentials; fails with the reason code to refuse with
/// (`badUserNameOrPassword`, `notAuthorized`, …).
public protocol DeviceAuthenticator: Sendable {
    func authenticate(username: String, password: ByteBuffer?, clientID: String) -> Result<DeviceIdentity, MQTTWireError>
}

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
        /// QoS 1/2 messages sent to a client and not yet acknowledged (lowered to the client's Receive Maximum).
        public var maximumInflight = 32
        /// Messages waiting for the in-flight window; past it the oldest QoS 0 goes first (counted).
        public var maximumQueued = 1000
        public var channelName = "mqtt"
        /// Checks credentials; without one, only anonymous access (if allowed) gets in.
        public var authenticator: (any DeviceAuthenticator)?
        /// An authenticated device publishes and subscribes only under this topic space
        /// (`{product}` and `{device}` filled in; a prefix ending in `/#`, or one exact topic).
        public var aclTemplate = "devices/{product}/{device}/#"
        /// Signed-in devices' connects and disconnects become messages on
        /// `$events/{product}/{device}/connected|disconnected`, routed like any other.
        public var connectionEvents = false
        /// Topic filters nobody may publish to / subscribe to (before the per-device space).
        public var denyPublish: [String] = []
        public var denySubscribe: [String] = []
        public init() {}
    }

    public enum Action: Sendable {
        case send(MQTTPacket)
        /// Hand a device message to the pipeline; answer with `submitted(token:result:)`. Once
        /// accepted, `publish` goes to the broker's subscribers (and the retained store).
        case submit(Envelope, token: UInt64, publish: MQTTPacket.Publish)
        /// Add subscriptions in the broker's trie (then send matching retained messages).
        case subscribe([(MQTTPacket.Subscription, isNew: Bool)], identifier: Int?)
        case unsubscribe([String])
        /// A message for the client could not be kept (queue full, too large): count it.
        case dropOutbound(reason: String)
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
    /// The authenticated device (nil for anonymous clients).
    public private(set) var identity: DeviceIdentity?
    /// The signed-in device's topic space, filled in once at CONNECT (nil for anonymous clients).
    var acl: ACL?
    var keepAliveNanos: UInt64 = 0
    var lastPacketAt: UInt64 = 0
    var will: MQTTPacket.Will?
    var pendingAcks: [PendingAck] = []
    /// QoS 2 messages accepted and awaiting PUBREL (not submitted again if resent).
    var awaitingRelease: Set<UInt16> = []
    var nextToken: UInt64 = 1
    /// This connection's subscriptions (filter → options).
    public private(set) var subscriptions: [String: MQTTPacket.Subscription] = [:]
    /// Outbound QoS 1/2: in flight by packet id (QoS 2: `released` once PUBREC came and PUBREL went).
    var inflight: [UInt16: (qos: QoS, released: Bool)] = [:]
    var queued: [MQTTPacket.Publish] = []
    var nextPacketID: UInt16 = 1
    var inflightLimit = 32
    var clientMaximumPacketSize = Int.max
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
                return subscribe(s)
            case .unsubscribe(let u):
                var reasons: [ReasonCode] = []
                for filter in u.filters {
                    reasons.append(subscriptions.removeValue(forKey: filter) != nil ? .success : .noSubscriptionExisted)
                }
                return [
                    .unsubscribe(u.filters),
                    .send(.unsuback(MQTTPacket.UnsubAck(packetID: u.packetID, reasons: version == .v5 ? reasons : []))),
                ]
            case .pingreq:
                return [.send(.pingresp)]
            case .disconnect(let d):
                state = .closed
                var actions: [Action] = []
                if d.reason == .disconnectWithWillMessage, let will, let clientID { actions.append(.publishWill(will, clientID: clientID)) }
                will = nil
                return actions + [.close(reason: "client disconnected (\(d.reason))")]
            case .puback(let a):
                guard inflight[a.packetID]?.qos == .atLeastOnce else { return [] }
                inflight.removeValue(forKey: a.packetID)
                return drain()
            case .pubrec(let a):
                guard inflight[a.packetID]?.qos == .exactlyOnce else {
                    return version == .v5 ? [.send(.pubrel(MQTTPacket.Ack(packetID: a.packetID, reason: .packetIdentifierNotFound)))] : []
                }
                if a.reason.isFailure {
                    inflight.removeValue(forKey: a.packetID)  // the client refused it: done
                    return drain()
                }
                inflight[a.packetID]?.released = true
                return [.send(.pubrel(MQTTPacket.Ack(packetID: a.packetID)))]
            case .pubcomp(let a):
                guard inflight[a.packetID]?.released == true else { return [] }
                inflight.removeValue(forKey: a.packetID)
                return drain()
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
        return flushAcks()
    }

    /// Acknowledgements leave in the order the PUBLISHes came (MQTT 4.6).
    mutating func flushAcks() -> [Action] {
        var actions: [Action] = []
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
        if let username = c.username {
            guard let authenticator = options.authenticator else {
                return refuse(.badUserNameOrPassword, "this listener has no device credentials")
            }
            switch authenticator.authenticate(username: username, password: c.password, clientID: clientID) {
            case .success(let id):
                identity = id
                acl = Self.acl(options.aclTemplate, id)
            case .failure(let why): return refuse(why.code, why.message)
            }
        } else if !options.allowAnonymous {
            return refuse(.notAuthorized, "anonymous access is off on this listener (channels.mqtt.allow_anonymous); sign in as {device}&{product}")
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
            ackProperties.sharedSubscriptionAvailable = 0
        }
        inflightLimit = min(options.maximumInflight, Int(c.properties.receiveMaximum ?? UInt16.max))
        if let max = c.properties.maximumPacketSize { clientMaximumPacketSize = Int(max) }
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
        if p.qos == .exactlyOnce, let id = p.packetID, awaitingRelease.contains(id) {
            return [.send(.pubrec(MQTTPacket.Ack(packetID: id)))]  // a resend of a message already taken
        }
        if let why = publishDenied(p.topic) {
            let refusal = Rejection(filter: "acl", reason: "acl_denied", status: 403, message: why)
            guard p.qos != .atMostOnce, let id = p.packetID else { return [.countRefused(reason: "acl_denied")] }
            pendingAcks.append(PendingAck(token: 0, packetID: id, qos: p.qos, result: .rejected(refusal)))
            return [.countRefused(reason: "acl_denied")] + flushAcks()
        }
        if p.qos != .atMostOnce, pendingAcks.count + awaitingRelease.count >= Int(options.receiveMaximum) {  // QoS 2 counts until PUBREL
            return [.countRefused(reason: "receive_maximum_exceeded")]
                + disconnect(.receiveMaximumExceeded, "more than \(options.receiveMaximum) unacknowledged QoS 1/2 messages")
        }
        let token = nextToken
        nextToken += 1
        if p.qos != .atMostOnce, let id = p.packetID {
            pendingAcks.append(PendingAck(token: token, packetID: id, qos: p.qos, result: nil))
        }
        return [.submit(envelope(for: p), token: token, publish: p)]
    }

    mutating func subscribe(_ s: MQTTPacket.Subscribe) -> [Action] {
        if version == .v5, s.properties.subscriptionIdentifiers.count > 1 {
            return disconnect(.protocolError, "more than one subscription identifier in SUBSCRIBE")
        }
        let identifier = s.properties.subscriptionIdentifiers.first
        var reasons: [ReasonCode] = []
        var added: [(MQTTPacket.Subscription, isNew: Bool)] = []
        for sub in s.subscriptions {
            if MQTTTopic.problemWithFilter(sub.filter) != nil {
                reasons.append(.topicFilterInvalid)
            } else if MQTTTopic.shared(sub.filter) != nil {
                reasons.append(.sharedSubscriptionsNotSupported)
            } else if subscribeDenied(sub.filter) {
                reasons.append(.notAuthorized)
            } else {
                let isNew = subscriptions.updateValue(sub, forKey: sub.filter) == nil
                added.append((sub, isNew))
                reasons.append([.success, .grantedQoS1, .grantedQoS2][Int(sub.qos.rawValue)])
            }
        }
        var actions: [Action] = [.send(.suback(MQTTPacket.SubAck(packetID: s.packetID, reasons: reasons)))]
        if !added.isEmpty { actions.append(.subscribe(added, identifier: identifier)) }
        return actions
    }

    /// A message for this client (from the broker's fan-out or the retained store), at the
    /// QoS it gets. QoS 1/2 waits for room in the in-flight window.
    public mutating func deliver(_ p: MQTTPacket.Publish) -> [Action] {
        guard state == .connected else { return [] }
        if p.qos == .atMostOnce && queued.isEmpty {
            return send(p)
        }
        if inflight.count < inflightLimit, queued.isEmpty {
            return send(p)
        }
        if queued.count >= options.maximumQueued {
            // Full: the oldest QoS 0 goes first, else the newcomer (counted either way).
            guard let index = queued.firstIndex(where: { $0.qos == .atMostOnce }) else {
                return [.dropOutbound(reason: "queue_full")]
            }
            queued.remove(at: index)
            queued.append(p)
            return [.dropOutbound(reason: "queue_full")]
        }
        queued.append(p)
        return []
    }

    mutating func send(_ p: MQTTPacket.Publish) -> [Action] {
        var p = p
        p.packetID = nil
        if p.qos != .atMostOnce {
            while inflight[nextPacketID] != nil || nextPacketID == 0 { nextPacketID &+= 1 }
            p.packetID = nextPacketID
            inflight[nextPacketID] = (p.qos, false)
            nextPacketID &+= 1
        }
        if clientMaximumPacketSize != Int.max, let size = try? MQTTEncoder.size(of: .publish(p), version: version ?? .v5),
            size > clientMaximumPacketSize
        {
            if let id = p.packetID { inflight.removeValue(forKey: id) }
            return [.dropOutbound(reason: "over_client_maximum_packet_size")]
        }
        return [.send(.publish(p))]
    }

    /// Sends queued messages while the window has room.
    mutating func drain() -> [Action] {
        var actions: [Action] = []
        while !queued.isEmpty, queued[0].qos == .atMostOnce || inflight.count < inflightLimit {
            actions += send(queued.removeFirst())
        }
        return actions
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
            product: identity?.product,
            device: identity?.device,
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

    /// The topic space of a device.
    struct ACL {
        var filter: String

        /// A topic the device may publish to.
        func allows(topic: String) -> Bool { MQTTTopic.matches(filter: filter, topic: topic) }

        /// A filter whose every topic is inside the space.
        func covers(filter f: String) -> Bool {
            guard filter.hasSuffix("/#") else { return f == filter }
            let prefix = filter.dropLast(2)
            return f == prefix || f.hasPrefix(prefix + "/")
        }
    }

    static func acl(_ template: String, _ identity: DeviceIdentity) -> ACL {
        ACL(filter: template.replacing("{product}", with: identity.product).replacing("{device}", with: identity.device))
    }

    /// A connect or disconnect event of the signed-in device (nil for anonymous clients or when
    /// events are off): `$events/{product}/{device}/{kind}` with a small JSON payload.
    public func connectionEvent(_ kind: String, reason: String? = nil) -> Envelope? {
        guard options.connectionEvents, let identity, let clientID else { return nil }
        var json = "{\"client_id\":\(JSONText.quote(clientID)),\"protocol\":\"mqtt\(version == .v5 ? "5" : "3.1.1")\""
        if let address = remoteAddress?.ipAddress { json += ",\"address\":\(JSONText.quote(address))" }
        if let reason { json += ",\"reason\":\(JSONText.quote(reason))" }
        json += ",\"at\":\(WallClock.nowNanos() / 1_000_000)}"
        return Envelope(
            id: makeID(),
            channel: options.channelName,
            topic: "$events/\(identity.product)/\(identity.device)/\(kind)",
            product: identity.product,
            device: identity.device,
            payload: ByteBuffer(string: json),
            headers: [HeaderField("content-type", "application/json"), HeaderField("x-mqtt-client-id", clientID)],
            receivedAt: WallClock.nowNanos(),
            trace: .generate(),
            clientAddress: remoteAddress
        )
    }

    /// Why this connection may not publish to `topic` (nil: it may).
    func publishDenied(_ topic: String) -> String? {
        if let rule = options.denyPublish.first(where: { MQTTTopic.matches(filter: $0, topic: topic) }) {
            return "publishing to \(topic) is denied (channels.mqtt.deny_publish: \(rule))"
        }
        if let acl, let identity, !acl.allows(topic: topic) {
            return "device \(identity.product)/\(identity.device) may publish only under \(acl.filter)"
        }
        return nil
    }

    /// Whether a subscription to `filter` is refused: a deny rule covers it, or it leaves the
    /// device's topic space.
    func subscribeDenied(_ filter: String) -> Bool {
        if options.denySubscribe.contains(where: { $0 == filter || MQTTTopic.matches(filter: $0, topic: filter) }) { return true }
        if let acl, !acl.covers(filter: filter) { return true }
        return false
    }
}
