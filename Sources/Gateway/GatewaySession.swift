import HTTPIngress
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchyardCore

/// One request streamed to one upstream instance and its answer streamed back, on the client
/// connection's event loop. The upstream connection is opened for the request and closed after it.
final class GatewaySession: HTTPStreamSession {
    /// A session whose answer was already written (no upstream).
    static var finished: GatewaySession { GatewaySession() }

    let writer: HTTPResponseWriter?
    let head: HTTPRequestHead
    let instance: ServiceInstance?
    let timeout: TimeAmount
    let pool: UpstreamPool?
    let metrics: GatewayMetrics?
    private let started = SystemMonotonicClock().nowNanos()
    private var status = 0
    private var upstream: (any Channel)?
    /// The upstream may keep the connection after this exchange.
    private var upstreamKeepAlive = true
    private var pending: [ByteBuffer] = []
    private var pendingBytes = 0
    private var requestEnded = false
    private var over = false
    private var timer: Scheduled<Void>?
    /// Bytes collected while the upstream connection opens; past this, reading the client pauses.
    static let maxPendingBytes = 1 << 20

    private init() {
        writer = nil
        head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        instance = nil
        timeout = .seconds(1)
        pool = nil
        metrics = nil
        over = true
    }

    init(
        writer: HTTPResponseWriter,
        head: HTTPRequestHead,
        instance: ServiceInstance,
        timeout: Double,
        pool: UpstreamPool?,
        metrics: GatewayMetrics?
    ) {
        self.metrics = metrics
        self.writer = writer
        self.head = head
        self.instance = instance
        self.timeout = .nanoseconds(Int64(timeout * 1e9))
        self.pool = pool
    }

    func start() {
        guard let writer, let instance else { return }
        let loop = writer.eventLoop
        timer = loop.scheduleTask(in: timeout) { [self] in
            fail(.gatewayTimeout, "upstream_timeout", "\(instance.address) did not answer within \(timeout.nanoseconds / 1_000_000) ms")
        }
        if let idle = pool?.take(instance.address, on: loop) {
            // A kept connection: its handler now answers to this session.
            if let handler = try? idle.pipeline.syncOperations.handler(type: UpstreamHandler.self) {
                handler.session = self
                handler.complete = false
                connected(idle)
                return
            }
            idle.close(promise: nil)
        }
        let bound = NIOLoopBound(self, eventLoop: loop)
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(2))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(UpstreamHandler(session: bound.value))
                }
            }
            .connect(host: instance.host, port: instance.port)
            .whenComplete { result in
                let session = bound.value
                switch result {
                case .success(let channel):
                    session.pool?.watch(channel, for: instance.address)
                    session.connected(channel)
                case .failure(let error):
                    session.fail(.badGateway, "upstream_unreachable", "cannot connect to \(instance.address): \(error)")
                }
            }
    }

    private func connected(_ channel: any Channel) {
        guard !over else {
            channel.close(promise: nil)
            return
        }
        upstream = channel
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        for chunk in pending { channel.write(HTTPClientRequestPart.body(.byteBuffer(chunk)), promise: nil) }
        pending = []
        pendingBytes = 0
        if requestEnded { channel.write(HTTPClientRequestPart.end(nil), promise: nil) }
        channel.flush()
        if !requestEnded { writer?.setReading(channel.isWritable) }
    }

    // MARK: - From the client

    func body(_ chunk: ByteBuffer) {
        guard !over else { return }
        if let upstream {
            upstream.writeAndFlush(HTTPClientRequestPart.body(.byteBuffer(chunk)), promise: nil)
            if !upstream.isWritable { writer?.setReading(false) }
        } else {
            pending.append(chunk)
            pendingBytes += chunk.readableBytes
            if pendingBytes > Self.maxPendingBytes { writer?.setReading(false) }
        }
    }

    func end() {
        requestEnded = true
        guard !over else { return }
        upstream?.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    func cancel() {
        if !over { metrics?.record(status: 0, nanoseconds: 0) }
        over = true
        timer?.cancel()
        upstream?.close(promise: nil)
    }

    func clientWritabilityChanged(_ writable: Bool) {
        upstream?.setOption(ChannelOptions.autoRead, value: writable).whenComplete { _ in }
        if writable { upstream?.read() }
    }

    // MARK: - From the upstream

    func upstreamWritabilityChanged(_ writable: Bool) {
        if !requestEnded && !over { writer?.setReading(writable) }
    }

    func responseHead(_ response: HTTPResponseHead) {
        guard !over, let writer else { return }
        timer?.cancel()
        upstreamKeepAlive = response.isKeepAlive
        status = Int(response.status.code)
        var headers = HTTPHeaders()
        for (name, value) in response.headers where !GatewayResponder.hopByHop.contains(name.lowercased()) {
            headers.add(name: name, value: value)
        }
        writer.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))
    }

    func responseBody(_ chunk: ByteBuffer) {
        guard !over else { return }
        writer?.body(chunk)
    }

    func responseEnd() {
        guard !over else { return }
        over = true
        metrics?.record(status: status, nanoseconds: SystemMonotonicClock().nowNanos() - started)
        // A request still being sent when the answer is complete cannot share the connection.
        writer?.end(closeAfter: !requestEnded)
        if let upstream, let pool, let instance, requestEnded, upstreamKeepAlive, upstream.isActive {
            upstream.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            pool.put(upstream, for: instance.address)
        } else {
            upstream?.close(promise: nil)
        }
    }

    func upstreamFailed(_ detail: String) {
        fail(.badGateway, "upstream_failed", "\(instance?.address ?? "upstream"): \(detail)")
    }

    func fail(_ status: HTTPResponseStatus, _ code: String, _ message: String) {
        guard !over else { return }
        over = true
        metrics?.record(status: writer?.headSent == true ? self.status : Int(status.code), nanoseconds: SystemMonotonicClock().nowNanos() - started)
        timer?.cancel()
        upstream?.close(promise: nil)
        writer?.respond(.error(status, code, message), closeAfter: !requestEnded)
    }
}

