public import NIOCore
public import NIOHTTP1
import NIOHTTP2
import NIOSSL

/// Takes over requests whose bodies and answers stream through without being collected (the
/// API gateway); every other request is collected and answered by the `HTTPResponder`.
/// Called on the connection's event loop; sessions live on it.
public protocol HTTPStreamingResponder: Sendable {
    /// A session for this request, or nil to leave it to the buffered responder. Not asked
    /// about the message endpoints (`/v1/messages/…`, `/v1/batch`): those are always the
    /// message channel's.
    func session(for head: HTTPRequestHead, remoteAddress: SocketAddress?, writer: HTTPResponseWriter) -> (any HTTPStreamSession)?
}

/// One streamed request: its body parts as they arrive, then its end; `cancel` when the client left.
public protocol HTTPStreamSession: AnyObject {
    func body(_ chunk: ByteBuffer)
    func end()
    func cancel()
    /// The client's connection can take more (or no more) response bytes now.
    func clientWritabilityChanged(_ writable: Bool)
}

/// Writes one streamed response back to the client and controls reading from it. Event loop only.
public final class HTTPResponseWriter {
    let context: ChannelHandlerContext
    /// The connection's request handler: told when the answer ends, and turns the connection
    /// into a raw tunnel after a 101.
    let handler: RequestHandler
    let keepAlive: Bool
    /// The listener verifies client certificates (else their names prove nothing).
    let verifiesPeers: Bool
    /// The client's IP address as text.
    public let clientIP: String?
    private(set) public var headSent = false
    private var readingPaused = false
    private(set) public var done = false

    init(context: ChannelHandlerContext, handler: RequestHandler, keepAlive: Bool, verifiesPeers: Bool = false, clientIP: String? = nil) {
        self.verifiesPeers = verifiesPeers
        self.clientIP = clientIP
        self.context = context
        self.handler = handler
        self.keepAlive = keepAlive
    }

    public var eventLoop: any EventLoop { context.eventLoop }
    /// The client's connection.
    public var channel: any Channel { context.channel }

    /// The names of the client's verified TLS certificate (mutual TLS): its subject's common
    /// name, DNS and URI subject alternative names. Empty without a client certificate.
    public var peerIdentities: [String] {
        guard verifiesPeers else { return [] }
        // An HTTP/2 stream's TLS is its connection's (the parent); an HTTP/1 connection's parent
        // is the listening socket.
        var connection = context.channel
        if let parent = connection.parent, (try? connection.pipeline.syncOperations.handler(type: HTTP2FramePayloadToHTTP1ServerCodec.self)) != nil {
            connection = parent
        }
        guard let certificate = try? connection.pipeline.syncOperations.nioSSL_peerCertificate() else { return [] }
        var names = certificate.subjectName.filter { $0.type == .commonName }.map(\.value)
        if let alternatives = try? certificate._subjectAlternativeNames() {
            for name in alternatives where name.nameType == .dnsName || name.nameType == .uri {
                names.append(String(decoding: name.contents, as: UTF8.self))
            }
        }
        return names
    }
    public var isClientWritable: Bool { context.channel.isWritable }

    /// The connection's scratch buffer, if it has one: what a session builds per request (the
    /// gateway's upstream field lines) is written into it and given back when the exchange is
    /// over (`giveBackScratch`), so a keep-alive connection allocates none per request.
    package func takeScratch() -> ByteBuffer? { handler.scratch.take() }

    /// The scratch buffer back, once nothing else holds its bytes (cleared by the next taker).
    package func giveBackScratch(_ buffer: ByteBuffer) {
        if buffer.capacity <= Self.maxScratchBytes { handler.scratch = buffer }
    }

    /// When the request began, in the monotonic clock's nanoseconds: the start of the event
    /// loop's batch of socket events its head was read in (on Switchyard's own loops, where it
    /// costs no clock read; a request's bytes were ready then), else now.
    package var requestStartNanos: UInt64 { handler.batchNanos }

    /// An object a session keeps on the client's connection for the connection's next request
    /// (event loop only, like the connection).
    package var connectionKept: AnyObject? {
        get { handler.kept }
        set { handler.kept = newValue }
    }

    /// Larger buffers (a request with very long fields) are not kept by an idle connection.
    static let maxScratchBytes = 4096

    /// During `session(for:…)` on HTTP/1.1: the request's field lines as they came, each with
    /// its CR LF (checked by the codec). A view of the received bytes: copy what is kept. Nil on
    /// HTTP/2.
    package var requestFieldLines: ByteBuffer? { handler.codec?.requestFieldLines }

    public func head(_ head: HTTPResponseHead) {
        guard !done, !headSent else { return }
        headSent = true
        var head = head
        if !keepAlive { head.headers.replaceOrAdd(name: "connection", value: "close") }
        handler.send(.head(head))
    }

