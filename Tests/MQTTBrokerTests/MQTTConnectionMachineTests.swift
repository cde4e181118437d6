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
        actions.compactMap { if case .submit(_, let token, _) = $0 { token } else { nil } }
    }

    func connected(_ version: MQTTVersion = .v5, keepAlive: UInt16 = 10, receiveMaximum: UInt16 = 64) -> MQTTConnectionMachine {
        var m = machine(receiveMaximum: receiveMaximum)
        let actions = m.received(.connect(MQTTPacket.Connect(version: version, clientID: "d1", keepAliveSeconds: keepAlive)), now: 0)
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
        let actions = m.received(.connect(MQTTPacket.Connect(version: .v5, clientID: "", keepAliveSeconds: 0)), now: 0)
        guard case .connack(let ack)? = sent(actions).first else { Issue.record("no CONNACK"); return }
        #expect(ack.properties.serverKeepAlive == 3600)
        #expect(ack.properties.assignedClientIdentifier?.hasPrefix("auto-") == true)
        #expect(ack.properties.receiveMaximum == 64)
    }

    @Test func theWillGoesOutOnlyWithoutANormalDisconnect() {
        func withWill() -> MQTTConnectionMachine {
            var m = machine()
            let will = MQTTPacket.Will(topic: "devices/p/d1/status", payload: ByteBuffer(string: "offline"))
            _ = m.received(.connect(MQTTPacket.Connect(version: .v5, clientID: "d1", will: will)), now: 0)
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
        _ = m.received(.connect(MQTTPacket.Connect(version: .v5, clientID: "d1", properties: props)), now: 0)
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
        var m = connected()
        let actions = m.received(
            .subscribe(
                MQTTPacket.Subscribe(
                    packetID: 3,
                    subscriptions: [.init(filter: "a/#/b"), .init(filter: "$share/g/a"), .init(filter: "a/+", qos: .atLeastOnce)]
                )
            ),
            now: 1
        )
        #expect(
            sent(actions).first
                == .suback(MQTTPacket.SubAck(packetID: 3, reasons: [.topicFilterInvalid, .sharedSubscriptionsNotSupported, .grantedQoS1]))
        )
        #expect(m.subscriptions.keys.sorted() == ["a/+"])
    }

    @Test func denyRulesApplyToEveryoneAnonymousIncluded() {
        var options = MQTTConnectionMachine.Options()
        options.allowAnonymous = true
        options.denySubscribe = ["test/nosubscribe"]
        options.denyPublish = ["secret/#"]
        var m = MQTTConnectionMachine(options: options, remoteAddress: nil)
        _ = m.received(.connect(MQTTPacket.Connect(version: .v5, clientID: "a")), now: 0)
        let sub = sent(
            m.received(
                .subscribe(MQTTPacket.Subscribe(packetID: 1, subscriptions: [.init(filter: "test/nosubscribe"), .init(filter: "test/ok")])),
                now: 1
            )
        )
        #expect(sub.first == .suback(MQTTPacket.SubAck(packetID: 1, reasons: [.notAuthorized, .success])))
        let pub = m.received(
            .publish(MQTTPacket.Publish(topic: "secret/x", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, packetID: 2)),
            now: 2
        )
        #expect(tokens(pub).isEmpty)  // never reaches the pipeline
        guard case .puback(let ack)? = sent(pub).first else { Issue.record("no PUBACK"); return }
        #expect(ack.reason == .notAuthorized)
    }
}
