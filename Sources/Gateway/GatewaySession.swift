import EpollTransport
import HTTPIngress
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Router
import SwitchyardCore
import Synchronization

/// One request streamed to an upstream instance and its answer streamed back, on the client
/// connection's event loop. An instance that cannot be reached is replaced by another (nothing
/// was sent yet); a 502/503/504 or a timeout is retried elsewhere when the request had no body
/// and may be repeated.
final class GatewaySession: Exchange, HTTPStreamSession {
    let writer: HTTPResponseWriter
    private(set) var request: UpstreamRequest = .released
    private(set) var timeout: TimeAmount = .seconds(30)
    private(set) var pool: UpstreamPool?
    private(set) var retryAnswers = false
    private(set) var maxBodyBytes: Int?
    /// The router's balancer: outstanding counts, circuits (outlier ejection), drains, retry
    /// budget. Nil until the request is forwarded (none when it was answered here).
    private(set) var balancer: Balancer?
    private(set) var circuit = SwitchyardConfiguration.CircuitRule()
    private var candidates: [ServiceInstance] = []
    /// The current attempt is counted in the balancer and the retry budget.
    private var attemptOpen = false
    private var attemptIsRetry = false
    /// The answer's verdict once its head arrived (5xx, or slower than the slow-call limit: failed).
    private var headVerdict: Bool?
    private var attemptStarted: UInt64 = 0
    /// The current attempt went over a kept-alive connection from the pool.
    private var reusedConnection = false
    /// Until when the request may wait for a cold fleet's ramp to admit it.
    private var admissionDeadline: UInt64?
    private(set) var slowCallNanos: UInt64 = 0
    private var retriesLeft = 0
    private var status = 0
    private var upstream: (any Channel)?
    /// The current connection's handler: it keeps the attempt's deadline.
    private var upstreamHandler: UpstreamHandler?
    /// The upstream may keep the connection after this exchange.
    private var upstreamKeepAlive = true
    /// Reading the upstream's answer paused while the client could take no more.
    private var upstreamReadingPaused = false
    private var pending: [ByteBuffer] = []
    private var pendingBytes = 0
    private var bodyBytes = 0
    private var requestEnded = false
    private var over = false
    /// The deadline of an attempt still connecting (a kept connection's handler keeps it after).
    private var timer: NIOScheduledCallback?
    /// Bytes collected while the upstream connection opens; past this, reading the client pauses.
    static let maxPendingBytes = 1 << 20

    /// An admitted request's session: it answers here (`reject`) or is forwarded (`forward`).
    init(writer: HTTPResponseWriter, head: HTTPRequestHead, client: SocketAddress?, admission: borrowing Admission, snapshot: GatewaySnapshot) {
        self.writer = writer
        super.init(head: head, client: client, admission: admission, snapshot: snapshot, started: writer.requestStartNanos)
    }

    /// What goes where: the request, to a weighted choice among `candidates` (`start` sends it).
    func forward(
        _ request: UpstreamRequest,
        to candidates: [ServiceInstance],
        timeout: Double,
        pool: UpstreamPool?,
        retries: Int,
        retryAnswers: Bool,
        maxBodyBytes: Int?,
        balancer: Balancer,
        circuit: SwitchyardConfiguration.CircuitRule,
        slowCallSeconds: Double
    ) {
        self.request = request
        self.candidates = candidates
        self.timeout = .nanoseconds(Int64(timeout * 1e9))
        self.pool = pool
        retriesLeft = retries
        self.retryAnswers = retryAnswers
        self.maxBodyBytes = maxBodyBytes
        self.balancer = balancer
        self.circuit = circuit
        slowCallNanos = UInt64(max(0, slowCallSeconds) * 1e9)
        #if DEBUG
            pool?.sessionsAlive.add(1, ordering: .relaxed)
        #endif
    }

    #if DEBUG
        deinit { pool?.sessionsAlive.subtract(1, ordering: .relaxed) }
    #endif