    /// A head whose fields are lines of bytes already, each with its CR LF (a proxied answer's,
    /// its hop-by-hop fields left out): on HTTP/1.1 they are written as they are (no header
    /// list made); `length` and `transferEncoding` say whether they hold a `content-length` and
    /// a `transfer-encoding` field. For answers that may have a body (not 1xx, 204 or 304).
    package func head(_ head: HTTPResponseHead, fieldLines: ByteBuffer, length: Bool, transferEncoding: Bool) {
        guard !done, !headSent else { return }
        guard let codec = handler.codec else {
            // HTTP/2: the fields as a list.
            var head = head
            head.headers = HTTP1Message.headers(lines: fieldLines)
            return self.head(head)
        }
        headSent = true
        codec.sendHead(head.status, fieldLines: fieldLines, length: length, transferEncoding: transferEncoding, close: !keepAlive)
    }

    /// A part of the body; without `flush` it waits for `flush()` or the end (one write for a burst).
    public func body(_ chunk: ByteBuffer, flush: Bool = true) {
        guard !done, headSent else { return }
        handler.send(.body(.byteBuffer(chunk)), flush: flush)
    }

    public func flush() {
        guard !done, headSent else { return }
        handler.flushAnswer()
    }

    /// Ends the response; with `closeAfter` (or no keep-alive) the connection closes once written.
    public func end(closeAfter: Bool = false) {
        guard !done, headSent else { return }
        done = true
        let close = closeAfter || !keepAlive
        // Reading paused for the upstream's sake: the next request needs it.
        if readingPaused && !close { setReading(true) }
        // Finished before the end goes out: writing it can hand the connection's next
        // (pipelined) request to the handler at once, and that one must find this exchange
        // over (its session current, its head timer disarmed); closing must not find it open.
        handler.streamFinished(context: context)
        guard close else {
            handler.send(.end(nil), flush: true)
            return
        }
        let channel = context.channel
        let written = context.eventLoop.makePromise(of: Void.self)
        handler.send(.end(nil), flush: true, promise: written)
        written.futureResult.whenComplete { _ in channel.close(promise: nil) }
    }

    /// A whole answer at once (errors before anything was sent upstream's way).
    public func respond(_ response: OutgoingResponse, closeAfter: Bool = false) {
        guard !done, !headSent else {
            // Too late for a status: cut the connection so the client sees the answer is incomplete.
            if !done {
                done = true
                context.close(promise: nil)
                handler.streamFinished(context: context)
            }
            return
        }
        var headers = response.headers
        headers.replaceOrAdd(name: "content-length", value: String(response.body.readableBytes))
        head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))
        if response.body.readableBytes > 0 { body(response.body) }
        end(closeAfter: closeAfter)
    }

    /// Stops (false) or resumes (true) reading the client's request body: backpressure when the upstream is slower.
    public func setReading(_ on: Bool) {
        guard on == readingPaused else { return }
        readingPaused = !on
        context.channel.setOption(ChannelOptions.autoRead, value: on).whenComplete { _ in }
        if on { context.read() }
    }
}

extension HTTPResponseWriter {
    /// Sends `head` (a `101 Switching Protocols`) and turns the client connection into a raw
    /// byte tunnel: what the client sends goes to `peer`; returns the tunnel's handler to send
    /// to the client with (nil when the connection could not switch; it is closed then).
    public func switchProtocols(_ head: HTTPResponseHead, to peer: any RawTunnelPeer) -> RawTunnelHandler? {
        guard !done, !headSent else { return nil }
        headSent = true
        done = true
        context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
        return handler.streamSwitchedProtocols(to: peer, context: context)
    }
}

/// One side of a byte tunnel (a WebSocket after its upgrade): what arrives from the other side.
public protocol RawTunnelPeer: AnyObject {
    func tunnelBytes(_ bytes: ByteBuffer)
    func tunnelClosed()
    /// The side this peer reads from can take more (or no more) bytes.
    func tunnelWritabilityChanged(_ writable: Bool)
}

/// Delivers a connection's raw bytes, its close and its writability to a tunnel peer.
public final class RawTunnelHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    let peer: any RawTunnelPeer
    private var context: ChannelHandlerContext?

    public init(peer: any RawTunnelPeer) { self.peer = peer }

    public func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    public func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    public var channel: (any Channel)? { context?.channel }

    /// Writes from this handler's place towards the socket: only the handlers before it (none
    /// of HTTP's once the tunnel is up) see the bytes.
    public func send(_ bytes: ByteBuffer, flush: Bool = true) {
        guard let context else { return }
        if flush { context.writeAndFlush(NIOAny(bytes), promise: nil) } else { context.write(NIOAny(bytes), promise: nil) }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        peer.tunnelBytes(unwrapInboundIn(data))
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        peer.tunnelWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        peer.tunnelClosed()
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
