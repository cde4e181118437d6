import MQTTWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SwitchyardCore

/// What every bench client reports into: sends, acknowledgements, and for receivers the
/// sequence bookkeeping (loss, duplicates, out of order) and latencies. Shared by all
/// connections of a run (behind a lock; the bench's own cost, the same for every broker).
final class BenchStats: Sendable {
    struct Counts {
        var connected = 0
        var connectFailures = 0
        /// Connections the broker closed (or that broke) while the run went on, and how.
        var dropped: [String] = []
        var closing = false
        var sent = 0
        var acked = 0
        var received = 0
        var duplicates = 0
        var outOfOrder = 0
        var latencies: [UInt64] = []
        /// Per publisher: which sequence numbers arrived, and the highest so far.
        var seen: [Int: (bits: [Bool], highest: Int)] = [:]
        var lastReceivedAt: UInt64 = 0
    }

    let counts = NIOLockedValueBox(Counts())
    let perPublisher: Int

    init(perPublisher: Int) { self.perPublisher = perPublisher }

    /// One message as a subscriber read it.
    struct Arrival {
        var publisher: Int
        var sequence: Int
        var sentAt: UInt64
        var receivedAt: UInt64
    }

    /// The messages of one read burst of a subscriber (one lock for the burst, not one each).
    func received(_ arrivals: [Arrival]) {
        counts.withLockedValue { c in
            for a in arrivals {
                c.received += 1
                c.lastReceivedAt = a.receivedAt
                c.latencies.append(a.receivedAt &- a.sentAt)
                var entry = c.seen.removeValue(forKey: a.publisher) ?? ([], -1)  // out of the dictionary: changed in place, not copied
                defer { c.seen[a.publisher] = entry }
                guard a.sequence >= 0, a.sequence < perPublisher else { continue }
                if entry.bits.count <= a.sequence {
                    entry.bits.append(contentsOf: repeatElement(false, count: a.sequence + 1 - entry.bits.count))
                }
                if entry.bits[a.sequence] { c.duplicates += 1 } else { entry.bits[a.sequence] = true }
                if a.sequence < entry.highest { c.outOfOrder += 1 }
                entry.highest = max(entry.highest, a.sequence)
            }
        }
    }

    /// Distinct messages that arrived.
    var unique: Int { counts.withLockedValue { c in c.seen.values.reduce(0) { $0 + $1.bits.count { $0 } } } }
}