    /// Answers without an upstream (a policy said no, or there is nowhere to go).
    func reject(
        _ status: HTTPResponseStatus,
        _ code: String,
        _ message: String,
        headers: HTTPHeaders = [:],
        closeAfter: Bool = false
    ) -> GatewaySession {
        over = true
        var all = responseHeaders
        all.add(contentsOf: headers)
        if code.isEmpty {
            writer.respond(OutgoingResponse(status: status, headers: all), closeAfter: closeAfter)
        } else {
            writer.respond(.error(status, code, message, headers: all), closeAfter: closeAfter)
        }
        finish(status: Int(status.code), error: code.isEmpty ? nil : code)
        return self
    }

    /// The balancer's choice among the candidates not tried yet whose circuits admit one.
    private func choose() -> ServiceInstance? {
        guard let balancer else { return nil }  // (set before any attempt)
        var pool = balancer.breakers.admitted(candidates)
        while let instance = balancer.pick(from: pool) {
            if balancer.breakers.claim(instance) { return instance }
            pool.removeAll { $0.key == instance.key }  // its probe went out meanwhile
        }
        return nil
    }

    /// Ends the current attempt's accounting; `failed` (else the answer's status, if one came)
    /// feeds its circuit.
    private func endAttempt(failed: Bool?) {
        guard attemptOpen, let instance else { return }
        attemptOpen = false
        let failed = failed ?? headVerdict
        headVerdict = nil
        guard let balancer else { return }
        balancer.finished(instance, retry: attemptIsRetry)
        if let failed {
            balancer.breakers.record(instance, failed: failed, rule: circuit)
        } else {
            balancer.breakers.abandon(instance)
        }
    }

    /// Sends the request to a weighted choice among the candidates not tried yet. `now`: the
    /// monotonic clock's nanoseconds the caller has (the exchange's start: at most the loop batch's
    /// handling time ago).
    func start(at now: UInt64? = nil) {
        guard !over else { return }
        if let balancer, let service = candidates.first?.service, !balancer.admits(service) {
            waitForAdmission(service, on: writer.eventLoop)
            return
        }
        guard let instance = choose() else {
            let service = candidates.first?.service ?? "upstream"
            abandonRetry(service)
            fail(.serviceUnavailable, "circuit_open", "every instance of service \(service) has an open circuit (too many failures in a row)")
            return
        }
        self.instance = instance
        attempts += 1
        // (One clock read for the attempt, or none: the deadline's clock is the same monotonic one.)
        let now = now ?? SystemMonotonicClock().nowNanos()
        attemptStarted = now
        if let balancer {
            attemptOpen = true
            balancer.started(instance, now: now)
        }
        let loop = writer.eventLoop
        let deadline = NIODeadline.uptimeNanoseconds(now) + timeout
        reusedConnection = false
        let idleList = pool.map { $0.list(for: instance.hashedAddress, on: loop, kept: &writer.connectionKept) }
        if let idle = idleList?.take(), let channel = idle.channel {
            // A kept connection: its handler now answers to this session and keeps its deadline
            // (its one timer, not one per attempt).
            idle.session = self
            idle.complete = false
            idle.arm(deadline)
            reusedConnection = true
            connected(channel, handler: idle)
            return
        }
        // (A callback with the session as its handler: no closure, promise or future per attempt.)
        timer = try? loop.scheduleCallback(at: deadline, handler: AttemptDeadline(session: self))
        let handler = NIOLoopBound(UpstreamHandler(session: self), eventLoop: loop)
        let bound = NIOLoopBound(self, eventLoop: loop)
        let initialize: @Sendable (any Channel) -> EventLoopFuture<Void> = { channel in
            channel.eventLoop.makeCompletedFuture {
                // Bytes after a 101 stay with the codec until the tunnel takes them.
                let codec = HTTP1ClientCodec(host: instance.address)
                try channel.pipeline.syncOperations.addHandler(codec)
                try channel.pipeline.syncOperations.addHandler(handler.value)
                codec.takeBytesDirectly()
            }
        }
        let connection: EventLoopFuture<any Channel>
        if loop is EpollEventLoop {
            connection = EpollConnector.connect(host: instance.host, port: instance.port, on: loop, timeout: .seconds(2), initializer: initialize)
        } else {
            connection = ClientBootstrap(group: loop)
                .connectTimeout(.seconds(2))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer(initialize)
                .connect(host: instance.host, port: instance.port)
        }
        connection
            .whenComplete { result in
                let session = bound.value
                switch result {
                case .success(let channel):
                    if let idleList { session.pool?.watch(handler.value, on: channel, in: idleList) }
                    session.connected(channel, handler: handler.value)
                case .failure(let error):
                    guard session.instance == instance, !session.over else { return }
                    session.metrics.upstreamError(instance, kind: "connect")
                    session.endAttempt(failed: true)
                    // It may be shutting down: probed, it stays out until it accepts again.
                    session.balancer?.health.closing(instance)
                    // Nothing was sent: any method may go to another instance.
                    session.disarm()
                    if session.retry(always: true) { return }
                    session.fail(.badGateway, "upstream_unreachable", "cannot connect to \(instance.address): \(error)")
                }
            }
    }

