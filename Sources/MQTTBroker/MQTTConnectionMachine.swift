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
    /// The client id the credentials name, when it differs from the CONNECT's (a signed
    /// password's client id is `{id}|securemode=…|`; the session is `{id}`'s).
    public var clientID: String?
    public init(product: String, device: String, clientID: String? = nil) {
        self.product = product
        self.device = device
        self.clientID = clientID
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
        /// More topic filters a signed-in device may publish to / subscribe to, beyond its own
        /// space (`{product}` and `{device}` filled in), e.g. `broadcast/{product}/#`.
        public var allowPublish: [String] = []
        public var allowSubscribe: [String] = []
        /// The longest a session outlives its connection (v5 clients asking for more get this
        /// in CONNACK; a 3.1.1 clean-session-0 session gets exactly this).
        public var maximumSessionExpirySeconds: UInt32 = 7200
        /// Topic aliases a v5 client may use towards the broker (0: none).
        public var topicAliasMaximum: UInt16 = 64
        /// Accept `$share/{group}/{filter}` subscriptions.
        public var sharedSubscriptions = true
        public init() {}
    }

    public enum Action: Sendable {
        case send(MQTTPacket)
        /// Hand a device message to the pipeline (its envelope, `envelope(for: publish)`, is built
        /// only when the pipeline needs one); answer with `submitted(token:result:)`. Once
        /// accepted, `publish` goes to the broker's subscribers (and the retained store).
        case submit(token: UInt64, publish: MQTTPacket.Publish)
        /// Add subscriptions in the broker's trie; the matching retained messages go out after
        /// the actions that follow (the SUBACK).
        case subscribe([(MQTTPacket.Subscription, isNew: Bool)], identifier: Int?)
        case unsubscribe([String])
        /// A message for the client could not be kept (queue full, too large): count it.
        case dropOutbound(reason: String)
        /// Take the client id's session (taking over an older connection with it, or starting a
        /// new session when `cleanStart`); answer with `attached(_:now:)`.
        case attach(clientID: String, cleanStart: Bool)
        /// Close the connection (after the packets sent before it).
        case close(reason: String)
        /// Publish the will (the connection ended without a normal DISCONNECT).
        case publishWill(MQTTPacket.Will, clientID: String)
        /// A PUBLISH refused before it reached the pipeline: count it (received and rejected).
        case countRefused(reason: String)
    }

    enum State: Equatable {
        case awaitingConnect
        /// CONNECT accepted, waiting for the session (packets that come meanwhile wait too).
        case attaching
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
    /// v5 Subscription Identifier per filter.
    var identifiers: [String: Int] = [:]
    /// Outbound QoS 1/2 in flight, by packet id.
    var inflight: [UInt16: MQTTOutbound] = [:]
    var queued = OutboundQueue()
    var nextPacketID: UInt16 = 1
    var nextSequence: UInt64 = 1
    /// Session Expiry Interval in force (0: the session ends with the connection).
    public private(set) var sessionExpirySeconds: UInt32 = 0
    var cleanStart = true
    var connAckProperties = MQTTProperties()
    /// Packets that came while the session was being attached.
    var early: [MQTTPacket] = []
    var wasAttached = false
    /// Topic aliases the client set (v5), alias → topic.
    var topicAliases: [UInt16: String] = [:]
    /// Topic aliases towards the client, topic → alias, at most `clientTopicAliasMaximum`.
    var outboundAliases: [String: UInt16] = [:]
    var clientTopicAliasMaximum = 0
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
        case .attaching:
            early.append(packet)
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
                    identifiers.removeValue(forKey: filter)
                    reasons.append(subscriptions.removeValue(forKey: filter) != nil ? .success : .noSubscriptionExisted)
                }
                return [
                    .unsubscribe(u.filters),
                    .send(.unsuback(MQTTPacket.UnsubAck(packetID: u.packetID, reasons: version == .v5 ? reasons : []))),
                ]
            case .pingreq:
                return [.send(.pingresp)]
            case .disconnect(let d):
                if let expiry = d.properties.sessionExpiryInterval {
                    guard sessionExpirySeconds > 0 || expiry == 0 else {
                        return disconnect(.protocolError, "DISCONNECT may not set a Session Expiry Interval when CONNECT set 0")
                    }
                    sessionExpirySeconds = min(expiry, options.maximumSessionExpirySeconds)
                }
                state = .closed
                var actions: [Action] = []
                if d.reason == .disconnectWithWillMessage, let will, let clientID { actions.append(.publishWill(will, clientID: clientID)) }
                will = nil
                return actions + [.close(reason: "client disconnected (\(d.reason))")]
            case .puback(let a):
                guard inflight[a.packetID]?.publish.qos == .atLeastOnce else { return [] }
                inflight.removeValue(forKey: a.packetID)
                return drain()
            case .pubrec(let a):
                guard inflight[a.packetID]?.publish.qos == .exactlyOnce else {
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
            case .success(var id):
                if let named = id.clientID {
                    clientID = named
                    id.clientID = nil
                }
                identity = id
                acl = Self.acl(options, id)
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
            if options.topicAliasMaximum > 0 { ackProperties.topicAliasMaximum = options.topicAliasMaximum }
            if !options.sharedSubscriptions { ackProperties.sharedSubscriptionAvailable = 0 }
        }
        // v5: the client's Session Expiry Interval (capped, and then told); 3.1.1: a session
        // without clean session lasts the broker's maximum.
        if c.version == .v5 {
            let asked = c.properties.sessionExpiryInterval ?? 0
            sessionExpirySeconds = min(asked, options.maximumSessionExpirySeconds)
            if asked > sessionExpirySeconds { ackProperties.sessionExpiryInterval = sessionExpirySeconds }
        } else {
            sessionExpirySeconds = c.cleanStart ? 0 : options.maximumSessionExpirySeconds
        }
        inflightLimit = min(options.maximumInflight, Int(c.properties.receiveMaximum ?? UInt16.max))
        if let max = c.properties.maximumPacketSize { clientMaximumPacketSize = Int(max) }
        clientTopicAliasMaximum = Int(c.properties.topicAliasMaximum ?? 0)
        state = .attaching
        cleanStart = c.cleanStart
        connAckProperties = ackProperties
        self.clientID = clientID
        will = c.will
        return [.attach(clientID: clientID, cleanStart: c.cleanStart)]
    }

    /// The broker found (or started) the session: CONNACK goes out, then what the session
    /// still owes the client (unacknowledged messages again with DUP, in order; then the
    /// queue), then the packets that came meanwhile are handled.
    public mutating func attached(_ session: MQTTSession?, now: UInt64) -> [Action] {
        guard state == .attaching else { return [] }
        state = .connected
        wasAttached = true
        var actions: [Action] = [
            .send(.connack(MQTTPacket.ConnAck(sessionPresent: session != nil, reason: .success, properties: connAckProperties)))
        ]
        if let session {
            subscriptions = session.subscriptions
            identifiers = session.identifiers
            awaitingRelease = session.awaitingRelease
            nextPacketID = session.nextPacketID
            queued = session.queued
            for var message in session.inflight {
                guard let id = message.publish.packetID else { continue }
                message.sequence = nextSequence
                nextSequence += 1
                if message.released {
                    inflight[id] = message
                    actions.append(.send(.pubrel(MQTTPacket.Ack(packetID: id))))
                    continue
                }
                if let at = message.expiresAt, !stampExpiry(&message.publish, expiresAt: at) {
                    actions.append(.dropOutbound(reason: "expired"))
                    continue
                }
                inflight[id] = message
                message.publish.dup = true
                actions.append(.send(.publish(message.publish)))
            }
            actions += drain()
        }
        let early = self.early
        self.early = []
        for packet in early where state == .connected { actions += received(packet, now: now) }
        return actions
    }

    /// What outlives this connection (nil when the session ends with it, unless
    /// `evenIfEnding`: then it comes with expiry 0).
    public func session(endedAt: UInt64, evenIfEnding: Bool = false) -> MQTTSession? {
        guard wasAttached, sessionExpirySeconds > 0 || evenIfEnding, let clientID else { return nil }
        var s = MQTTSession(clientID: clientID, identity: identity, expirySeconds: sessionExpirySeconds)
        s.subscriptions = subscriptions
        s.identifiers = identifiers
        s.inflight = inflight.values.sorted { $0.sequence < $1.sequence }
        s.queued = queued
        s.awaitingRelease = awaitingRelease
        s.nextPacketID = nextPacketID
        s.endedAt = endedAt
        return s
    }

    /// Takes out the messages that came through shared subscriptions and were not yet
    /// delivered (a QoS 2 message already released stays: it arrived).
    public mutating func takeSharedMessages() -> [MQTTOutbound] {
        var taken: [MQTTOutbound] = []
        for (id, m) in inflight.sorted(by: { $0.value.sequence < $1.value.sequence }) where m.shareFilter != nil && !m.released {
            inflight.removeValue(forKey: id)
            var m = m
            m.publish.packetID = nil
            m.publish.dup = false
            taken.append(m)
        }
        taken += queued.elements.filter { $0.shareFilter != nil }
        queued.removeAll { $0.shareFilter != nil }
        return taken
    }

    mutating func publish(_ p: MQTTPacket.Publish) -> [Action] {
        var p = p
        if !p.properties.isEmpty, let alias = p.properties.topicAlias {
            guard alias > 0, alias <= options.topicAliasMaximum else {
                return [.countRefused(reason: "topic_alias_invalid")]
                    + disconnect(.topicAliasInvalid, "topic alias \(alias) is outside 1…\(options.topicAliasMaximum) (Topic Alias Maximum)")
            }
            if p.topic.isEmpty {
                guard let topic = topicAliases[alias] else {
                    return [.countRefused(reason: "topic_alias_invalid")]
                        + disconnect(.protocolError, "topic alias \(alias) was never set")
                }
                p.topic = topic
            } else {
                topicAliases[alias] = p.topic
            }
            p.properties.topicAlias = nil
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
        return [.submit(token: token, publish: p)]
    }

    mutating func subscribe(_ s: MQTTPacket.Subscribe) -> [Action] {
        if version == .v5, s.properties.subscriptionIdentifiers.count > 1 {
            return disconnect(.protocolError, "more than one subscription identifier in SUBSCRIBE")
        }
        let identifier = s.properties.subscriptionIdentifiers.first
        var reasons: [ReasonCode] = []
        var refusals: [String] = []
        var added: [(MQTTPacket.Subscription, isNew: Bool)] = []
        for sub in s.subscriptions {
            let shared = MQTTTopic.shared(sub.filter)
            if shared != nil, sub.noLocal, version == .v5 {
                return disconnect(.protocolError, "No Local on a shared subscription (\(sub.filter))")
            }
            var refusal: (ReasonCode, String)?
            if let problem = MQTTTopic.problemWithFilter(sub.filter) {
                refusal = (.topicFilterInvalid, problem)
            } else if shared != nil, !options.sharedSubscriptions {
                refusal = (.sharedSubscriptionsNotSupported, "shared subscriptions are off (channels.mqtt.shared_subscriptions)")
            } else if let denied = subscribeDenied(shared?.filter ?? sub.filter) {
                refusal = denied
            }
            if let (code, why) = refusal {
                reasons.append(code)
                refusals.append("\(sub.filter): \(why)")
                continue
            }
            identifiers[sub.filter] = identifier
            let isNew = subscriptions.updateValue(sub, forKey: sub.filter) == nil
            added.append((sub, isNew))
            reasons.append([.success, .grantedQoS1, .grantedQoS2][Int(sub.qos.rawValue)])
        }
        var properties = MQTTProperties()
        if version == .v5, !refusals.isEmpty { properties.reasonString = refusals.joined(separator: "; ") }
        // In effect before the SUBACK says so (another client's next publish must reach it); the
        // retained messages it brings follow the SUBACK.
        var actions: [Action] = added.isEmpty ? [] : [.subscribe(added, identifier: identifier)]
        actions.append(.send(.suback(MQTTPacket.SubAck(packetID: s.packetID, reasons: reasons, properties: properties))))
        return actions
    }

    /// A message for this client (from the broker's fan-out or the retained store), at the
    /// QoS it gets. QoS 1/2 waits for room in the in-flight window.
    public mutating func deliver(_ p: MQTTPacket.Publish) -> [Action] {
        deliver(MQTTOutbound(publish: p))
    }

    public mutating func deliver(_ m: MQTTOutbound) -> [Action] {
        guard state == .connected else {
            // Not attached yet: it waits with the session's queue (sent after CONNACK).
            guard state == .attaching else { return [] }
            queued.append(m)
            return []
        }
        if m.publish.qos == .atMostOnce && queued.isEmpty {
            return send(m)
        }
        if inflight.count < inflightLimit, queued.isEmpty {
            return send(m)
        }
        let dropped = queued.enqueue(m, limit: options.maximumQueued)
        return dropped ? [.dropOutbound(reason: "queue_full")] : []
    }

    mutating func send(_ m: MQTTOutbound) -> [Action] {
        var m = m
        m.publish.packetID = nil
        m.publish.dup = false
        if let at = m.expiresAt, !stampExpiry(&m.publish, expiresAt: at) { return [.dropOutbound(reason: "expired")] }
        if clientMaximumPacketSize != Int.max {
            var measured = m.publish
            if measured.qos != .atMostOnce { measured.packetID = 1 }
            guard let size = try? MQTTEncoder.size(of: .publish(measured), version: version ?? .v5), size <= clientMaximumPacketSize else {
                return [.dropOutbound(reason: "over_client_maximum_packet_size")]
            }
        }
        if m.publish.qos != .atMostOnce {
            while inflight[nextPacketID] != nil || nextPacketID == 0 { nextPacketID &+= 1 }
            m.publish.packetID = nextPacketID
            m.sequence = nextSequence
            nextSequence += 1
            inflight[nextPacketID] = m
            nextPacketID &+= 1
        }
        return [.send(.publish(aliased(m.publish)))]
    }

    /// v5: the topic as an alias the client allowed (Topic Alias Maximum in its CONNECT) —
    /// the full topic the first time, the alias alone after. New topics past the maximum go
    /// without one.
    mutating func aliased(_ p: MQTTPacket.Publish) -> MQTTPacket.Publish {
        guard clientTopicAliasMaximum > 0 else { return p }
        var p = p
        if let alias = outboundAliases[p.topic] {
            p.topic = ""
            p.properties.topicAlias = alias
        } else if outboundAliases.count < clientTopicAliasMaximum {
            let alias = UInt16(outboundAliases.count + 1)
            outboundAliases[p.topic] = alias
            p.properties.topicAlias = alias
        }
        return p
    }

    /// Sets the Message Expiry Interval to what is left; false when nothing is.
    func stampExpiry(_ p: inout MQTTPacket.Publish, expiresAt: UInt64) -> Bool {
        let now = WallClock.nowNanos()
        guard expiresAt > now else { return false }
        p.properties.messageExpiryInterval = UInt32(min((expiresAt - now + 999_999_999) / 1_000_000_000, UInt64(UInt32.max)))
        return true
    }

    /// Sends queued messages while the window has room.
    mutating func drain() -> [Action] {
        var actions: [Action] = []
        while let next = queued.first, next.publish.qos == .atMostOnce || inflight.count < inflightLimit {
            actions += send(queued.removeFirst())
        }
        return actions
    }

    func envelope(for p: MQTTPacket.Publish) -> Envelope {
        var headers: [HeaderField] = []
        headers.reserveCapacity(3)
        var traceparent: String?
        var baggage: String?
        let properties = p.properties.isEmpty ? MQTTProperties.Fields() : p.properties.fields  // read once, not per key path
        if let type = properties.contentType { headers.append(HeaderField("content-type", type)) }
        for u in properties.userProperties {
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
            trace: TraceContext(traceparent: traceparent, baggage: baggage) ?? .pending(baggage: baggage),  // made by the pipeline if needed
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

    /// The topic space of a device: its own (the template), and what the allow rules add.
    struct ACL {
        var filter: String
        var publish: [String] = []
        var subscribe: [String] = []

        /// A topic the device may publish to.
        func allows(topic: String) -> Bool {
            MQTTTopic.matches(filter: filter, topic: topic) || publish.contains { MQTTTopic.matches(filter: $0, topic: topic) }
        }

        /// A filter whose every topic is inside the space.
        func covers(filter f: String) -> Bool {
            MQTTTopic.filter(filter, covers: f) || subscribe.contains { MQTTTopic.filter($0, covers: f) }
        }

    }

    static func acl(_ options: Options, _ identity: DeviceIdentity) -> ACL {
        func fill(_ template: String) -> String {
            template.replacing("{product}", with: identity.product).replacing("{device}", with: identity.device)
        }
        return ACL(filter: fill(options.aclTemplate), publish: options.allowPublish.map(fill), subscribe: options.allowSubscribe.map(fill))
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
        if topic.hasPrefix("$SYS/") || topic.hasPrefix("$events/") {
            return "\(topic.prefix { $0 != "/" })/ topics are the broker's own; clients may not publish to them"
        }
        if let rule = options.denyPublish.first(where: { MQTTTopic.matches(filter: $0, topic: topic) }) {
            return "publishing to \(topic) is denied (channels.mqtt.deny_publish: \(rule))"
        }
        if let acl, let identity, !acl.allows(topic: topic) {
            return "device \(identity.product)/\(identity.device) may publish only under \(([acl.filter] + acl.publish).joined(separator: ", "))"
        }
        return nil
    }

    /// Why a subscription to `filter` is refused, nil when it is not: a deny rule covers it
    /// (0x80, the failure code every client version knows), or it leaves the device's topic
    /// space (0x87 Not authorized).
    func subscribeDenied(_ filter: String) -> (ReasonCode, String)? {
        if let rule = options.denySubscribe.first(where: { $0 == filter || MQTTTopic.matches(filter: $0, topic: filter) }) {
            return (.unspecifiedError, "denied by channels.mqtt.deny_subscribe (\(rule))")
        }
        if let acl, let identity, !acl.covers(filter: filter) {
            return (
                .notAuthorized,
                "device \(identity.product)/\(identity.device) may subscribe only under \(([acl.filter] + acl.subscribe).joined(separator: ", "))"
            )
        }
        return nil
    }
}
