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

    /// `onRefused` is told the reason for each PUBLISH refused before it reached the sink.
    public init(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        sink: any MessageSink,
        options: MQTTConnectionMachine.Options,
        maxConnections: Int,
        logger: Logger,
        onRefused: @escaping @Sendable (String) -> Void = { _ in }
    ) {
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

    /// Makes `handler` the connection of `clientID`; returns the one it takes over.
    func register(_ handler: MQTTConnectionHandler, clientID: String) -> MQTTConnectionHandler? {
        sessions.withLockedValue { sessions in
            let old = sessions[clientID]
            sessions[clientID] = handler
            return old === handler ? nil : old
        }
    }

    func unregister(_ handler: MQTTConnectionHandler, clientID: String) {
        sessions.withLockedValue { sessions in
            if sessions[clientID] === handler { sessions.removeValue(forKey: clientID) }
        }
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
        perform(machine.connectionClosed(), context: context)
        if let id = machine.clientID { server.unregister(self, clientID: id) }
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
            case .submit(let envelope, let token):
                let loop = context.eventLoop
                server.sink.submit(envelope, on: loop).hop(to: loop).whenComplete { result in
                    guard let context = self.context else { return }
                    let outcome: SubmitResult
                    switch result {
                    case .success(let r): outcome = r
                    case .failure(let error):
                        outcome = .rejected(Rejection(filter: "mqtt", reason: "internal", status: 500, message: "\(error)"))
                    }
                    self.perform(self.machine.submitted(token: token, result: outcome), context: context)
                    context.flush()
                }
            case .publishWill(let will, let clientID):
                let p = MQTTPacket.Publish(topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, properties: will.properties)
                var envelope = machine.envelope(for: p)
                envelope.headers.append(HeaderField("x-mqtt-will", clientID))
                // The will is a message of the device like any other: filtered, journaled, routed.
                _ = server.sink.submit(envelope, on: context.eventLoop)
            case .countRefused(let reason):
                server.onRefused(reason)
            case .close(let reason):
                guard !closed else { continue }
                closed = true
                server.logger.debug("closing", metadata: ["client": "\(machine.clientID ?? "-")", "reason": "\(reason)"])
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: nil)
                context.close(promise: nil)
            }
        }
    }
}