    /// Every instance of the service is new and the ramp's concurrency is taken: the request
    /// waits (up to the route's timeout) for a slot, then gets 503 `warming_up`.
    private func waitForAdmission(_ service: String, on loop: any EventLoop) {
        let now = SystemMonotonicClock().nowNanos()
        let deadline = admissionDeadline ?? now + UInt64(max(0, timeout.nanoseconds))
        admissionDeadline = deadline
        guard now < deadline else {
            abandonRetry(service)
            fail(
                .serviceUnavailable,
                "warming_up",
                "every instance of service \(service) is new and it takes only part of its usual load while warming up; retry shortly"
            )
            return
        }
        let bound = NIOLoopBound(self, eventLoop: loop)
        loop.scheduleTask(in: .milliseconds(10)) { bound.value.start() }
    }

    /// A retry slot taken for an attempt that never started goes back to the budget.
    private func abandonRetry(_ service: String) {
        guard attemptIsRetry, let balancer else { return }
        attemptIsRetry = false
        balancer.retryBudget.release(service)
    }

    /// Tries another instance when allowed; false when this attempt's failure is final.
    private func retry(always: Bool = false) -> Bool {
        guard !over, retriesLeft > 0, writer.headSent == false, let instance else { return false }
        // Once body bytes went upstream they cannot be sent again.
        guard always || (retryAnswers && requestEnded && bodyBytes == 0) else { return false }
        let others = candidates.filter { $0.key != instance.key }
        guard !others.isEmpty else { return false }
        // Retries stay within the service's budget, so they cannot multiply an outage.
        if let balancer, !balancer.retryBudget.allowRetry(instance.service) { return false }
        attemptIsRetry = balancer != nil
        retriesLeft -= 1
        candidates = others
        metrics.retries.increment()
        disarm()
        let old = upstream
        upstream = nil
        upstreamHandler = nil
        old?.close(promise: nil)
        start()
        return true
    }

    /// The attempt's deadline no longer applies (its answer began, or it ended).
    private func disarm() {
        timer?.cancel()
        timer = nil
        upstreamHandler?.disarm()
    }

    /// The attempt's instance did not answer in time: another one, or 504.
    func attemptTimedOut() {
        disarm()
        guard let instance, !over else { return }
        metrics.upstreamError(instance, kind: "timeout")
        endAttempt(failed: true)
        if retry() { return }
        let ms = timeout.nanoseconds / 1_000_000
        fail(.gatewayTimeout, "upstream_timeout", "\(instance.address) did not answer within \(ms) ms")
    }

    private func connected(_ channel: any Channel, handler: UpstreamHandler) {
        guard !over, upstream == nil else {
            channel.close(promise: nil)
            return
        }
        guard let instance else { return }
        upstream = channel
        upstreamHandler = handler
        // (Sent as it is unless the instance has a base path: the codec adds the instance's host.)
        switch request {
        case .head(var head):
            if !instance.basePath.isEmpty { head.uri = instance.basePath + head.uri }
            handler.send(.head(head))
        case .lines(var lines):
            if !instance.basePath.isEmpty { lines.uri = instance.basePath + lines.uri }
            handler.send(lines)
        case .released:
            return
        }
        for chunk in pending { handler.send(.body(.byteBuffer(chunk))) }
        pending = []
        pendingBytes = 0
        if requestEnded { handler.send(.end(nil)) }
        handler.flush()
        if !requestEnded { writer.setReading(channel.isWritable) }
    }

    // MARK: - From the client

