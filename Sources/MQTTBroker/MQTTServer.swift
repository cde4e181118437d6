import Logging
public import MQTTWire
import Metrics
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import ServiceLifecycle
public import SwitchyardCore
import Synchronization

/// The MQTT listener, run as a `Service`: devices connect, publish, and their messages go
/// to the `MessageSink` (the pipeline); a QoS 1/2 acknowledgement waits for acceptance
/// (the journal commit). On shutdown v5 clients get DISCONNECT 0x8B.
public final class MQTTServer: Service, Sendable {
    public let host: String
    public let port: Int
    let group: any EventLoopGroup
    let sink: any MessageSink
    let options: MQTTConnectionMachine.Options
    let maxConnections: Int
    let logger: Logger
    let onRefused: @Sendable (String) -> Void
    private let bound: EventLoopPromise<SocketAddress>
    /// Open connections by client id (the newest wins: an older one is taken over).
    let sessions = NIOLockedValueBox([String: MQTTConnectionHandler]())
    let connections = NIOLockedValueBox([ObjectIdentifier: any Channel]())
    let connectionCount = Atomic<Int>(0)
    let connectionsGauge = Gauge(label: "switchyard_mqtt_connections")
    /// Who gets what: one trie for every connection (subscriptions end with their connection).
    let trie = NIOLockedValueBox(SubscriptionTrie())
    /// The last retained message per topic (kept in memory).
    let retained = NIOLockedValueBox([String: MQTTPacket.Publish]())
    let subscriptionsGauge = Gauge(label: "switchyard_mqtt_subscriptions")
    /// Deliveries to subscribers by QoS (made once: this is counted per message).
    let messagesOut = (0...2).map { Counter(label: "switchyard_mqtt_messages_out_total", dimensions: [("qos", String($0))]) }
    /// Commands waiting for their device's reply, by command id.
    let replies = NIOLockedValueBox([String: EventLoopPromise<CommandOutcome>]())
    /// Where commands to a device go (`{product}`, `{device}`; the command id is appended).
    let commandTopic: String
    let retainedGauge = Gauge(label: "switchyard_mqtt_retained_messages")

    /// `onRefused` is told the reason for each PUBLISH refused before it reached the sink.
    public init(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        sink: any MessageSink,
        options: MQTTConnectionMachine.Options,
        maxConnections: Int,
        commandTopic: String = "devices/{product}/{device}/commands",
        logger: Logger,
        onRefused: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.commandTopic = commandTopic
        self.host = host
        self.port = port
        self.group = group
        self.sink = sink
        self.options = options
        self.maxConnections = maxConnections
        self.logger = logger
        self.onRefused = onRefused
        bound = group.any().makePromise(of: SocketAddress.self)
    }

    public var boundAddress: EventLoopFuture<SocketAddress> { bound.futureResult }
    /// Connections open now.
    public var openConnections: Int { connectionCount.load(ordering: .relaxed) }

