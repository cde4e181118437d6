import MQTTWire
import NIOCore
import SwitchyardCore
import Testing

@testable import MQTTBroker

@Suite struct MQTTConnectionMachineTests {
    func machine(receiveMaximum: UInt16 = 64) -> MQTTConnectionMachine {
        var options = MQTTConnectionMachine.Options()
        options.allowAnonymous = true
        options.receiveMaximum = receiveMaximum
        return MQTTConnectionMachine(options: options, remoteAddress: nil)
    }

    func sent(_ actions: [MQTTConnectionMachine.Action]) -> [MQTTPacket] {
        actions.compactMap { if case .send(let p) = $0 { p } else { nil } }
    }

    func tokens(_ actions: [MQTTConnectionMachine.Action]) -> [UInt64] {
        actions.compactMap { if case .submit(let token, _) = $0 { token } else { nil } }
    }

    /// CONNECT, then the session the broker found (none) attached.
    func connect(_ m: inout MQTTConnectionMachine, _ c: MQTTPacket.Connect, session: MQTTSession? = nil) -> [MQTTConnectionMachine.Action] {
        let first = m.received(.connect(c), now: 0)
        guard first.contains(where: { if case .attach = $0 { true } else { false } }) else { return first }
        return m.attached(session, now: 0)
    }

    func connected(_ version: MQTTVersion = .v5, keepAlive: UInt16 = 10, receiveMaximum: UInt16 = 64) -> MQTTConnectionMachine {
        var m = machine(receiveMaximum: receiveMaximum)
        let actions = connect(&m, MQTTPacket.Connect(version: version, clientID: "d1", keepAliveSeconds: keepAlive))
        #expect(sent(actions).first?.kind == .connack)
        return m
    }

    func publish(_ id: UInt16, qos: QoS = .atLeastOnce) -> MQTTPacket {
        .publish(MQTTPacket.Publish(topic: "devices/p/d1/t", payload: ByteBuffer(string: "x"), qos: qos, packetID: id))
    }

    @Test func acknowledgementsLeaveInArrivalOrder() {
        var m = connected()
        let t1 = tokens(m.received(publish(1), now: 1))
        let t2 = tokens(m.received(publish(2), now: 2))
        // The second is refused at once; its PUBACK waits behind the first's journal commit.
        let refusal = Rejection(filter: "devices", reason: "device_denied", status: 403, message: "denied")
        #expect(sent(m.submitted(token: t2[0], result: .rejected(refusal))).isEmpty)
        let acks = sent(m.submitted(token: t1[0], result: .accepted))
        #expect(acks.count == 2)
        #expect(acks.first == .puback(MQTTPacket.Ack(packetID: 1)))
        guard case .puback(let second) = acks.last else { Issue.record("no second PUBACK"); return }
        #expect(second.packetID == 2 && second.reason == .notAuthorized)
        #expect(second.properties.reasonString?.contains("device_denied") == true)
    }

    @Test func v3HasNoNegativeAcknowledgementSoItCloses() {
        var m = connected(.v3_1_1)
        let t = tokens(m.received(publish(1), now: 1))
        let actions = m.submitted(
            token: t[0],
            result: .rejected(Rejection(filter: "rate_limit", reason: "rate_limited", status: 429, message: "slow down"))
        )
        #expect(sent(actions).isEmpty)
        #expect(actions.contains { if case .close = $0 { true } else { false } })
    }

