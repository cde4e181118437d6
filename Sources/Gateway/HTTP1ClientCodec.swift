import EpollTransport
import HTTPIngress
import NIOCore
import NIOHTTP1
import SwitchyardCore

/// HTTP/1.1 on a connection to an upstream instance, as bytes: writes the gateway's request
/// parts and parses the answers into response parts; an answer's fields stay bytes (`answer`:
/// those passed on, without the hop-by-hop ones, and what those held). One handler in place of NIO's request
/// encoder, response decoder and header validator (the request heads come from parsed
/// requests and validated config).
///
/// Interim answers (1xx other than 101) are skipped. A 101 ends parsing: the bytes after it
/// belong to the tunnel and are handed on when this handler is removed. An answer without a
/// length ends when the connection closes. A malformed answer is reported as an
/// `HTTP1Message.Malformed` error, and nothing more is read.
final class HTTP1ClientCodec: ChannelDuplexHandler, RemovableChannelHandler, DirectCodec {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = IOData

    static let maxHeadBytes = HTTP1Message.maxHeadBytes

    private var inbound = HTTP1Message.Inbound.head
    private var received: ByteBuffer?
    /// Methods of requests sent and not yet answered (HEAD answers have no body).
    private var methods: [HTTPMethod] = []
    /// How many of `methods` were answered (the list empties, keeping its storage, once all were).
    private var answered = 0
    private var writer = HTTP1Message.Writer()
    /// The `host` every request on this connection carries: the instance's address (the
    /// request heads themselves carry none).
    private let host: String?
    /// The last answer's fields, as bytes (its head's header list is empty).
    private(set) var answer = Answer()
    /// The head each answer is parsed into: its storage is reused when nothing holds the last
    /// answer's head any more (no allocation per answer).
    private var headBox = HTTPResponseHead(version: .http1_1, status: .ok)

    /// An answer's fields as they go on to the client: the lines of those that are not
    /// hop-by-hop, and what the section held (its framing, what the hop-by-hop ones said).
    struct Answer {
        /// Field lines, each with its CR LF, as they came.
        var fieldLines = ByteBuffer()
        var section = HTTP1Message.FieldSection()

        /// The fields as a header list (for answers that are changed on the way, or upgrades).
        var headers: HTTPHeaders { HTTP1Message.headers(lines: fieldLines) }
    }

    /// A request head whose field lines are bytes already (`GatewayResponder.upstreamLines`):
    /// written after the request line and the instance's Host as they are.
    struct RequestLines {
        var method: HTTPMethod
        var uri: String
        /// Field lines, each with its CR LF; no Host, no transfer coding.
        var fields: ByteBuffer
        /// The lines hold a `content-length`.
        var length: Bool
    }

    /// The upstream handler right behind this codec: answer parts go to it by a direct call,
    /// not through the pipeline (no boxing and type check per part). Set and cleared by it.
    var receiver: UpstreamHandler?
    private var context: ChannelHandlerContext?
    var flushQueued = false
    var flushContext: ChannelHandlerContext? { context }
    var flushBatch: FlushBatch?