    public func run() async throws {
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture {
                        let open = connectionCount.wrappingAdd(1, ordering: .relaxed).newValue
                        connectionsGauge.record(open)
                        channel.closeFuture.whenComplete { [self] _ in
                            connectionsGauge.record(connectionCount.wrappingSubtract(1, ordering: .relaxed).newValue)
                        }
                        if open > maxConnections {
                            Counter(label: "switchyard_mqtt_connects_total", dimensions: [("result", "max_connections")]).increment()
                            logger.warning("connection refused: channels.mqtt.max_connections reached", metadata: ["limit": "\(maxConnections)"])
                            channel.close(promise: nil)
                            return
                        }
                        var decoder = MQTTDecoder()
                        decoder.maximumPacketSize = options.maximumPacketSize
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(decoder: decoder)))
                        try channel.pipeline.syncOperations.addHandler(MQTTConnectionHandler(server: self, remoteAddress: channel.remoteAddress))
                        let id = ObjectIdentifier(channel)
                        connections.withLockedValue { $0[id] = channel }
                        channel.closeFuture.whenComplete { [connections] _ in
                            connections.withLockedValue { _ = $0.removeValue(forKey: id) }
                        }
                    }
                }
                .bind(host: host, port: port)
                .get()
        } catch {
            let failure = MQTTServerError(message: "cannot listen on \(host):\(port): \(error)")
            bound.fail(failure)
            throw failure
        }
        bound.succeed(channel.localAddress!)
        logger.info("listening", metadata: ["address": "\(channel.localAddress!)"])
        try? await gracefulShutdown()
        try? await channel.close()
        let open = sessions.withLockedValue { Array($0.values) }
        for handler in open { handler.shutDown() }
        try? await Task.sleep(nanoseconds: 100_000_000)  // let the DISCONNECTs go out
        for c in connections.withLockedValue({ Array($0.values) }) { try? await c.close() }
        logger.info("stopped", metadata: ["address": "\(host):\(port)"])
    }

    // MARK: - Subscriptions and fan-out

    /// Sends an accepted message to every matching subscriber (and keeps it when retained).
    /// Returns how many connections it went to.
    @discardableResult
    func fanOut(_ publish: MQTTPacket.Publish, from publisher: String?) -> Int {
        if publish.retain {
            let count = retained.withLockedValue { store in
                if publish.payload.readableBytes == 0 {
                    store.removeValue(forKey: publish.topic)  // an empty retained message clears the topic
                } else {
                    var kept = publish
                    kept.dup = false
                    kept.packetID = nil
                    store[publish.topic] = kept
                }
                return store.count
            }
            retainedGauge.record(count)
        }
        let matches = trie.withLockedValue { $0.matches(publish.topic) }
        guard !matches.isEmpty else { return 0 }
        var reached = 0
        let handlers = sessions.withLockedValue { sessions in matches.keys.compactMap { id in sessions[id].map { (id, $0) } } }
        for (clientID, handler) in handlers {
            let match = matches[clientID]!
            if match.noLocal && clientID == publisher { continue }
            var out = publish
            out.qos = min(publish.qos, match.qos)
            out.retain = match.retainAsPublished && publish.retain
            out.dup = false
            out.properties.topicAlias = nil
            out.properties.subscriptionIdentifiers = match.identifiers
            messagesOut[Int(out.qos.rawValue)].increment()
            handler.deliver(out)
            reached += 1
        }
        return reached
    }

    func subscribe(_ clientID: String, _ added: [(MQTTPacket.Subscription, isNew: Bool)], identifier: Int?) -> [MQTTPacket.Publish] {
        let count = trie.withLockedValue { trie in
            for (sub, _) in added {
                trie.subscribe(
                    clientID,
                    filter: sub.filter,
                    entry: SubscriptionTrie.Entry(
                        qos: sub.qos,
                        noLocal: sub.noLocal,
                        retainAsPublished: sub.retainAsPublished,
                        identifier: identifier
                    )
                )
            }
            return trie.count
        }
        subscriptionsGauge.record(count)
        // Retained messages for the new subscriptions (retain handling 0: always, 1: if new, 2: never).
        let wanted = added.filter { sub, isNew in
            sub.retainHandling == .sendOnSubscribe || (sub.retainHandling == .sendIfNew && isNew)
        }
        guard !wanted.isEmpty else { return [] }
        return retained.withLockedValue { store in
            var out: [MQTTPacket.Publish] = []
            for (topic, message) in store {
                for (sub, _) in wanted where MQTTTopic.matches(filter: sub.filter, topic: topic) {
                    var m = message
                    m.qos = min(message.qos, sub.qos)
                    m.retain = true
                    if let identifier { m.properties.subscriptionIdentifiers = [identifier] }
                    out.append(m)
                    break
                }
            }
            return out
        }
    }

    func unsubscribe(_ clientID: String, _ filters: [String]) {
        let count = trie.withLockedValue { trie in
            for f in filters { trie.unsubscribe(clientID, filter: f) }
            return trie.count
        }
        subscriptionsGauge.record(count)
    }

    /// Makes `handler` the connection of `clientID`; returns the one it takes over.
    func register(_ handler: MQTTConnectionHandler, clientID: String) -> MQTTConnectionHandler? {
        sessions.withLockedValue { sessions in
            let old = sessions[clientID]
            sessions[clientID] = handler
            return old === handler ? nil : old
        }
    }

    /// The connection ended: its session (and subscriptions) with it, unless a newer
    /// connection took the client id over (its subscriptions are its own).
    func unregister(_ handler: MQTTConnectionHandler, clientID: String, filters: [String]) {
        let wasCurrent = sessions.withLockedValue { sessions in
            guard sessions[clientID] === handler else { return false }
            sessions.removeValue(forKey: clientID)
            return true
        }
        if wasCurrent && !filters.isEmpty { unsubscribe(clientID, filters) }
    }
}