    func body(_ chunk: ByteBuffer) {
        guard !over else { return }
        bodyBytes += chunk.readableBytes
        if let maxBodyBytes, bodyBytes > maxBodyBytes {
            fail(.payloadTooLarge, "body_too_large", "the body exceeds \(maxBodyBytes) bytes, the most this API takes")
            return
        }
        if let upstream, let upstreamHandler {
            upstreamHandler.send(.body(.byteBuffer(chunk)), flush: true)
            if !upstream.isWritable { writer.setReading(false) }
        } else {
            pending.append(chunk)
            pendingBytes += chunk.readableBytes
            if pendingBytes > Self.maxPendingBytes { writer.setReading(false) }
        }
    }

    func end() {
        requestEnded = true
        guard !over else { return }
        upstreamHandler?.send(.end(nil), flush: true)
    }

    func cancel() {
        endAttempt(failed: nil)
        if !over { finish(status: 0, error: "client_gone") }
        over = true
        disarm()
        upstream?.close(promise: nil)
        releaseUpstream()
    }

    func clientWritabilityChanged(_ writable: Bool) {
        guard let upstream else { return }
        upstreamReadingPaused = !writable
        upstream.setOption(ChannelOptions.autoRead, value: writable).whenComplete { _ in }
        if writable { upstream.read() }
    }

    // MARK: - From the upstream (only the current attempt's connection counts: its handler)

    func upstreamWritabilityChanged(_ writable: Bool, from handler: UpstreamHandler) {
        guard handler === upstreamHandler else { return }
        if !requestEnded && !over { writer.setReading(writable) }
    }

    /// The answer's head; its fields are the codec's `answer` lines (the hop-by-hop ones left
    /// out): they go on to the client as bytes, unless the route changes them. (Read in place
    /// from the codec: the answer is not copied per request.)
    func responseHead(_ response: HTTPResponseHead, answerIn codec: HTTP1ClientCodec, from handler: UpstreamHandler) {
        guard !over, handler === upstreamHandler, let channel = upstream else { return }
        disarm()
        let close = codec.answer.section.hop.close
        if let instance, codec.answer.section.draining {
            balancer?.health.drain(instance.key, source: .response)
        } else if let instance, reusedConnection, close {
            // A kept-alive connection closed: the instance may be shutting down.
            balancer?.health.closing(instance)
        }
        let slow = slowCallNanos > 0 && SystemMonotonicClock().nowNanos() > attemptStarted + slowCallNanos
        headVerdict = response.status.code >= 500 || slow
        if response.status.code == 101 {
            endAttempt(failed: false)
            var upgrade = response
            upgrade.headers = codec.answer.headers
            return switchProtocols(upgrade, protocols: codec.answer.section.hop.upgrade, upstream: channel)
        }
        if (502...504).contains(response.status.code) {
            endAttempt(failed: true)
            if retry() { return }
        }
        upstreamKeepAlive = !close && (response.version.minor >= 1 || codec.answer.section.hop.keepAlive)
        status = Int(response.status.code)
        if decorates || !response.status.mayHaveResponseBody {
            // Changed on the way (or without a body, whose length fields the codec drops): as a list.
            var head = HTTPResponseHead(version: .http1_1, status: response.status, headers: codec.answer.headers)
            decorate(&head.headers)
            writer.head(head)
        } else {
            writer.head(
                response,
                fieldLines: codec.answer.fieldLines,
                length: codec.answer.section.contentLength != nil,
                transferEncoding: codec.answer.section.transferEncoding != nil
            )
        }
    }