    @Test func qos2IsTakenOnceAndReleased() {
        var m = connected()
        let t = tokens(m.received(publish(5, qos: .exactlyOnce), now: 1))
        #expect(sent(m.submitted(token: t[0], result: .accepted)) == [.pubrec(MQTTPacket.Ack(packetID: 5))])
        // A resend before PUBREL is answered, not submitted again.
        let again = m.received(publish(5, qos: .exactlyOnce), now: 2)
        #expect(tokens(again).isEmpty)
        #expect(sent(again) == [.pubrec(MQTTPacket.Ack(packetID: 5))])
        #expect(sent(m.received(.pubrel(MQTTPacket.Ack(packetID: 5)), now: 3)) == [.pubcomp(MQTTPacket.Ack(packetID: 5))])
        #expect(
            sent(m.received(.pubrel(MQTTPacket.Ack(packetID: 5)), now: 4)) == [
                .pubcomp(MQTTPacket.Ack(packetID: 5, reason: .packetIdentifierNotFound))
            ]
        )
    }

    @Test func receiveMaximumIsEnforced() {
        var m = connected(receiveMaximum: 2)
        _ = m.received(publish(1), now: 1)
        _ = m.received(publish(2), now: 2)
        let over = m.received(publish(3), now: 3)
        #expect(over.contains { if case .countRefused("receive_maximum_exceeded") = $0 { true } else { false } })
        guard case .disconnect(let d)? = sent(over).last else { Issue.record("no DISCONNECT"); return }
        #expect(d.reason == .receiveMaximumExceeded)
    }

    @Test func qos2MessagesCountAgainstReceiveMaximumUntilReleased() {
        var m = connected(receiveMaximum: 2)
        for id: UInt16 in 1...2 {
            let t = tokens(m.received(publish(id, qos: .exactlyOnce), now: 1))
            _ = m.submitted(token: t[0], result: .accepted)  // PUBREC sent; PUBREL not yet received
        }
        let over = m.received(publish(3, qos: .exactlyOnce), now: 2)
        guard case .disconnect(let d)? = sent(over).last else { Issue.record("no DISCONNECT"); return }
        #expect(d.reason == .receiveMaximumExceeded)
    }

    @Test func keepAliveTimesOutAfterOneAndAHalfPeriods() {
        var m = connected(keepAlive: 10)
        #expect(m.tick(now: 14_000_000_000).isEmpty)
        _ = m.received(.pingreq, now: 14_000_000_000)
        #expect(m.tick(now: 28_000_000_000).isEmpty)
        let late = m.tick(now: 29_100_000_000)
        guard case .disconnect(let d)? = sent(late).first else { Issue.record("no DISCONNECT"); return }
        #expect(d.reason == .keepAliveTimeout)
    }

    @Test func aClientAskingForNoKeepAliveGetsTheServersMaximum() {
        var m = machine()
        let actions = connect(&m, MQTTPacket.Connect(version: .v5, clientID: "", keepAliveSeconds: 0))
        guard case .connack(let ack)? = sent(actions).first else { Issue.record("no CONNACK"); return }
        #expect(ack.properties.serverKeepAlive == 3600)
        #expect(ack.properties.assignedClientIdentifier?.hasPrefix("auto-") == true)
        #expect(ack.properties.receiveMaximum == 64)
    }

    @Test func theWillGoesOutOnlyWithoutANormalDisconnect() {
        func withWill() -> MQTTConnectionMachine {
            var m = machine()
            let will = MQTTPacket.Will(topic: "devices/p/d1/status", payload: ByteBuffer(string: "offline"))
            _ = connect(&m, MQTTPacket.Connect(version: .v5, clientID: "d1", will: will))
            return m
        }
        var dropped = withWill()
        #expect(dropped.connectionClosed().contains { if case .publishWill = $0 { true } else { false } })
        var polite = withWill()
        _ = polite.received(.disconnect(MQTTPacket.Disconnect()), now: 1)
        #expect(polite.connectionClosed().isEmpty)
        var asked = withWill()
        #expect(
            asked.received(.disconnect(MQTTPacket.Disconnect(reason: .disconnectWithWillMessage)), now: 1).contains {
                if case .publishWill = $0 { true } else { false }
            }
        )
    }

    @Test func outboundQoS1WaitsForRoomInTheWindow() {
        var m = machine()
        var props = MQTTProperties()
        props.receiveMaximum = 2  // the client takes two at a time
        _ = connect(&m, MQTTPacket.Connect(version: .v5, clientID: "d1", properties: props))
        func msg(_ i: Int) -> MQTTPacket.Publish { MQTTPacket.Publish(topic: "c/\(i)", payload: ByteBuffer(), qos: .atLeastOnce) }
        let first = sent(m.deliver(msg(1))) + sent(m.deliver(msg(2)))
        #expect(first.count == 2)
        #expect(sent(m.deliver(msg(3))).isEmpty)  // queued
        guard case .publish(let p1) = first[0], let id = p1.packetID else { Issue.record("no packet id"); return }
        let next = sent(m.received(.puback(MQTTPacket.Ack(packetID: id)), now: 1))
        guard case .publish(let p3)? = next.first else { Issue.record("the queued message did not go"); return }
        #expect(p3.topic == "c/3")
        #expect(p3.packetID != nil)
    }

    @Test func invalidAndSharedFiltersAreRefusedPerFilter() {
        var options = MQTTConnectionMachine.Options()
        options.allowAnonymous = true
        options.sharedSubscriptions = false
        var m = MQTTConnectionMachine(options: options, remoteAddress: nil)
        _ = connect(&m, MQTTPacket.Connect(version: .v5, clientID: "d1"))
        let actions = m.received(
            .subscribe(
                MQTTPacket.Subscribe(
                    packetID: 3,
                    subscriptions: [.init(filter: "a/#/b"), .init(filter: "$share/g/a"), .init(filter: "a/+", qos: .atLeastOnce)]
                )
            ),
            now: 1
        )
        guard case .suback(let ack)? = sent(actions).first else { Issue.record("no SUBACK"); return }
        #expect(ack.reasons == [.topicFilterInvalid, .sharedSubscriptionsNotSupported, .grantedQoS1])
        #expect(m.subscriptions.keys.sorted() == ["a/+"])
    }

    @Test func denyRulesApplyToEveryoneAnonymousIncluded() {
        var options = MQTTConnectionMachine.Options()
        options.allowAnonymous = true
        options.denySubscribe = ["test/nosubscribe"]
        options.denyPublish = ["secret/#"]
        var m = MQTTConnectionMachine(options: options, remoteAddress: nil)
        _ = connect(&m, MQTTPacket.Connect(version: .v5, clientID: "a"))
        let sub = sent(
            m.received(
                .subscribe(MQTTPacket.Subscribe(packetID: 1, subscriptions: [.init(filter: "test/nosubscribe"), .init(filter: "test/ok")])),
                now: 1
            )
        )
        guard case .suback(let ack)? = sub.first else { Issue.record("no SUBACK"); return }
        #expect(ack.reasons == [.unspecifiedError, .success])  // 0x80: what every client version knows
        #expect(ack.properties.reasonString?.contains("channels.mqtt.deny_subscribe") == true)
        let pub = m.received(
            .publish(MQTTPacket.Publish(topic: "secret/x", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, packetID: 2)),
            now: 2
        )
        #expect(tokens(pub).isEmpty)  // never reaches the pipeline
        guard case .puback(let ack)? = sent(pub).first else { Issue.record("no PUBACK"); return }
        #expect(ack.reason == .notAuthorized)
    }

    // MARK: - Sessions

    func persistent(_ m: inout MQTTConnectionMachine, clean: Bool = false, session: MQTTSession? = nil) -> [MQTTConnectionMachine.Action] {
        var props = MQTTProperties()
        props.sessionExpiryInterval = 300
        return connect(&m, MQTTPacket.Connect(version: .v5, clientID: "d1", cleanStart: clean, properties: props), session: session)
    }

    @Test func aResumedSessionResendsUnacknowledgedMessagesWithDupAndPresentIsSet() {
        var first = machine()
        _ = persistent(&first)
        _ = first.received(.subscribe(MQTTPacket.Subscribe(packetID: 1, subscriptions: [.init(filter: "c/#", qos: .atLeastOnce)])), now: 1)
        let out = sent(first.deliver(MQTTPacket.Publish(topic: "c/1", payload: ByteBuffer(string: "a"), qos: .atLeastOnce)))
        guard case .publish(let p1)? = out.first, let id = p1.packetID else { Issue.record("not sent"); return }
        #expect(!p1.dup)
        _ = first.connectionClosed()
        guard let kept = first.session(endedAt: 1) else { Issue.record("no session kept"); return }
        #expect(kept.subscriptions.keys.sorted() == ["c/#"])
        #expect(kept.inflight.count == 1)

        var second = machine()
        let actions = sent(persistent(&second, session: kept))
        guard case .connack(let ack)? = actions.first else { Issue.record("no CONNACK"); return }
        #expect(ack.sessionPresent)
        guard case .publish(let again)? = actions.dropFirst().first else { Issue.record("not resent"); return }
        #expect(again.dup && again.packetID == id && again.topic == "c/1")
        #expect(second.subscriptions.keys.sorted() == ["c/#"])
    }

    @Test func noSessionIsKeptWithoutAnExpiryInterval() {
        var m = connected()
        _ = m.connectionClosed()
        #expect(m.session(endedAt: 1) == nil)
        #expect(m.session(endedAt: 1, evenIfEnding: true)?.expirySeconds == 0)
    }

    @Test func packetsThatComeWhileTheSessionIsAttachedWaitForIt() {
        var m = machine()
        #expect(m.received(.connect(MQTTPacket.Connect(version: .v5, clientID: "d1")), now: 0).count == 1)
        #expect(m.received(.pingreq, now: 1).isEmpty)
        let actions = sent(m.attached(nil, now: 2))
        #expect(actions.map(\.kind) == [.connack, .pingresp])
    }

    @Test func aSessionExpiryAboveTheMaximumIsCappedAndTold() {
        var m = machine()
        var props = MQTTProperties()
        props.sessionExpiryInterval = UInt32.max
        guard case .connack(let ack)? = sent(connect(&m, MQTTPacket.Connect(version: .v5, clientID: "d1", properties: props))).first else {
            Issue.record("no CONNACK")
            return
        }
        #expect(ack.properties.sessionExpiryInterval == 7200)
        #expect(m.sessionExpirySeconds == 7200)
    }

    @Test func topicAliasesAreSetThenUsed() {
        var m = connected()
        var props = MQTTProperties()
        props.topicAlias = 3
        let set = m.received(.publish(MQTTPacket.Publish(topic: "devices/p/d1/t", payload: ByteBuffer(string: "1"), properties: props)), now: 1)
        let used = m.received(.publish(MQTTPacket.Publish(topic: "", payload: ByteBuffer(string: "2"), properties: props)), now: 2)
        let topics = (set + used).compactMap { if case .submit(_, let p) = $0 { m.envelope(for: p).topic } else { nil } }
        #expect(topics == ["devices/p/d1/t", "devices/p/d1/t"])
        props.topicAlias = 9
        let unknown = sent(m.received(.publish(MQTTPacket.Publish(topic: "", payload: ByteBuffer(string: "3"), properties: props)), now: 3))
        guard case .disconnect(let d)? = unknown.first else { Issue.record("no DISCONNECT"); return }
        #expect(d.reason == .protocolError)
    }

    @Test func expiredMessagesAreNotSent() {
        var m = connected()
        var p = MQTTPacket.Publish(topic: "c/1", payload: ByteBuffer(string: "a"), qos: .atLeastOnce)
        p.properties.messageExpiryInterval = 60
        let gone = m.deliver(MQTTOutbound(publish: p, expiresAt: WallClock.nowNanos() - 1))
        #expect(sent(gone).isEmpty)
        #expect(gone.contains { if case .dropOutbound(reason: "expired") = $0 { true } else { false } })
        let fresh = sent(m.deliver(MQTTOutbound(publish: p, expiresAt: WallClock.nowNanos() + 30_000_000_000)))
        guard case .publish(let sentOne)? = fresh.first else { Issue.record("not sent"); return }
        #expect((29...30).contains(sentOne.properties.messageExpiryInterval ?? 0))  // what is left, not the original 60
    }

    @Test func sharedMessagesAreTakenBackWhenTheMemberLeaves() {
        var m = connected()
        let p = MQTTPacket.Publish(topic: "c/1", payload: ByteBuffer(string: "a"), qos: .atLeastOnce)
        _ = m.deliver(MQTTOutbound(publish: p, shareFilter: "$share/g/c/#"))
        _ = m.deliver(MQTTOutbound(publish: p))
        let taken = m.takeSharedMessages()
        #expect(taken.count == 1 && taken[0].publish.packetID == nil)
        #expect(m.inflight.count == 1)
    }

    struct Devices: DeviceAuthenticator {
        func authenticate(username: String, password: ByteBuffer?, clientID: String) -> Result<DeviceIdentity, MQTTWireError> {
            .success(DeviceIdentity(product: "p1", device: "d1"))
        }
    }

    @Test func allowRulesWidenADevicesTopicSpace() {
        var options = MQTTConnectionMachine.Options()
        options.authenticator = Devices()
        options.allowSubscribe = ["broadcast/{product}/#"]
        options.allowPublish = ["shared/{product}/{device}"]
        var m = MQTTConnectionMachine(options: options, remoteAddress: nil)
        _ = connect(&m, MQTTPacket.Connect(version: .v5, clientID: "d1", username: "d1&p1", password: ByteBuffer(string: "x")))
        let filters = ["devices/p1/d1/#", "broadcast/p1/+", "broadcast/p2/x", "devices/p1/d2/#"]
        let sub = sent(m.received(.subscribe(MQTTPacket.Subscribe(packetID: 1, subscriptions: filters.map { .init(filter: $0) })), now: 1))
        guard case .suback(let ack)? = sub.first else { Issue.record("no SUBACK"); return }
        #expect(ack.reasons == [.success, .success, .notAuthorized, .notAuthorized])
        func publishes(_ topic: String) -> Bool {
            !tokens(m.received(.publish(MQTTPacket.Publish(topic: topic, payload: ByteBuffer(string: "x"), qos: .atLeastOnce, packetID: 9)), now: 2))
                .isEmpty
        }
        #expect(publishes("shared/p1/d1"))
        #expect(!publishes("shared/p1/d2"))
        #expect(!publishes("broadcast/p1/x"))  // subscribe-only
    }

    struct SignedDevices: DeviceAuthenticator {
        func authenticate(username: String, password: ByteBuffer?, clientID: String) -> Result<DeviceIdentity, MQTTWireError> {
            .success(DeviceIdentity(product: "p1", device: "d1", clientID: String(clientID.prefix { $0 != "|" })))
        }
    }

    @Test func credentialsThatNameAClientIDGiveTheSessionThatID() {
        var options = MQTTConnectionMachine.Options()
        options.authenticator = SignedDevices()
        var m = MQTTConnectionMachine(options: options, remoteAddress: nil)
        let actions = m.received(
            .connect(
                MQTTPacket.Connect(version: .v5, clientID: "dev|securemode=3,timestamp=1|", username: "d1&p1", password: ByteBuffer(string: "x"))
            ),
            now: 0
        )
        #expect(actions.contains { if case .attach(clientID: "dev", _) = $0 { true } else { false } })
        #expect(m.clientID == "dev" && m.identity?.clientID == nil)
    }
}