public struct MQTTServerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// One connection: feeds the machine and performs its actions. `@unchecked Sendable`: its
/// state is touched only on the channel's event loop (other threads hop there first).
final class MQTTConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    let server: MQTTServer
    var machine: MQTTConnectionMachine
    var context: ChannelHandlerContext?
    var keepAliveTimer: RepeatedTask?
    var closed = false
    /// Why the server closed the connection (for the disconnect event).
    var closeReason: String?

    init(server: MQTTServer, remoteAddress: SocketAddress?) {
        self.server = server
        machine = MQTTConnectionMachine(options: server.options, remoteAddress: remoteAddress)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The keep-alive is checked every second; a CONNECT must come within 10 s.
        let connectDeadline = SystemMonotonicClock().nowNanos() + 10_000_000_000
        keepAliveTimer = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
            guard let self, let context = self.context else { return }
            let now = SystemMonotonicClock().nowNanos()
            if self.machine.clientID == nil, now > connectDeadline {
                self.perform(self.machine.decodeFailed(MQTTWireError(.maximumConnectTime, "no CONNECT within 10 s")), context: context)
            } else {
                self.perform(self.machine.tick(now: now), context: context)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let packet = unwrapInboundIn(data)
        perform(machine.received(packet, now: SystemMonotonicClock().nowNanos()), context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let wire = (error as? MQTTWireError) ?? MQTTWireError(.unspecifiedError, "\(error)")
        Counter(label: "switchyard_mqtt_protocol_errors_total", dimensions: [("reason", "\(wire.code)")]).increment()
        server.logger.debug("protocol error", metadata: ["error": "\(wire)", "client": "\(machine.clientID ?? "-")"])
        perform(machine.decodeFailed(wire), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        keepAliveTimer?.cancel()
        if let event = machine.connectionEvent("disconnected", reason: closeReason ?? "connection lost") {
            _ = server.sink.submit(event, on: context.eventLoop)
        }
        perform(machine.connectionClosed(), context: context)
        if let id = machine.clientID { server.unregister(self, clientID: id, filters: Array(machine.subscriptions.keys)) }
        self.context = nil
        context.fireChannelInactive()
    }

    /// From another connection's loop: this client id connected again.
    func takeOver() {
        guard let context else { return }
        context.eventLoop.execute {
            guard let context = self.context else { return }
            self.perform(self.machine.takenOver(), context: context)
        }
    }

    /// From any loop: a message for this client.
    func deliver(_ publish: MQTTPacket.Publish) {
        guard let context else { return }
        let loop = context.eventLoop
        let run = {
            guard let context = self.context else { return }
            self.perform(self.machine.deliver(publish), context: context)
            context.flush()
        }
        if loop.inEventLoop { run() } else { loop.execute(run) }
    }

    func shutDown() {
        guard let context else { return }
        context.eventLoop.execute {
            guard let context = self.context else { return }
            self.perform(self.machine.serverShuttingDown(), context: context)
        }
    }

    func perform(_ actions: [MQTTConnectionMachine.Action], context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .send(let packet):
                guard let version = machine.version ?? (packet.kind == .connack ? .v3_1_1 : nil) else { continue }
                var buffer = context.channel.allocator.buffer(capacity: 16)
                do {
                    try MQTTEncoder.encode(packet, version: version, into: &buffer)
                    context.write(wrapOutboundOut(buffer), promise: nil)
                } catch {
                    server.logger.error("cannot encode a packet", metadata: ["error": "\(error)"])
                }
            case .register(let clientID):
                Counter(label: "switchyard_mqtt_connects_total", dimensions: [("result", "accepted")]).increment()
                server.register(self, clientID: clientID)?.takeOver()
                if let event = machine.connectionEvent("connected") { _ = server.sink.submit(event, on: context.eventLoop) }
            case .submit(let envelope, let token, let publish):
                let loop = context.eventLoop
                let publisher = machine.clientID
                server.completeCommand(publish)
                server.sink.submit(envelope, on: loop).hop(to: loop).whenComplete { result in
                    let outcome: SubmitResult
                    switch result {
                    case .success(let r): outcome = r
                    case .failure(let error):
                        outcome = .rejected(Rejection(filter: "mqtt", reason: "internal", status: 500, message: "\(error)"))
                    }
                    // Subscribers get what the pipeline took (filters apply to them too), once.
                    if case .accepted = outcome { self.server.fanOut(publish, from: publisher) }
                    guard let context = self.context else { return }
                    self.perform(self.machine.submitted(token: token, result: outcome), context: context)
                    context.flush()
                }
            case .subscribe(let added, let identifier):
                guard let clientID = machine.clientID else { continue }
                for message in server.subscribe(clientID, added, identifier: identifier) {
                    perform(machine.deliver(message), context: context)
                }
            case .unsubscribe(let filters):
                if let clientID = machine.clientID { server.unsubscribe(clientID, filters) }
            case .dropOutbound(let reason):
                Counter(label: "switchyard_mqtt_messages_dropped_total", dimensions: [("reason", reason)]).increment()
            case .publishWill(let will, let clientID):
                // Will Delay Interval belongs to the will, not to the message it becomes.
                var properties = will.properties
                properties.willDelayInterval = nil
                let p = MQTTPacket.Publish(topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, properties: properties)
                var envelope = machine.envelope(for: p)
                envelope.headers.append(HeaderField("x-mqtt-will", clientID))
                // The will is a message of the device like any other: filtered, journaled, routed,
                // and sent to subscribers once accepted.
                let server = self.server
                server.sink.submit(envelope, on: context.eventLoop).whenSuccess { result in
                    if case .accepted = result { server.fanOut(p, from: clientID) }
                }
            case .countRefused(let reason):
                server.onRefused(reason)
            case .close(let reason):
                guard !closed else { continue }
                closed = true
                closeReason = reason
                server.logger.debug("closing", metadata: ["client": "\(machine.clientID ?? "-")", "reason": "\(reason)"])
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: nil)
                context.close(promise: nil)
            }
        }
    }
}