    /// The upstream accepted an upgrade (WebSocket): the 101 goes to the client and both
    /// connections become one byte tunnel, with backpressure both ways.
    private func switchProtocols(_ response: HTTPResponseHead, protocols: String?, upstream channel: any Channel) {
        guard case .head(let head) = request, head.headers.contains(name: "upgrade") else {
            return fail(.badGateway, "upstream_failed", "\(instance?.address ?? "upstream") switched protocols unasked")
        }
        over = true
        status = 101
        finish(status: 101)
        var headers = HTTPHeaders()
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        headers.add(name: "connection", value: "upgrade")
        if let protocols { headers.add(name: "upgrade", value: protocols) }
        decorate(&headers)
        // The codecs still deliver this exchange's end: rebuild the pipelines on the next tick.
        let bound = NIOLoopBound((writer, headers), eventLoop: channel.eventLoop)
        let pool = pool
        channel.eventLoop.execute {
            let (writer, headers) = bound.value
            // Bytes either codec held back are queued until both pipelines are raw.
            let toUpstream = TunnelEnd(source: writer.channel, pool: pool)
            let toClient = TunnelEnd(source: channel, pool: pool)
            let upstreamTunnel = RawTunnelHandler(peer: toClient)
            let ops = channel.pipeline.syncOperations
            do {
                let codec = try ops.handler(type: HTTP1ClientCodec.self)
                try ops.addHandler(upstreamTunnel, position: .after(codec))
                if let c = try? ops.context(handlerType: UpstreamHandler.self) { ops.removeHandler(context: c, promise: nil) }
                ops.removeHandler(codec, promise: nil)
            } catch {
                channel.close(promise: nil)
                writer.channel.close(promise: nil)
                return
            }
            let head = HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers)
            guard let clientTunnel = writer.switchProtocols(head, to: toUpstream), writer.channel.isActive else {
                return channel.close(promise: nil)
            }
            toUpstream.open(to: upstreamTunnel)
            toClient.open(to: clientTunnel)
            channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            channel.read()
        }
    }

    func responseBody(_ chunk: ByteBuffer, from handler: UpstreamHandler) {
        guard !over, handler === upstreamHandler else { return }
        writer.body(chunk, flush: false)
    }

    /// The upstream's read burst is over: what it gave goes out to the client in one write.
    func upstreamReadComplete(from handler: UpstreamHandler) {
        guard !over, handler === upstreamHandler else { return }
        writer.flush()
    }

    func responseEnd(from handler: UpstreamHandler) {
        guard !over, handler === upstreamHandler, let channel = upstream else { return }
        endAttempt(failed: nil)
        over = true
        finish(status: status)
        // A request still being sent when the answer is complete cannot share the connection.
        writer.end(closeAfter: !requestEnded)
        if let pool, let upstreamHandler, requestEnded, upstreamKeepAlive, upstreamHandler.active {
            // Kept for the next request: reading as usual.
            if upstreamReadingPaused { channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in } }
            pool.put(upstreamHandler)
        } else {
            channel.close(promise: nil)
        }
        releaseUpstream()
    }

    /// The exchange is over: the session lets go of its connection, which may serve another
    /// session from the pool now (nothing this one still hears of may touch it), and the two
    /// no longer hold each other; its request lines are not sent again, so their buffer goes
    /// back to the client's connection for its next request.
    private func releaseUpstream() {
        upstream = nil
        upstreamHandler = nil
        if case .lines(let lines) = request {
            request = .released
            writer.giveBackScratch(lines.fields)
        }
    }

    func upstreamFailed(_ detail: String, from handler: UpstreamHandler) {
        guard handler === upstreamHandler, !over else { return }
        if let instance { metrics.upstreamError(instance, kind: "reset") }
        endAttempt(failed: true)
        fail(.badGateway, "upstream_failed", "\(instance?.address ?? "upstream"): \(detail)")
    }

    func fail(_ status: HTTPResponseStatus, _ code: String, _ message: String) {
        guard !over else { return }
        endAttempt(failed: nil)
        over = true
        finish(status: writer.headSent == true ? self.status : Int(status.code), error: code)
        disarm()
        upstream?.close(promise: nil)
        releaseUpstream()
        writer.respond(.error(status, code, message), closeAfter: !requestEnded)
    }
}

/// An attempt's deadline, scheduled on the session's loop and called there.
private struct AttemptDeadline: NIOScheduledCallbackHandler, @unchecked Sendable {
    // @unchecked: the session is only touched on its loop, where the callback runs.
    let session: GatewaySession

    func handleScheduledCallback(eventLoop: some EventLoop) { session.attemptTimedOut() }
}