/// Relays the upstream's answer to its session.
final class UpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    var session: GatewaySession
    var complete = false

    init(session: GatewaySession) { self.session = session }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            // 1xx answers other than 101 precede the real one.
            if head.status.code >= 100 && head.status.code < 200 { return }
            session.responseHead(head)
        case .body(let chunk): session.responseBody(chunk)
        case .end:
            complete = true
            session.responseEnd()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        session.upstreamWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !complete { session.upstreamFailed("the connection closed before the answer was complete") }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !complete { session.upstreamFailed("\(error)") }
        context.close(promise: nil)
    }
}

/// Idle keep-alive connections to upstream instances, per event loop and address. A connection
/// is taken by one session at a time, on its own loop; one the upstream closes leaves the pool.
final class UpstreamPool: @unchecked Sendable {
    /// Idle connections kept per instance and event loop.
    static let maxIdle = 64
    private let lock = NIOLock()
    private var idle: [String: [any Channel]] = [:]

    private static func key(_ address: String, _ loop: any EventLoop) -> String { "\(ObjectIdentifier(loop).hashValue)|\(address)" }

    func take(_ address: String, on loop: any EventLoop) -> (any Channel)? {
        let key = Self.key(address, loop)
        return lock.withLock { () -> (any Channel)? in
            while var list = idle[key], let channel = list.popLast() {
                idle[key] = list
                if channel.isActive { return channel }
            }
            return nil
        }
    }

    func put(_ channel: any Channel, for address: String) {
        let key = Self.key(address, channel.eventLoop)
        let kept = lock.withLock { () -> Bool in
            var list = idle[key, default: []]
            guard list.count < Self.maxIdle else { return false }
            list.append(channel)
            idle[key] = list
            return true
        }
        if !kept { channel.close(promise: nil) }
    }

    /// Once per connection: when it closes, it leaves the pool.
    func watch(_ channel: any Channel, for address: String) {
        let key = Self.key(address, channel.eventLoop)
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            self.lock.withLock { self.idle[key]?.removeAll { $0 === channel } }
        }
    }
}
