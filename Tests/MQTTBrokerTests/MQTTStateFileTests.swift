import MQTTWire
import NIOCore
import Testing

@testable import MQTTBroker

@Suite struct MQTTStateFileTests {
    func sample() -> MQTTStateFile.Contents {
        var props = MQTTProperties()
        props.userProperties = [.init("k", "v")]
        props.contentType = "application/json"
        var s = MQTTSession(clientID: "c1", identity: DeviceIdentity(product: "p", device: "d"), expirySeconds: 300)
        s.subscriptions = [
            "a/#": .init(filter: "a/#", qos: .exactlyOnce, noLocal: true, retainAsPublished: true, retainHandling: .sendIfNew),
            "$share/g/b": .init(filter: "$share/g/b", qos: .atLeastOnce),
        ]
        s.identifiers = ["a/#": 7]
        var inflight = MQTTOutbound(
            publish: MQTTPacket.Publish(topic: "a/1", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, packetID: 5, properties: props)
        )
        inflight.released = true
        s.inflight = [inflight]
        s.queued = [
            MQTTOutbound(publish: MQTTPacket.Publish(topic: "b", payload: ByteBuffer(string: "y")), expiresAt: 123, shareFilter: "$share/g/b")
        ]
        s.awaitingRelease = [3, 9]
        s.nextPacketID = 6
        s.endedAt = 42
        let r = MQTTRetained(
            publish: MQTTPacket.Publish(topic: "r", payload: ByteBuffer(string: "kept"), qos: .atLeastOnce, retain: true),
            expiresAt: nil
        )
        return MQTTStateFile.Contents(sessions: [s, MQTTSession(clientID: "anon", identity: nil, expirySeconds: UInt32.max)], retained: [r])
    }

    @Test func contentsSurviveARoundTrip() throws {
        let contents = sample()
        let decoded = try MQTTStateFile.decode(try MQTTStateFile.encode(contents))
        #expect(decoded.sessions.count == 2)
        let s = decoded.sessions[0]
        #expect(s.subscriptions == contents.sessions[0].subscriptions)
        #expect(s.identifiers == ["a/#": 7])
        #expect(s.inflight.first?.publish == contents.sessions[0].inflight.first?.publish)
        #expect(s.inflight.first?.released == true)
        #expect(s.queued.first?.shareFilter == "$share/g/b" && s.queued.first?.expiresAt == 123)
        #expect(s.awaitingRelease == [3, 9] && s.nextPacketID == 6 && s.endedAt == 42)
        #expect(s.identity == DeviceIdentity(product: "p", device: "d"))
        #expect(decoded.sessions[1].identity == nil && decoded.sessions[1].expirySeconds == UInt32.max)
        #expect(decoded.retained.first?.publish.payload == ByteBuffer(string: "kept"))
    }

    @Test func damagedFilesAreRefusedWithAReasonNotACrash() throws {
        var good = try MQTTStateFile.encode(sample())
        #expect(throws: MQTTWireError.self) { try MQTTStateFile.decode(ByteBuffer(string: "garbage")) }
        for cut in stride(from: 0, to: good.readableBytes, by: 7) {
            let piece = good.getSlice(at: 0, length: cut)!
            #expect(throws: MQTTWireError.self) { try MQTTStateFile.decode(piece) }
        }
        good.writeInteger(UInt8(0))
        #expect(throws: MQTTWireError.self) { try MQTTStateFile.decode(good) }
    }

    @Test func offlineQueuesDropTheOldestQoS0First() {
        var s = MQTTSession(clientID: "c", identity: nil, expirySeconds: 10)
        func m(_ t: String, _ q: QoS) -> MQTTOutbound { MQTTOutbound(publish: MQTTPacket.Publish(topic: t, payload: ByteBuffer(), qos: q)) }
        let first = s.enqueue(m("1", .atLeastOnce), limit: 2)
        #expect(!first)
        let second = s.enqueue(m("2", .atMostOnce), limit: 2)
        #expect(!second)
        let third = s.enqueue(m("3", .atLeastOnce), limit: 2)
        #expect(third)  // "2" goes
        #expect(s.queued.map(\.publish.topic) == ["1", "3"])
        let fourth = s.enqueue(m("4", .atLeastOnce), limit: 2)
        #expect(fourth)  // nothing QoS 0 left: the newcomer goes
        #expect(s.queued.map(\.publish.topic) == ["1", "3"])
        #expect(!s.hasExpired(now: 10_000_000_000 - 1) && s.hasExpired(now: 10_000_000_000))
    }

    @Test func theOutboundQueueKeepsItsOrderAcrossCompaction() {
        var q = OutboundQueue()
        func m(_ i: Int, _ qos: QoS = .atLeastOnce) -> MQTTOutbound {
            MQTTOutbound(publish: MQTTPacket.Publish(topic: "t/\(i)", payload: ByteBuffer(), qos: qos))
        }
        for i in 0..<200 { q.append(m(i, i % 10 == 0 ? .atMostOnce : .atLeastOnce)) }
        var taken: [String] = []
        for _ in 0..<150 { taken.append(q.removeFirst().publish.topic) }
        for i in 200..<210 { q.append(m(i)) }
        #expect(taken == (0..<150).map { "t/\($0)" })
        #expect(q.map(\.publish.topic) == (150..<210).map { "t/\($0)" })
        #expect(q.atMostOnce == 5)  // 150, 160, …, 190
        let dropped = q.enqueue(m(999), limit: q.count)
        #expect(dropped && q.first?.publish.topic == "t/151" && q.atMostOnce == 4)
    }
}