/// Relays the upstream's answer to its session, and keeps the current attempt's deadline.
final class UpstreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    /// The session this connection serves now; nil once the handler left its pipeline (the
    /// session holds its handler while the attempt lasts: the pair must not outlive the
    /// connection).
    var session: GatewaySession?
    var complete = false
    /// The connection is open (kept from its events: `Channel.isActive` costs more, asked once
    /// or twice per request).
    private(set) var active = false
    /// The pool's list this connection goes back to (set once it is connected: no lookup per put).
    fileprivate var idleList: UpstreamPool.IdleList?
    /// The connection's codec: what each answer's hop-by-hop fields said.
    private var codec: HTTP1ClientCodec?
    private(set) var channel: (any Channel)?
    /// Writes from here go straight to the codec (not through the channel's pipeline tail).
    private var context: ChannelHandlerContext?
    /// When the current attempt's answer must have begun (none: no attempt waits). The
    /// connection's one timer: timeouts of the same route keep the same length, so a kept
    /// connection re-arms no timer per request.
    private var deadline: MovingDeadline?

    init(session: GatewaySession) { self.session = session }

    func handlerAdded(context: ChannelHandlerContext) {
        channel = context.channel
        active = context.channel.isActive
        // (Held strongly until `handlerRemoved` stops it: see `MovingDeadline.expired`.)
        deadline = MovingDeadline(eventLoop: context.eventLoop) { self.session?.attemptTimedOut() }
        self.context = context
        codec = try? context.pipeline.syncOperations.handler(type: HTTP1ClientCodec.self)
        codec?.receiver = self
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        codec?.receiver = nil
        self.context = nil
        deadline?.stop()
        session = nil
    }

    /// To the codec by a direct call.
    func send(_ part: HTTPClientRequestPart, flush: Bool = false) {
        codec?.send(part, flush: flush)
    }

    /// A request head as field lines, to the codec by a direct call.
    func send(_ lines: HTTP1ClientCodec.RequestLines) { codec?.sendHead(lines) }

    func flush() { codec?.flushPending() }

    /// The attempt over this connection must have its answer's head by `deadline`.
    func arm(_ deadline: NIODeadline) { self.deadline?.set(deadline) }

    func disarm() { deadline?.clear() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        receive(unwrapInboundIn(data))
    }

    /// A part of the answer from the codec right before this handler (a direct call).
    func receive(_ part: HTTPClientResponsePart) {
        guard context != nil else { return }
        switch part {
        case .head(let head):
            // 1xx answers other than 101 precede the real one.
            if head.status.code >= 100 && head.status.code < 200 && head.status.code != 101 { return }
            guard let codec else { return }
            session?.responseHead(head, answerIn: codec, from: self)
        case .body(let chunk): session?.responseBody(chunk, from: self)
        case .end:
            complete = true
            session?.responseEnd(from: self)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readComplete()
        context.fireChannelReadComplete()
    }

    /// The read burst is over (from the codec right before, by a direct call: this handler is
    /// the pipeline's last, so the event goes no further).
    func readComplete() { session?.upstreamReadComplete(from: self) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        session?.upstreamWritabilityChanged(context.channel.isWritable, from: self)
        context.fireChannelWritabilityChanged()
    }

    func channelActive(context: ChannelHandlerContext) {
        active = true
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        active = false
        if !complete { session?.upstreamFailed("the connection closed before the answer was complete", from: self) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !complete { session?.upstreamFailed("\(error)", from: self) }
        context.close(promise: nil)
    }
}

/// Bytes read from `source` are written to `target`; when the target is full, reading the
/// source pauses; when either side closes, so does the other.
final class TunnelEnd: RawTunnelPeer {
    let source: any Channel
    /// The other connection's tunnel handler; nil until both connections are raw (bytes wait),
    /// and again once the source closed. (The two ends and the two handlers hold each other in
    /// a ring: letting go of the target when the source closes breaks it, so both connections
    /// are freed — before, every WebSocket leaked both.)
    private var target: RawTunnelHandler?
    private var queued: [ByteBuffer] = []
    private var closed = false
    #if DEBUG
        private let pool: UpstreamPool?
    #endif

    init(source: any Channel, pool: UpstreamPool?) {
        self.source = source
        #if DEBUG
            self.pool = pool
            pool?.tunnelEndsAlive.add(1, ordering: .relaxed)
        #endif
    }

    #if DEBUG
        deinit { pool?.tunnelEndsAlive.subtract(1, ordering: .relaxed) }
    #endif

    func open(to target: RawTunnelHandler) {
        for bytes in queued { target.send(bytes, flush: false) }
        queued = []
        target.channel?.flush()
        if closed {
            target.channel?.close(promise: nil)
        } else {
            self.target = target
        }
    }

    func tunnelBytes(_ bytes: ByteBuffer) {
        guard let target, let channel = target.channel else {
            queued.append(bytes)
            return
        }
        target.send(bytes)
        if !channel.isWritable { source.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in } }
    }

    func tunnelClosed() {
        closed = true
        target?.channel?.close(promise: nil)
        target = nil  // (bytes queued before the tunnel opened still go through `open`, then the close)
    }

    /// The source's own writability: reading the other connection follows it.
    func tunnelWritabilityChanged(_ writable: Bool) {
        guard let other = target?.channel else { return }
        other.setOption(ChannelOptions.autoRead, value: writable).whenComplete { _ in }
        if writable { other.read() }
    }
}

