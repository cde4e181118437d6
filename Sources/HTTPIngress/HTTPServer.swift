// HTTPIngress: a small NIO HTTP server (HTTP/1.1 keep-alive and pipelining; HTTP/2 by TLS
// ALPN or prior knowledge; bounded bodies) and the HTTP message channel
// (`POST /v1/messages/{topic}`) built on it.
import EpollTransport
import Logging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOHTTP1
import NIOHTTP2
import NIOPosix
public import NIOSSL
import NIOTLS
public import ServiceLifecycle
import SwitchyardCore
import Synchronization

/// A request with its whole body.
public struct IncomingRequest: Sendable {
    public var method: HTTPMethod
    public var uri: String
    public var headers: HTTPHeaders
    public var body: ByteBuffer
    public var remoteAddress: SocketAddress?

    /// Path without the query string (still percent-encoded).
    public var path: Substring {
        guard let q = uri.utf8.firstIndex(of: UInt8(ascii: "?")) else { return uri[...] }
        return uri[..<q]
    }

    /// Query parameters (percent-decoded, last one wins).
    public var query: [String: String] {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return [:] }
        var out: [String: String] = [:]
        for pair in parts[1].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = PercentDecoding.decode(kv[0], plusAsSpace: true) ?? String(kv[0])
            out[key] = kv.count == 2 ? (PercentDecoding.decode(kv[1], plusAsSpace: true) ?? String(kv[1])) : ""
        }
        return out
    }

    public init(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: ByteBuffer, remoteAddress: SocketAddress?) {
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
    }
}

/// What is known of a request refused before its body was read.
public struct IncomingRequestSummary: Sendable {
    public var method: HTTPMethod
    public var uri: String
}

/// A complete response.
public struct OutgoingResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON body (already encoded).
    public static func json(_ status: HTTPResponseStatus, _ json: String, headers: HTTPHeaders = [:]) -> OutgoingResponse {
        self.json(status, ByteBuffer(string: json), headers: headers)
    }

    public static func json(_ status: HTTPResponseStatus, _ json: ByteBuffer, headers: HTTPHeaders = [:]) -> OutgoingResponse {
        var h = headers
        h.replaceOrAdd(name: "content-type", value: "application/json")
        return OutgoingResponse(status: status, headers: h, body: json)
    }

    /// `{"error": code, "message": message}`: every error Switchyard answers looks like this.
    public static func error(_ status: HTTPResponseStatus, _ code: String, _ message: String, headers: HTTPHeaders = [:]) -> OutgoingResponse {
        json(status, "{\"error\":\(JSONText.quote(code)),\"message\":\(JSONText.quote(message))}", headers: headers)
    }

    public static func text(_ status: HTTPResponseStatus, _ text: String, contentType: String = "text/plain; charset=utf-8") -> OutgoingResponse {
        OutgoingResponse(status: status, headers: ["content-type": contentType], body: ByteBuffer(string: text))
    }
}

/// Answers requests on the connection's event loop.
public protocol HTTPResponder: Sendable {
    func respond(to request: IncomingRequest, on loop: any EventLoop) -> EventLoopFuture<OutgoingResponse>
}

/// A listening HTTP/1.1 server run as a `Service`. On graceful shutdown it stops accepting,
/// lets requests in progress and open tunnels finish (up to `drainSeconds`) and closes the
/// connections.
public final class HTTPServer: Service {
    public let host: String
    public let port: Int
    public let maxBodyBytes: Int
    let group: any EventLoopGroup
    let responder: any HTTPResponder
    let logger: Logger
    let drainSeconds: Double
    let onBodyTooLarge: @Sendable (IncomingRequestSummary) -> Void
    /// Requests it takes stream through (the gateway); the rest go to `responder`.
    let streaming: (any HTTPStreamingResponder)?
    /// A connection must deliver a complete request head this soon after it opens or after its
    /// last answer, or it is closed (slow-loris clients; idle keep-alive connections).
    let headTimeout: TimeAmount
    /// TLS for every connection (ALPN offers h2 when `http2`).
    let tls: NIOSSLContext?
    /// HTTP/2 besides HTTP/1.1: negotiated by ALPN with TLS, by prior knowledge (h2c) without.
    let http2: Bool
    /// The TLS context verifies client certificates: their names may be trusted.
    let verifiesClientCertificates: Bool
    private let bound: EventLoopPromise<SocketAddress>
    private let connections = NIOLockedValueBox([ObjectIdentifier: any Channel]())
    private let busy = Atomic<Int>(0)