/// One MQTT 3.1.1 client connection of the load tool: connects, optionally subscribes, and
/// publishes `count` messages (publisher id, sequence number and send time in the first 20
/// bytes of the payload) keeping at most `window` of them unanswered — unacknowledged for
/// QoS 1, not yet received by this run's subscribers for QoS 0 (`transit`) — so the broker
/// runs at its own pace and nothing is lost to the load tool's haste.
///
/// The tool shares the machine with the broker it measures, so it works per read burst, as a
/// broker does: a publisher writes the messages its window allows in one write (its PUBLISH
/// packets encoded into one buffer), a subscriber's PUBACKs go out in one write at
/// the end of the burst, its arrivals are counted under one lock, and the publishers they
/// free are woken once each, after the burst.
final class BenchMQTTClient: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    struct Plan {
        var clientID: String
        var subscribe: String?
        var publishTopic: String?
        var publisherIndex = 0
        var count = 0
        var qos = QoS.atMostOnce
        var payloadBytes = 64
        var window = 10
        /// Messages per second at most (0: as fast as the window allows).
        var rate = 0.0
        var keepAlive: UInt16 = 300
    }

    let plan: Plan
    let stats: BenchStats
    /// Messages of each publisher received by subscribers (for the QoS 0 window).
    let transit: BenchTransit
    let ready: EventLoopPromise<Void>
    let done: EventLoopPromise<Void>
    var context: ChannelHandlerContext?
    var nextSequence = 0
    var unacked = 0
    var nextPacketID: UInt16 = 1
    var publishing = false
    var disconnectReason: String?
    /// This read burst's arrivals (subscribers) and PUBACKs to send.
    var arrivals: [BenchStats.Arrival] = []
    var acks: ByteBuffer?
    /// An acknowledgement came in this burst: publish more at its end.
    var acknowledged = false
    /// The payload being built: unshared again once its packet is encoded, so reused.
    var payload = ByteBuffer()
    /// With a rate: when publishing started, and whether a wake-up for the next one is set.
    var startedAt: UInt64 = 0
    var rateTimerSet = false

    init(plan: Plan, stats: BenchStats, transit: BenchTransit, ready: EventLoopPromise<Void>, done: EventLoopPromise<Void>) {
        self.plan = plan
        self.stats = stats
        self.transit = transit
        self.ready = ready
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        write(.connect(MQTTPacket.Connect(version: .v3_1_1, clientID: plan.clientID, keepAliveSeconds: plan.keepAlive)), context)
        context.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .connack(let ack):
            guard ack.reason == .success else {
                stats.counts.withLockedValue { $0.connectFailures += 1 }
                ready.fail(BenchError("CONNACK \(ack.reason) for \(plan.clientID)"))
                context.close(promise: nil)
                return
            }
            stats.counts.withLockedValue { $0.connected += 1 }
            if let filter = plan.subscribe {
                write(.subscribe(MQTTPacket.Subscribe(packetID: 1, subscriptions: [.init(filter: filter, qos: plan.qos)])), context)
                context.flush()
            } else {
                ready.succeed(())
            }
        case .suback(let ack):
            if ack.reasons.allSatisfy({ !$0.isFailure }) { ready.succeed(()) } else { ready.fail(BenchError("SUBACK \(ack.reasons)")) }
        case .publish(let p):
            if p.qos == .atLeastOnce, let id = p.packetID {
                if acks == nil { acks = context.channel.allocator.buffer(capacity: 256) }
                try? MQTTEncoder.encode(.puback(MQTTPacket.Ack(packetID: id)), version: .v3_1_1, into: &acks!)
            }
            let now = SystemMonotonicClock().nowNanos()
            var payload = p.payload
            if let publisher = payload.readInteger(as: UInt32.self), let sequence = payload.readInteger(as: UInt64.self),
                let sentAt = payload.readInteger(as: UInt64.self)
            {
                arrivals.append(.init(publisher: Int(publisher), sequence: Int(sequence), sentAt: sentAt, receivedAt: now))
            }
        case .disconnect(let d):
            disconnectReason = "\(d.reason)"
        case .puback:
            unacked -= 1
            acked += 1
            acknowledged = true
        default:
            break
        }
    }

    /// Acknowledgements counted into the shared stats once per burst.
    var acked = 0

    func channelReadComplete(context: ChannelHandlerContext) {
        if let a = acks {
            acks = nil
            context.write(wrapOutboundOut(a), promise: nil)
        }
        if !arrivals.isEmpty {
            stats.received(arrivals)
            let wakes = transit.arrived(arrivals)
            arrivals.removeAll(keepingCapacity: true)
            for wake in wakes { wake() }
        }
        if acknowledged {
            acknowledged = false
            let n = acked
            acked = 0
            stats.counts.withLockedValue { $0.acked += n }
            publishMore(context)
        }
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.context = nil
        stats.counts.withLockedValue { c in
            if !c.closing { c.dropped.append("\(plan.clientID)\(disconnectReason.map { " (DISCONNECT \($0))" } ?? "")") }
        }
        ready.fail(BenchError("connection of \(plan.clientID) closed"))
        done.succeed(())
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Starts publishing (on the channel's loop).
    func start() {
        guard let context, plan.publishTopic != nil else { return }
        publishing = true
        startedAt = SystemMonotonicClock().nowNanos()
        transit.register(publisher: plan.publisherIndex) { [weak self] in
            guard let self, let context = self.context else { return }
            if context.eventLoop.inEventLoop {
                self.publishMore(context)
            } else {
                context.eventLoop.execute { self.publishMore(context) }
            }
        }
        publishMore(context)
    }

    /// Writes as many messages as the window (and the rate) allows, in one write.
    func publishMore(_ context: ChannelHandlerContext) {
        guard publishing, let topic = plan.publishTopic else { return }
        // Received by this run's subscribers (when it has any), and for QoS 1 also acknowledged.
        var allowed = plan.count - nextSequence
        if transit.receivers > 0 {
            allowed = min(allowed, plan.window - (nextSequence - transit.count(publisher: plan.publisherIndex)))
        }
        if plan.qos != .atMostOnce { allowed = min(allowed, plan.window - unacked) }
        if plan.rate > 0 {
            let due = Int(Double(SystemMonotonicClock().nowNanos() - startedAt) * plan.rate / 1e9) + 1  // the first at once
            allowed = min(allowed, due - nextSequence)
        }
        if allowed > 0 {
            var buffer = context.channel.allocator.buffer(capacity: allowed * (plan.payloadBytes + topic.utf8.count + 9))
            for _ in 0..<allowed {
                payload.clear()
                payload.writeInteger(UInt32(plan.publisherIndex))
                payload.writeInteger(UInt64(nextSequence))
                payload.writeInteger(SystemMonotonicClock().nowNanos())
                if plan.payloadBytes > 20 { payload.writeRepeatingByte(0x2E, count: plan.payloadBytes - 20) }
                var packetID: UInt16?
                if plan.qos != .atMostOnce {
                    packetID = nextPacketID
                    nextPacketID = nextPacketID == UInt16.max ? 1 : nextPacketID + 1
                    unacked += 1
                }
                let publish = MQTTPacket.publish(MQTTPacket.Publish(topic: topic, payload: payload, qos: plan.qos, packetID: packetID))
                try? MQTTEncoder.encode(publish, version: .v3_1_1, into: &buffer)
                nextSequence += 1
            }
            stats.counts.withLockedValue { $0.sent += allowed }
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
        if plan.rate > 0, nextSequence < plan.count, !rateTimerSet {
            // The next message's time under the rate (the window, if it binds instead, wakes it too).
            rateTimerSet = true
            let next = startedAt + UInt64(Double(nextSequence) * 1e9 / plan.rate)
            let now = SystemMonotonicClock().nowNanos()
            context.eventLoop.scheduleTask(in: .nanoseconds(Int64(next > now ? next - now : 0))) {
                self.rateTimerSet = false
                self.publishMore(context)
            }
        }
        if nextSequence >= plan.count, unacked == 0 { publishing = false }
    }

    func write(_ packet: MQTTPacket, _ context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 32)
        try? MQTTEncoder.encode(packet, version: .v3_1_1, into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    /// Opens one client connection; completes once connected (and subscribed).
    static func connect(
        group: any EventLoopGroup = BenchMQTT.clientGroup,
        host: String = "127.0.0.1",
        port: Int,
        plan: Plan,
        stats: BenchStats,
        transit: BenchTransit
    ) async throws -> (BenchMQTTClient, any Channel) {
        let loop = group.any()
        let ready = loop.makePromise(of: Void.self)
        let done = loop.makePromise(of: Void.self)
        let handler = BenchMQTTClient(plan: plan, stats: stats, transit: transit, ready: ready, done: done)
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(MQTTPacketDecoder(decoder: MQTTDecoder(version: .v3_1_1)))
                    )
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: host, port: port)
            .get()
        try await ready.futureResult.get()
        return (handler, channel)
    }
}

/// Per publisher: how many of its messages the subscribers got, and whom to wake when that
/// moves (the QoS 0 window).
final class BenchTransit: Sendable {
    struct State {
        var arrived: [Int: Int] = [:]
        var wake: [Int: @Sendable () -> Void] = [:]
    }

    let state = NIOLockedValueBox(State())
    /// Receivers per message in this process (fan-in and pairs: 1; none: publishers are paced
    /// by acknowledgements only).
    let receivers: Int

    init(receivers: Int = 1) { self.receivers = receivers }

    func register(publisher: Int, wake: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.wake[publisher] = wake }
    }

    /// Counts a burst's arrivals; the publishers to wake, once each.
    func arrived(_ arrivals: [BenchStats.Arrival]) -> [@Sendable () -> Void] {
        state.withLockedValue { s in
            var wakes: [@Sendable () -> Void] = []
            var woken = Set<Int>()
            for a in arrivals {
                s.arrived[a.publisher, default: 0] += 1
                if let wake = s.wake[a.publisher], woken.insert(a.publisher).inserted { wakes.append(wake) }
            }
            return wakes
        }
    }

    func count(publisher: Int) -> Int {
        state.withLockedValue { $0.arrived[publisher, default: 0] } / max(receivers, 1)
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