    init(host: String? = nil) { self.host = host }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        receiver = nil
        leaveConnection()
    }

    var direct: DirectConnection? {
        get { writer.direct }
        set { writer.direct = newValue }
    }

    /// A request part from the handler right behind, by a direct call (as `write` through the
    /// pipeline would have it); with `flush`, what is pending goes out.
    func send(_ part: HTTPClientRequestPart, flush: Bool) {
        guard let context else { return }
        write(part, context: context, promise: nil)
        if flush { self.flush(context: context) }
    }

    /// A request's head from field lines; framed as `frame` frames a head without a transfer
    /// coding: by its length, else chunked for methods that carry a body, else without one.
    func sendHead(_ request: RequestLines) {
        guard let context else { return }
        methods.append(request.method)
        let chunked = !request.length && Self.sendsBody(request.method)
        writer.chunked = chunked
        let lineBytes = requestLineBytes(request.method, uri: request.uri)
        writer.head(size: lineBytes + request.fields.readableBytes + 32, allocator: HTTP1Message.allocator) { out in
            writeRequestLine(request.method, uri: request.uri, http10: false, bytes: lineBytes, into: &out)
            out.writeImmutableBuffer(request.fields)
            if chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
        }
    }

    /// The bytes the request line and the instance's Host line take (an upper bound).
    private func requestLineBytes(_ method: HTTPMethod, uri: String) -> Int {
        method.rawValue.utf8.count + uri.utf8.count + (host?.utf8.count ?? 0) + 24
    }

    /// `METHOD uri HTTP/1.x`, then the instance's Host line: the same for both kinds of head.
    private func writeRequestLine(_ method: HTTPMethod, uri: String, http10: Bool, bytes: Int, into out: inout ByteBuffer) {
        out.write(capacity: bytes) { cursor in
            cursor.put(method.rawValue)
            cursor.put(UInt8(ascii: " "))
            cursor.put(uri)
            cursor.put(http10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n")
            if let host {
                cursor.put("host: ")
                cursor.put(host)
                cursor.put("\r\n")
            }
        }
    }

    /// Methods whose requests carry a body: one without a length goes chunked (as NIO's encoder has it).
    private static func sendsBody(_ method: HTTPMethod) -> Bool {
        // (A pattern match: `==` on HTTPMethod copies both sides, once per request.)
        switch method {
        case .POST, .PUT, .PATCH: true
        default: false
        }
    }

    func flushPending() {
        guard let context else { return }
        flush(context: context)
    }

    private func deliver(_ part: HTTPClientResponsePart, context: ChannelHandlerContext) {
        if let receiver {
            receiver.receive(part)
        } else {
            context.fireChannelRead(wrapInboundOut(part))
        }
    }

    // MARK: - Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        write(unwrapOutboundIn(data), context: context, promise: promise)
    }

    private func write(_ part: HTTPClientRequestPart, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch part {
        case .head(var head):
            methods.append(head.method)
            frame(&head)
            let lineBytes = requestLineBytes(head.method, uri: head.uri)
            writer.head(head.headers, allocator: HTTP1Message.allocator, lineBytes: lineBytes) { out in
                writeRequestLine(head.method, uri: head.uri, http10: head.version.minor == 0, bytes: lineBytes, into: &out)
            }
            if promise != nil { writer.writePending(context: context, promise: promise) }
        case .body(let body):
            writer.body(body, context: context, promise: promise)
        case .end(let trailers):
            writer.end(trailers, context: context, promise: promise)
        }
    }

    /// What is pending goes out when the event loop's batch of socket events is done (see
    /// `FlushBatch`), or at once when a close comes first.
    func flush(context: ChannelHandlerContext) {
        writer.writePending(context: context, promise: nil)
        flushWritten(context: context)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        flushBeforeClose(context: context)
        context.close(mode: mode, promise: promise)
    }

    /// Framing as NIO's encoder does it: a length when known; else chunked for methods that
    /// carry a body (POST, PUT, PATCH) or when the head says chunked; else no body.
    private func frame(_ head: inout HTTPRequestHead) {
        let (length, transferEncoding) = HTTP1Message.framing(of: head.headers)
        if length {
            if transferEncoding != nil { head.headers.remove(name: "transfer-encoding") }
            writer.chunked = false
        } else if Self.sendsBody(head.method) {
            head.headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
            writer.chunked = true
        } else {
            writer.chunked = transferEncoding.map { HTTP1Syntax.name($0, is: "chunked") } ?? false
        }
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        take(unwrapInboundIn(data), context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        received.compact()
        // (To the upstream handler by a direct call: it is the pipeline's last handler.)
        if let receiver { receiver.readComplete() } else { context.fireChannelReadComplete() }
    }

    func directReadRequested() { direct?.read() }

    func take(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        var bytes = bytes
        if case .failed = inbound { return }
        received.append(read: &bytes)
        parse(context: context)
    }

    private func parse(context: ChannelHandlerContext) {
        while received != nil {
            switch inbound {
            case .failed, .upgraded:
                return
            case .head:
                guard received!.readableBytes > 0 else { return }
                guard let length = HTTP1Syntax.headLength(received!) else {
                    if received!.readableBytes > Self.maxHeadBytes { fail("answer head larger than 64 KiB", context: context) }
                    return
                }
                guard length <= Self.maxHeadBytes else { return fail("answer head larger than 64 KiB", context: context) }
                guard answered < methods.count else { return fail("an answer to no request", context: context) }
                // The last answer's lines are written by now: their buffer takes this one's (no
                // allocation per answer unless something still holds it).
                var lines: ByteBuffer? = answer.fieldLines
                answer.fieldLines = ByteBuffer()
                lines!.clear(minimumCapacity: length)
                // (Parsed into a local and moved in once framed: read back from the class, the
                // section was copied, each of its strings retained and released.)
                var section = HTTP1Message.FieldSection()
                let malformed = received!.withUnsafeReadableBytes {
                    Self.parseHead(UnsafeRawBufferPointer(rebasing: $0[..<length]), keptLines: &lines, section: &section, into: &headBox)
                }
                received!.moveReaderIndex(forwardBy: length)
                if let malformed { return fail(malformed.description, context: context) }
                let head = headBox
                let code = head.status.code
                if code >= 100 && code < 200 && code != 101 { continue }  // interim: the real answer follows
                let method = methods[answered]
                answered += 1
                if answered == methods.count {
                    methods.removeAll(keepingCapacity: true)
                    answered = 0
                }
                let body: HTTP1Message.BodyReader
                switch Self.bodyFraming(section, status: code, method: method) {
                case .failure(let malformed): return fail(malformed.description, context: context)
                case .success(let b): body = b
                }
                answer.section = consume section
                answer.fieldLines = lines ?? ByteBuffer()
                deliver(.head(head), context: context)
                if code == 101 {
                    inbound = .upgraded
                    deliver(.end(nil), context: context)
                } else {
                    inbound = .body(body)
                }
            case .body(var reader):
                let event: HTTP1Message.BodyReader.Event?
                do {
                    event = try reader.next(&received!)
                } catch {
                    return fail(error.description, context: context)
                }
                inbound = .body(reader)
                switch event {
                case nil: return
                case .body(let chunk): deliver(.body(chunk), context: context)
                case .end(let trailers):
                    inbound = .head
                    deliver(.end(trailers), context: context)
                }
            }
        }
    }

    /// `HTTP/1.x NNN reason` and the header fields: those passed on are copied to `keptLines`,
    /// what frames the body and what the hop-by-hop ones said go into `section` (a fresh one),
    /// and the head's own header list stays empty. Nil when well-formed.
    /// (In place, not returned: a section returned in a `Result` was copied twice per answer.)
    static func parseHead(
        _ raw: UnsafeRawBufferPointer,
        keptLines: inout ByteBuffer?,
        section: inout HTTP1Message.FieldSection,
        into head: inout HTTPResponseHead
    ) -> HTTP1Message.Malformed? {
        guard let lineEnd = HTTP1Syntax.lineLength(raw) else { return .init("no status line") }
        let line = UnsafeRawBufferPointer(rebasing: raw[..<lineEnd])
        guard let (code, reasonStart) = HTTP1Syntax.statusLine(line), line[7] == UInt8(ascii: "0") || line[7] == UInt8(ascii: "1") else {
            return .init("malformed status line \"\(String(decoding: line.prefix(64), as: UTF8.self))\"")
        }
        if let malformed = HTTP1Message.fieldSection(
            UnsafeRawBufferPointer(rebasing: raw[(lineEnd + 2)..<(raw.count - 2)]),
            keptLines: &keptLines,
            into: &section
        ) {
            return malformed
        }
        head.version = line[7] == UInt8(ascii: "0") ? .http1_0 : .http1_1
        // (A code NIO knows keeps its own phrase, as NIO's initializer has it; the usual answer,
        // which says that phrase, is compared as bytes and makes no String.)
        let reason = UnsafeRawBufferPointer(rebasing: line[reasonStart...])
        let standard = HTTPResponseStatus(statusCode: code)
        if standard.reasonPhrase.utf8.elementsEqual(reason) {
            head.status = standard
        } else {
            head.status = HTTPResponseStatus(statusCode: code, reasonPhrase: String(decoding: reason, as: UTF8.self))
        }
        return nil
    }

    /// How an answer's body is framed (RFC 9112 §6.3).
    static func bodyFraming(
        _ section: HTTP1Message.FieldSection,
        status code: UInt,
        method: HTTPMethod
    ) -> Result<HTTP1Message.BodyReader, HTTP1Message.Malformed> {
        if case .HEAD = method { return .success(.length(0)) }
        if code == 204 || code == 304 || code == 101 { return .success(.length(0)) }
        if let codings = section.transferEncoding {
            guard section.contentLength == nil else { return .failure(.init("both content-length and transfer-encoding")) }
            switch section.isChunked() {
            case .success: return .success(.chunked)
            case .failure(let malformed): return .failure(malformed)
            case nil: return .failure(.init("unsupported transfer-encoding \"\(codings)\""))
            }
        }
        if let length = section.contentLength { return .success(.length(length)) }
        return .success(.untilClose)
    }

    private func fail(_ message: String, context: ChannelHandlerContext) {
        inbound = .failed
        received = nil
        context.fireErrorCaught(HTTP1Message.Malformed("invalid HTTP answer: \(message)"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        // An answer delimited by the connection's close is complete now.
        if case .body(let reader) = inbound, reader.isUntilClose {
            inbound = .head
            deliver(.end(nil), context: context)
        }
        context.fireChannelInactive()
    }

    /// Leaving (the connection becomes a tunnel after a 101): the bytes after the answer go to
    /// the handler after this one.
    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        writer.writePending(context: context, promise: nil)
        context.flush()  // (nothing is left for a batch's flush, which finds the codec gone)
        received.handOver(context: context)
        context.leavePipeline(removalToken: removalToken)
    }
}