    public init(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        maxBodyBytes: Int,
        responder: any HTTPResponder,
        logger: Logger,
        drainSeconds: Double = 5,
        headTimeoutSeconds: Double = 60,
        streaming: (any HTTPStreamingResponder)? = nil,
        tls: NIOSSLContext? = nil,
        verifiesClientCertificates: Bool = false,
        http2: Bool = false,
        onBodyTooLarge: @escaping @Sendable (IncomingRequestSummary) -> Void = { _ in }
    ) {
        self.tls = tls
        self.verifiesClientCertificates = tls != nil && verifiesClientCertificates
        self.http2 = http2
        self.onBodyTooLarge = onBodyTooLarge
        self.streaming = streaming
        self.headTimeout = .nanoseconds(Int64(headTimeoutSeconds * 1e9))
        self.host = host
        self.port = port
        self.group = group
        self.maxBodyBytes = maxBodyBytes
        self.responder = responder
        self.logger = logger
        self.drainSeconds = drainSeconds
        self.bound = group.any().makePromise(of: SocketAddress.self)
    }

    /// HTTP/1.1 on a connection (its handlers go last); returns its codec.
    @discardableResult
    func configureHTTP1(_ ops: ChannelPipeline.SynchronousOperations) throws -> HTTP1ServerCodec {
        // Pipelined requests the request handler collects and answers in one piece are read
        // ahead (all of them, or the message channel's when a streaming responder takes the rest).
        let streams = streaming != nil
        let codec = HTTP1ServerCodec { head in !streams || MessageEndpoints.contains(head.uri) }
        try ops.addHandler(codec)
        try ops.addHandler(RequestHandler(server: self, maxBodyBytes: maxBodyBytes, codec: codec))
        return codec
    }

    /// HTTP/2 on a connection: each stream is one request, seen as HTTP/1.1 parts by the same
    /// request handler (the message channel and the gateway work unchanged).
    func configureHTTP2(_ ops: ChannelPipeline.SynchronousOperations) throws {
        _ = try ops.configureHTTP2Pipeline(
            mode: .server,
            connectionConfiguration: .init(),
            streamConfiguration: .init()
        ) { [self] stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                try stream.pipeline.syncOperations.addHandler(RequestHandler(server: self, maxBodyBytes: maxBodyBytes))
            }
        }
    }

    /// The address the server listens on, once bound (use port 0 to let the OS choose).
    public var boundAddress: EventLoopFuture<SocketAddress> { bound.futureResult }

    /// A new connection's pipeline: TLS, HTTP/2 or HTTP/1.1 as configured; it is tracked until it closes.
    private func initialize(_ channel: any Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            let ops = channel.pipeline.syncOperations
            if let tls {
                try ops.addHandler(NIOSSLServerHandler(context: tls))
                if http2 {
                    try ops.addHandler(
                        ApplicationProtocolNegotiationHandler { [self] result, channel in
                            channel.eventLoop.makeCompletedFuture {
                                if case .negotiated("h2") = result {
                                    try configureHTTP2(channel.pipeline.syncOperations)
                                } else {
                                    try configureHTTP1(channel.pipeline.syncOperations)
                                }
                            }
                        }
                    )
                } else {
                    try configureHTTP1(ops)
                }
            } else if http2 {
                try ops.addHandler(PrefaceSniffer(server: self))
            } else {
                try configureHTTP1(ops).takeBytesDirectly()
            }
            let id = ObjectIdentifier(channel)
            connections.withLockedValue { $0[id] = channel }
            channel.closeFuture.whenComplete { [connections] _ in
                connections.withLockedValue { _ = $0.removeValue(forKey: id) }
            }
        }
    }

    public func run() async throws {
        let address: SocketAddress
        let stopListening: () async -> Void
        do {
            if let epoll = group as? EpollEventLoopGroup {
                let listener = try await EpollListener.bind(host: host, port: port, group: epoll) { [self] in initialize($0) }
                address = listener.localAddress
                stopListening = { await listener.close() }
            } else {
                let channel = try await ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: 1024)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelOption(.maxMessagesPerRead, value: 16)
                    .childChannelInitializer { [self] in initialize($0) }
                    .bind(host: host, port: port)
                    .get()
                address = channel.localAddress!
                stopListening = { try? await channel.close() }
            }
        } catch {
            let failure = HTTPServerError(message: "cannot listen on \(host):\(port): \(error)")
            bound.fail(failure)
            throw failure
        }
        bound.succeed(address)
        logger.info("listening", metadata: ["address": "\(address)"])
        try? await gracefulShutdown()
        await stopListening()
        // Let requests in progress finish, then close every connection.
        let deadline = NIODeadline.now() + .nanoseconds(Int64(drainSeconds * 1e9))
        while busy.load(ordering: .relaxed) > 0 && NIODeadline.now() < deadline {
            await pauseEvenIfCancelled(nanoseconds: 10_000_000)
        }
        let open = connections.withLockedValue { Array($0.values) }
        for c in open { try? await c.close() }
        logger.info("stopped", metadata: ["address": "\(host):\(port)"])
    }

    func requestStarted() { busy.add(1, ordering: .relaxed) }
    func requestFinished() { busy.subtract(1, ordering: .relaxed) }
}

public struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
    public init(message: String) { self.message = message }
}

/// Collects one request (bounded), asks the responder, writes the response. On HTTP/1.1,
/// pipelined requests it collects are taken one after another without waiting for the answers
/// before (the codec reads ahead), and the answers are written in request order.
final class RequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: HTTPServer
    let maxBodyBytes: Int
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var tooLarge = false
    /// The HTTP/1.1 codec, told when the next pipelined request may be read ahead (nil on HTTP/2).
    let codec: HTTP1ServerCodec?
    /// A buffer kept between the connection's requests for what a session builds per request
    /// (see `HTTPResponseWriter.takeScratch`).
    var scratch: ByteBuffer?
    /// What a session keeps from one request of this connection to the next (the gateway: the
    /// idle upstream connections of the instance it sent the last request to).
    var kept: AnyObject?
    /// Answers of collected requests in request order (nil: not ready yet); `answered` is
    /// the number of the first (the next request's is `answered + answers.count`).
    private var answers = CircularBuffer<(response: OutgoingResponse, keepAlive: Bool)?>(initialCapacity: 2)
    private var answered = 0
    /// The number of the request being collected (its slot in `answers`).
    private var slot = 0
    /// Inside a read burst: responses ready now are flushed together at `channelReadComplete`
    /// (one syscall for a burst of pipelined requests instead of one each).
    private var reading = false
    private var flushPending = false
    /// Answers completed later (after the journal commit) are flushed once per event-loop task
    /// that completes them, so a burst of commits costs one write per connection, not one each.
    private var flushScheduled = false
    /// A streamed exchange: the session the request's body goes to (until the request ends),
    /// and the one whose answer is being written (until it ends).
    private var requestSession: (any HTTPStreamSession)?
    private var responseSession: (any HTTPStreamSession)?
    /// When the next request head must have arrived (none while a request is in progress): the
    /// connection closes then.
    private var headDeadline: MovingDeadline?
    /// This handler's place: the codec hands it request parts by a direct call (`receive`).
    private var context: ChannelHandlerContext?
    /// The client's address and its text, looked up once per connection (not per request).
    private var client: (address: SocketAddress?, ip: String?)?

    init(server: HTTPServer, maxBodyBytes: Int, codec: HTTP1ServerCodec? = nil) {
        self.server = server
        self.maxBodyBytes = maxBodyBytes
        self.codec = codec
    }

    /// The answer to request `number`; it goes out once those before it have.
    private func answer(_ number: Int, _ response: OutgoingResponse, keepAlive: Bool, context: ChannelHandlerContext) {
        answers[answers.index(answers.startIndex, offsetBy: number - answered)] = (response, keepAlive)
        while let first = answers.first, let (response, keepAlive) = first {
            answers.removeFirst()
            answered += 1
            write(response, keepAlive: keepAlive, context: context)
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        codec?.receiver = self
        // (Held strongly until `handlerRemoved` stops it: see `MovingDeadline.expired`.)
        headDeadline = MovingDeadline(eventLoop: context.eventLoop) { self.context?.channel.close(promise: nil) }
        armHeadTimer()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        codec?.receiver = nil
        headDeadline?.stop()
    }

    /// The monotonic clock's nanoseconds when the event loop's current batch of socket events
    /// began (Switchyard's own loops: no clock read), else now.
    var batchNanos: UInt64 { (headDeadline?.now ?? .now()).uptimeNanoseconds }

    /// Waits for the next request head (see `HTTPServer.headTimeout`).
    private func armHeadTimer() {
        headDeadline?.set(in: server.headTimeout)
    }

    private func disarmHeadTimer() { headDeadline?.clear() }

    func channelReadComplete(context: ChannelHandlerContext) {
        readComplete()
        context.fireChannelReadComplete()
    }

    /// The read burst is over (from the HTTP/1.1 codec right before this handler, by a direct
    /// call: this handler is the pipeline's last, so the event goes no further).
    func readComplete() {
        reading = false
        if flushPending, let context {
            flushPending = false
            context.flush()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        receive(unwrapInboundIn(data), context: context)
    }

    /// A request part from the HTTP/1.1 codec right before this handler (a direct call).
    func receive(_ part: HTTPServerRequestPart) {
        guard let context else { return }
        receive(part, context: context)
    }

    func flushAnswer() {
        if let codec { codec.flushPending() } else { context?.flush() }
    }

    /// A part of the answer: to the HTTP/1.1 codec by a direct call, else (HTTP/2) through the
    /// pipeline.
    func send(_ part: HTTPServerResponsePart, flush: Bool = false, promise: EventLoopPromise<Void>? = nil) {
        if let codec {
            codec.send(part, flush: flush, promise: promise)
        } else if let context {
            if flush {
                context.writeAndFlush(wrapOutboundOut(part), promise: promise)
            } else {
                context.write(wrapOutboundOut(part), promise: promise)
            }
        } else {
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    private func receive(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        reading = true
        if let session = requestSession {
            switch part {
            case .head: break  // the codec holds the next request until this answer ends
            case .body(let chunk): session.body(chunk)
            case .end:
                requestSession = nil
                session.end()
            }
            return
        }
        switch part {
        case .head(let h):
            disarmHeadTimer()
            if let streaming = server.streaming, !MessageEndpoints.contains(h.uri),
                startStream(streaming, h, context: context)
            {
                return
            }
            head = h
            body = nil
            tooLarge = false
            slot = answered + answers.count
            answers.append(nil)
            if let length = h.headers.first(name: "content-length").flatMap(Int.init), length > maxBodyBytes {
                tooLarge = true
                // A client waiting for `100 Continue` hears at once that the body is too large
                // (and sends none; the connection closes, as its framing is now unclear).
                if h.version == .http1_1, h.headers.contains(name: "expect") {
                    head = nil
                    refuseTooLarge(h, context: context)
                }
            }
        case .body(var chunk):
            guard !tooLarge else { return }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > maxBodyBytes {
                tooLarge = true
                body = nil
                return
            }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
        case .end:
            guard let head else { return }
            self.head = nil
            if tooLarge { return refuseTooLarge(head, context: context) }
            let request = IncomingRequest(
                method: head.method,
                uri: head.uri,
                headers: head.headers,
                body: body ?? ByteBuffer(),
                remoteAddress: clientAddress(context).address
            )
            body = nil
            let keepAlive = Self.keepsAlive(head)
            let number = slot
            server.requestStarted()
            server.responder.respond(to: request, on: context.eventLoop)
                .hop(to: context.eventLoop)
                .assumeIsolated()
                .whenComplete { [self] result in
                    server.requestFinished()
                    let response: OutgoingResponse
                    switch result {
                    case .success(let r): response = r
                    case .failure(let error):
                        response = .error(.internalServerError, "internal", "\(error)")
                    }
                    answer(number, response, keepAlive: keepAlive, context: context)
                }
            // Answered in one piece, in order: the next pipelined request need not wait for it.
            if keepAlive { codec?.allowReadAhead() }
        }
    }

    private func refuseTooLarge(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        server.onBodyTooLarge(IncomingRequestSummary(method: head.method, uri: head.uri))
        let response = OutgoingResponse.error(
            .payloadTooLarge,
            "payload_too_large",
            "request body exceeds the listener limit of \(maxBodyBytes) bytes"
        )
        answer(slot, response, keepAlive: false, context: context)
    }

    /// A failed connection (TLS, HTTP/2): it cannot be resynchronised, so close it. Malformed
    /// HTTP/1.1 never gets here: the codec answers it and closes.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Keep-alive as the request asks, except after an upgrade request: the codec reads no
    /// further request on that connection.
    static func keepsAlive(_ head: HTTPRequestHead) -> Bool {
        head.isKeepAlive && !head.headers.contains(name: "upgrade")
    }

    private func clientAddress(_ context: ChannelHandlerContext) -> (address: SocketAddress?, ip: String?) {
        if let client { return client }
        let address = context.channel.remoteAddress
        let found = (address: address, ip: address?.ipAddress)
        client = found
        return found
    }

    private func startStream(_ streaming: any HTTPStreamingResponder, _ head: HTTPRequestHead, context: ChannelHandlerContext) -> Bool {
        let client = clientAddress(context)
        let writer = HTTPResponseWriter(
            context: context,
            handler: self,
            keepAlive: Self.keepsAlive(head),
            verifiesPeers: server.verifiesClientCertificates,
            clientIP: client.ip
        )
        guard let session = streaming.session(for: head, remoteAddress: client.address, writer: writer) else { return false }
        requestSession = session
        if !writer.done {
            responseSession = session
            server.requestStarted()
        }
        return true
    }

    /// The streamed answer ended (or was cut).
    func streamFinished(context: ChannelHandlerContext) {
        armHeadTimer()
        // Answered at once (no session yet), or the client left first: nothing to count.
        guard responseSession != nil else { return }
        responseSession = nil
        server.requestFinished()
    }

    /// The streamed answer was a 101: the connection becomes a tunnel to `peer`.
    func streamSwitchedProtocols(to peer: any RawTunnelPeer, context: ChannelHandlerContext) -> RawTunnelHandler? {
        requestSession = nil
        if responseSession != nil {
            responseSession = nil
            server.requestFinished()
        }
        return becomeTunnel(to: peer, context: context)
    }

    /// HTTP is over on this connection: its handlers leave, raw bytes go to the peer (the
    /// codec hands over what it held back after the upgrade request).
    private func becomeTunnel(to peer: any RawTunnelPeer, context: ChannelHandlerContext) -> RawTunnelHandler? {
        let ops = context.pipeline.syncOperations
        let tunnel = RawTunnelHandler(peer: peer)
        do {
            // Right behind the codec: the bytes it hands over never reach an HTTP handler.
            let codec = try ops.handler(type: HTTP1ServerCodec.self)
            try ops.addHandler(tunnel, position: .after(codec))
            ops.removeHandler(context: context, promise: nil)
            ops.removeHandler(codec, promise: nil)
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            // An open tunnel (a WebSocket) counts as in flight: a shutdown gives it the drain
            // time to end before its connection is closed.
            let server = self.server
            server.requestStarted()
            context.channel.closeFuture.whenComplete { _ in server.requestFinished() }
            return tunnel
        } catch {
            context.close(promise: nil)
            return nil
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        responseSession?.clientWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        requestSession = nil
        if let session = responseSession {
            responseSession = nil
            session.cancel()
            server.requestFinished()
        }
        context.fireChannelInactive()
    }

    private func write(_ response: OutgoingResponse, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = response.headers
        headers.replaceOrAdd(name: "content-length", value: String(response.body.readableBytes))
        if !keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: .http1_1, status: response.status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if response.body.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        }
        // The next head is awaited only when no request is in progress (one read ahead may be).
        if keepAlive && answers.isEmpty && self.head == nil { armHeadTimer() }
        if keepAlive && reading {
            context.write(wrapOutboundOut(.end(nil)), promise: nil)
            flushPending = true
            return
        }
        if keepAlive {
            context.write(wrapOutboundOut(.end(nil)), promise: nil)
            if !flushScheduled {
                flushScheduled = true
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.execute {
                    let (handler, context) = loopBound.value
                    handler.flushScheduled = false
                    context.flush()
                }
            }
            return
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

/// Without TLS, a connection that opens with the HTTP/2 preface speaks HTTP/2 (h2c with prior
/// knowledge); any other is HTTP/1.1. Holds the first bytes until it can tell.
final class PrefaceSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    let server: HTTPServer
    private var held: ByteBuffer?

    init(server: HTTPServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if held == nil { held = bytes } else { held!.writeBuffer(&bytes) }
        let seen = held!.readableBytesView
        let n = min(seen.count, Self.preface.count)
        let isH2 = seen.prefix(n).elementsEqual(Self.preface.prefix(n))
        if isH2 && n < Self.preface.count { return }  // not sure yet
        let ops = context.pipeline.syncOperations
        var codec: HTTP1ServerCodec?
        do {
            // Both go after this handler, the last one so far.
            if isH2 { try server.configureHTTP2(ops) } else { codec = try server.configureHTTP1(ops) }
        } catch {
            context.close(promise: nil)
            return
        }
        let first = held!
        held = nil
        context.fireChannelRead(wrapInboundOut(first))
        ops.removeHandler(context: context, promise: nil)
        // (Removed at once: the codec is first now.)
        codec?.takeBytesDirectly()
    }
}