/// Idle keep-alive connections to upstream instances (their handlers), per event loop and
/// address. A connection is taken by one session at a time, on its own loop; one the upstream
/// closes leaves the pool.
final class UpstreamPool: @unchecked Sendable {
    // @unchecked: the table is read and changed under the lock; a list only on its loop.
    /// Idle connections kept per instance and event loop.
    static let maxIdle = 64
    private let lock = NIOLock()
    /// Each address's list on each loop, made when first asked for (lists stay once made).
    private var lists: [Key: IdleList] = [:]
    #if DEBUG
        /// Sessions of this pool's responder not yet freed (debug builds: tests check that nothing
        /// holds a session once its exchange is over — a session and its upstream connection's
        /// handler once held each other, and every connection the upstream closed leaked both).
        let sessionsAlive = Atomic<Int>(0)
        /// The ends of WebSocket tunnels not yet freed (debug builds: none once both sides closed).
        let tunnelEndsAlive = Atomic<Int>(0)
    #endif

    /// An address's idle connections on one event loop. Taken from, put back to and left by a
    /// closing connection only on that loop, so without a lock (and changed in place: a
    /// request's take and put allocate nothing).
    final class IdleList: @unchecked Sendable {
        // @unchecked: touched on its loop only.
        let address: HashedKey
        fileprivate var handlers: [UpstreamHandler] = []

        init(address: HashedKey) { self.address = address }

        /// A kept connection still open, if the list has one.
        func take() -> UpstreamHandler? {
            while let handler = handlers.popLast() {
                if handler.active { return handler }
            }
            return nil
        }
    }

    private struct Key: Hashable {
        let loop: ObjectIdentifier
        let address: HashedKey
    }

    /// The idle list of `address` on `loop`: the one `kept` holds when it is that address's (a
    /// client connection's requests mostly go to one instance: no lock, no lookup), else the
    /// table's, which `kept` holds from then on.
    func list(for address: HashedKey, on loop: any EventLoop, kept: inout AnyObject?) -> IdleList {
        if let list = kept as? IdleList, list.address == address { return list }
        let key = Key(loop: ObjectIdentifier(loop), address: address)
        let list = lock.withLock { () -> IdleList in
            if let list = lists[key] { return list }
            let list = IdleList(address: address)
            lists[key] = list
            return list
        }
        kept = list
        return list
    }

    /// An idle connection goes back to its list (or closes when the list is full). Idle, it
    /// holds no session: the last one, with its writer and client, goes now.
    func put(_ handler: UpstreamHandler) {
        handler.session = nil
        guard let channel = handler.channel else { return }
        guard let list = handler.idleList, list.handlers.count < Self.maxIdle else { return channel.close(promise: nil) }
        list.handlers.append(handler)
    }

    /// Once per connection: it belongs to `list`, and when it closes, it leaves the list.
    func watch(_ handler: UpstreamHandler, on channel: any Channel, in list: IdleList) {
        handler.idleList = list
        let gone = ObjectIdentifier(handler)
        // (On the connection's loop, the list's.)
        channel.closeFuture.whenComplete { _ in list.handlers.removeAll { ObjectIdentifier($0) == gone } }
    }
}
