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

    func received(publisher: Int, sequence: Int, sentAt: UInt64, now: UInt64) {
        counts.withLockedValue { c in
            c.received += 1
            c.lastReceivedAt = now
            c.latencies.append(now &- sentAt)
            var entry = c.seen.removeValue(forKey: publisher) ?? ([], -1)  // out of the dictionary: changed in place, not copied
            defer { c.seen[publisher] = entry }
            guard sequence >= 0, sequence < perPublisher else { return }
            if entry.bits.count <= sequence { entry.bits.append(contentsOf: repeatElement(false, count: sequence + 1 - entry.bits.count)) }
            if entry.bits[sequence] { c.duplicates += 1 } else { entry.bits[sequence] = true }
            if sequence < entry.highest { c.outOfOrder += 1 }
            entry.highest = max(entry.highest, sequence)
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
            if p.qos == .atLeastOnce, let id = p.packetID { write(.puback(MQTTPacket.Ack(packetID: id)), context) }
            let now = SystemMonotonicClock().nowNanos()
            var payload = p.payload
            if let publisher = payload.readInteger(as: UInt32.self), let sequence = payload.readInteger(as: UInt64.self),
                let sentAt = payload.readInteger(as: UInt64.self)
            {
                stats.received(publisher: Int(publisher), sequence: Int(sequence), sentAt: sentAt, now: now)
                transit.arrived(publisher: Int(publisher))
            }
        case .disconnect(let d):
            disconnectReason = "\(d.reason)"
        case .puback:
            unacked -= 1
            stats.counts.withLockedValue { $0.acked += 1 }
            publishMore(context)
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
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
        transit.register(publisher: plan.publisherIndex) { [weak self] in
            guard let self, let context = self.context else { return }
            context.eventLoop.execute { self.publishMore(context) }
        }
        publishMore(context)
    }

    func publishMore(_ context: ChannelHandlerContext) {
        guard publishing, let topic = plan.publishTopic else { return }
        var written = 0
        while nextSequence < plan.count {
            // Received by this run's subscribers (when it has any), and for QoS 1 also acknowledged.
            if transit.receivers > 0 {
                guard nextSequence - transit.count(publisher: plan.publisherIndex) < plan.window else { break }
            }
            if plan.qos != .atMostOnce {
                guard unacked < plan.window else { break }
            }
            var payload = context.channel.allocator.buffer(capacity: plan.payloadBytes)
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
            write(.publish(MQTTPacket.Publish(topic: topic, payload: payload, qos: plan.qos, packetID: packetID)), context)
            nextSequence += 1
            written += 1
        }
        if written > 0 {
            stats.counts.withLockedValue { $0.sent += written }
            context.flush()
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

    func arrived(publisher: Int) {
        let wake = state.withLockedValue { s -> (@Sendable () -> Void)? in
            s.arrived[publisher, default: 0] += 1
            return s.wake[publisher]
        }
        wake?()
    }

    func count(publisher: Int) -> Int {
        state.withLockedValue { $0.arrived[publisher, default: 0] } / max(receivers, 1)
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
