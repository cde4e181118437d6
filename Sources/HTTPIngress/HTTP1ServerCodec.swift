import EpollTransport
import NIOCore
import NIOHTTP1
import SwitchyardCore

/// HTTP/1.1 on a server connection, as bytes: parses requests into parts for the request
/// handler and writes its response parts as bytes. One handler in place of NIO's decoder,
/// pipelining handler, protocol error handler and response encoder: each request part
/// crosses one handler instead of five, header bytes become Strings once, a response's head,
/// small body and end go out as one buffer, and reading goes on while a request is answered
/// (NIO's pipelining handler stopped and restarted reading for every request: two `epoll_ctl`
/// per request).
///
/// Requests are handed on one at a time: the next request's head is parsed only once the
/// answer to the previous one has ended (pipelined bytes wait here, up to 64 KiB, then reading
/// pauses) — unless the handler, having received a whole request it answers in one piece,
/// allows reading ahead (`allowReadAhead`) and the next head passes `readsAheadOf`: pipelined
/// messages then wait for the journal together instead of one commit after another. The
/// handler writes the answers in request order.
///
/// After a request with an `Upgrade` header nothing more is parsed: the bytes that follow
/// belong to whatever the connection becomes, and are passed on when this handler is removed
/// (a WebSocket tunnel) or dropped with the connection.
///
/// Malformed input is answered here with a JSON error and `connection: close` (400; 414 or
/// 431 for a request line or head over 64 KiB; 417 for an expectation other than
/// `100-continue`; 501 for a transfer coding other than chunked; 505 for an HTTP version other
/// than 1.0 and 1.1), then the connection closes: a connection whose framing cannot be trusted
/// is never read further (request smuggling).
///
/// `Expect: 100-continue` (HTTP/1.1, a body to come): `100 Continue` goes out once the head
/// was handed on, unless the handler has already begun its answer (a refusal: the client then
/// need not send the body) or the body has begun to arrive. Clients such as curl otherwise wait
/// a second before they send a large body.
final class HTTP1ServerCodec: ChannelDuplexHandler, RemovableChannelHandler, DirectCodec {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = IOData

    /// The most a request head (request line and headers) may take.
    static let maxHeadBytes = HTTP1Message.maxHeadBytes
    /// The most requests read ahead of their answers on one connection: a client that pipelines
    /// without reading its answers holds at most this many (and 64 KiB of bytes) in memory.
    static let maxUnanswered = 32

    private var inbound = HTTP1Message.Inbound.head
    /// Received bytes not yet parsed.
    private var received: ByteBuffer?
    /// The current request carries `Upgrade`: parsing stops after it.
    private var upgrade = false
    /// The current request waits for `100 Continue` before it sends its body.
    private var expectsContinue = false
    /// The methods of the requests handed on whose answers have not ended, oldest first (the
    /// first is the one being answered: HEAD answers carry no body).
    private var unanswered = CircularBuffer<HTTPMethod>(initialCapacity: 2)
    /// The handler received the last request whole and lets the next one through before its
    /// answer (see `allowReadAhead`).
    private var readAheadAllowed = false
    /// Which request heads may be read ahead (those the handler answers in one piece).
    private let readsAheadOf: (@Sendable (HTTPRequestHead) -> Bool)?
    /// Malformed input found while earlier answers are still to come: written after them, once
    /// `unanswered` is down to this many (the malformed request itself, if it was handed on).
    private var deferredRefusal: (refusal: Refusal, after: Int)?
    /// Inside the parse loop (an answer ending synchronously re-enters through `write`).
    private var parsing = false
    private var inRead = false
    /// Request parts handed on so far (to tell whether a parse handed on anything).
    private var handedOn = 0
    private var readHeld = false

    /// The answer being written: the request's method (HEAD answers carry no body), whether its
    /// (final) head went out (too late then to answer with an error), and its bytes.
    private var answerHeadWritten = false
    private var writer = HTTP1Message.Writer()

    /// This handler's place in the pipeline (for `allowReadAhead` and `send`, called by the
    /// handler after it).
    private var context: ChannelHandlerContext?
    var flushQueued = false
    var flushContext: ChannelHandlerContext? { context }
    var flushBatch: FlushBatch?
    /// The request handler right behind this codec: request parts go to it by a direct call,
    /// not through the pipeline (no boxing and type check per part). Set and cleared by it.
    var receiver: RequestHandler?
    /// While a request's head is handed on: its field lines as they came, each with its CR LF
    /// (checked; a view of the received bytes, so only for use during the hand-on). A proxy
    /// passes them on as bytes.
    private(set) var requestFieldLines: ByteBuffer?
    /// The head each request is parsed into: its storage is reused when nothing holds the
    /// last request's head any more (no allocation per request), copied on write when something does.
    private var headBox = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
    /// The header list each request's fields are parsed into: the last one's storage, reused
    /// when nothing holds that request's head any more (no allocation per request).
    private var fields: [(String, String)] = []

    init(readsAheadOf: (@Sendable (HTTPRequestHead) -> Bool)? = nil) {
        self.readsAheadOf = readsAheadOf
    }

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

    /// The handler received the current request whole and will answer it in one piece, in
    /// order: the next request may be handed on before that answer, if its head passes
    /// `readsAheadOf`.
    func allowReadAhead() {
        guard readsAheadOf != nil, case .head = inbound, let context else { return }
        readAheadAllowed = true
        guard !parsing else { return }  // the parse loop that handed on the request goes on
        let before = handedOn
        parse(context: context)
        if handedOn != before && !inRead { readComplete(context) }
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        take(unwrapInboundIn(data), context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        received.compact()
        readComplete(context)
    }

    /// The read burst is over: told to the request handler by a direct call (it is the
    /// pipeline's last handler, so nothing after it would hear of it), else through the pipeline.
    private func readComplete(_ context: ChannelHandlerContext) {
        if let receiver { receiver.readComplete() } else { context.fireChannelReadComplete() }
    }

    func directReadRequested() {
        if holdsReads { readHeld = true } else { direct?.read() }
    }

    func take(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        var bytes = bytes
        if case .failed = inbound { return }
        received.append(read: &bytes)
        inRead = true
        parse(context: context)
        inRead = false
    }

    /// Hands on what the received bytes complete, as far as the current answer allows.
    private func parse(context: ChannelHandlerContext) {
        guard !parsing else { return }
        parsing = true
        defer { parsing = false }
        while received != nil {
            switch inbound {
            case .failed, .upgraded:
                return
            case .head:
                guard unanswered.isEmpty || (readAheadAllowed && unanswered.count < Self.maxUnanswered), received!.readableBytes > 0,
                    let (head, body) = readHead(context: context, ahead: !unanswered.isEmpty)
                else { return }
                readAheadAllowed = false
                unanswered.append(head.method)
                inbound = .body(body)
                handOn(context, .head(head))
                requestFieldLines = nil
                // The only request unanswered and no final head yet: the handler wants the body.
                // (Behind earlier answers a 100 would come out of order: none then.)
                if expectsContinue && unanswered.count == 1 && !answerHeadWritten && received!.readableBytes == 0 {
                    writer.writePending(context: context, promise: nil)
                    context.writeAndFlush(wrapOutboundOut(.byteBuffer(ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n"))), promise: nil)
                }
                expectsContinue = false
            case .body(var reader):
                let event: HTTP1Message.BodyReader.Event?
                do {
                    event = try reader.next(&received!)
                } catch {
                    return refuse(.badRequest, error.description, context: context)
                }
                inbound = .body(reader)
                switch event {
                case nil: return
                case .body(let chunk): handOn(context, .body(chunk))
                case .end(let trailers):
                    inbound = upgrade ? .upgraded : .head
                    handOn(context, .end(trailers))
                }
            }
        }
    }

    private func handOn(_ context: ChannelHandlerContext, _ part: HTTPServerRequestPart) {
        handedOn &+= 1
        if let receiver {
            receiver.receive(part)
        } else {
            context.fireChannelRead(wrapInboundOut(part))
        }
    }

    /// Reads and checks a whole request head and how its body is framed; nil when it has not
    /// fully arrived, was refused, or (`ahead`: earlier answers are still to come) may not be
    /// read ahead (it is left for when they have been written).
    private func readHead(context: ChannelHandlerContext, ahead: Bool) -> (HTTPRequestHead, HTTP1Message.BodyReader)? {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        while received!.readableBytes >= 2, received!.getInteger(at: received!.readerIndex, as: UInt16.self) == 0x0D0A {
            received!.moveReaderIndex(forwardBy: 2)
        }
        guard let length = HTTP1Syntax.headLength(received!) else {
            if received!.readableBytes > Self.maxHeadBytes { refuseOversizedHead(context: context) }
            return nil
        }
        guard length <= Self.maxHeadBytes else {
            refuseOversizedHead(context: context)
            return nil
        }
        let parsed = received!.withUnsafeReadableBytes {
            Self.parseHead(UnsafeRawBufferPointer(rebasing: $0[..<length]), into: &headBox, fields: &fields)
        }
        // (A view of the head's bytes: its field lines are offered to the handler as they came.)
        let headBytes = received!.readSlice(length: length)!
        switch parsed {
        case .failure(let refusal):
            refuse(refusal.status, refusal.message, context: context)
            return nil
        case .success(let parsed):
            if ahead, parsed.upgrade || !(readsAheadOf?(headBox) ?? false) {
                // Not one to read ahead: it waits (and with it reading, past 64 KiB) until the
                // earlier answers have been written.
                received!.moveReaderIndex(to: received!.readerIndex - length)
                readAheadAllowed = false
                return nil
            }
            upgrade = parsed.upgrade
            expectsContinue = parsed.expectsContinue
            requestFieldLines = headBytes.getSlice(at: headBytes.readerIndex + parsed.fieldsStart, length: length - parsed.fieldsStart - 2)
            return (headBox, parsed.body)
        }
    }

    private func refuseOversizedHead(context: ChannelHandlerContext) {
        let line = received!.withUnsafeReadableBytes(HTTP1Syntax.lineLength)
        if let line, line <= Self.maxHeadBytes {
            refuse(.requestHeaderFieldsTooLarge, "the request head exceeds 64 KiB", context: context)
        } else {
            refuse(.uriTooLong, "the request line exceeds 64 KiB", context: context)
        }
    }

    struct Refusal: Error {
        var status: HTTPResponseStatus
        var message: String
    }

    struct ParsedHead {
        /// How its body is framed.
        var body: HTTP1Message.BodyReader
        var upgrade: Bool
        /// HTTP/1.1 with `Expect: 100-continue` and a body.
        var expectsContinue: Bool
        /// Where the field lines begin (after the request line's CR LF).
        var fieldsStart: Int
    }

    /// A request head (`raw` ends with the blank line), its method, target, version and fields
    /// set in `head`; the fields are parsed into `fields`'s storage (and kept there too).
    static func parseHead(
        _ raw: UnsafeRawBufferPointer,
        into head: inout HTTPRequestHead,
        fields: inout [(String, String)]
    ) -> Result<ParsedHead, Refusal> {
        func bad(_ message: String) -> Result<ParsedHead, Refusal> {
            .failure(Refusal(status: .badRequest, message: message))
        }
        guard let lineEnd = HTTP1Syntax.lineLength(raw) else { return bad("no request line") }
        let line = UnsafeRawBufferPointer(rebasing: raw[..<lineEnd])
        // method SP request-target SP HTTP-version
        var i = 0
        while i < line.count && HTTP1Syntax.isTokenByte(line[i]) { i += 1 }
        guard i > 0, i < line.count, line[i] == 0x20 else { return bad("malformed request line") }
        let methodBytes = UnsafeRawBufferPointer(rebasing: line[..<i])
        let targetStart = i + 1
        var j = targetStart
        while j < line.count && line[j] > 0x20 && line[j] < 0x7F { j += 1 }
        guard j > targetStart, j < line.count, line[j] == 0x20 else { return bad("malformed request target") }
        let version = UnsafeRawBufferPointer(rebasing: line[(j + 1)...])
        let httpVersion: HTTPVersion
        if HTTP1Syntax.bytes(version, are: "HTTP/1.1") {
            httpVersion = .http1_1
        } else if HTTP1Syntax.bytes(version, are: "HTTP/1.0") {
            httpVersion = .http1_0
        } else if version.count == 8, version.starts(with: "HTTP/".utf8) {
            return .failure(
                Refusal(status: .httpVersionNotSupported, message: "only HTTP/1.1 and HTTP/1.0 are spoken here (HTTP/2 with TLS or prior knowledge)")
            )
        } else {
            return bad("malformed HTTP version")
        }
        let method = Self.method(methodBytes)
        let uri = String(decoding: UnsafeRawBufferPointer(rebasing: line[targetStart..<j]), as: UTF8.self)
        // The last request's list is let go of first: `fields` is then this codec's alone again
        // (unless a handler still holds that request's head), and filled in place.
        head.headers = HTTPHeaders()
        var section = HTTP1Message.FieldSection()
        swap(&section.fields, &fields)
        section.fields.removeAll(keepingCapacity: true)
        var none: ByteBuffer?
        if let malformed = HTTP1Message.fieldSection(
            UnsafeRawBufferPointer(rebasing: raw[(lineEnd + 2)..<(raw.count - 2)]),
            keptLines: &none,
            into: &section
        ) {
            return bad(malformed.description)
        }
        fields = section.fields
        var body = HTTP1Message.BodyReader.length(section.contentLength ?? 0)
        if let transferEncoding = section.transferEncoding {
            guard section.contentLength == nil else { return bad("both content-length and transfer-encoding (request smuggling)") }
            guard httpVersion == .http1_1 else { return bad("transfer-encoding in an HTTP/1.0 request") }
            switch section.isChunked() {
            case .failure(let malformed): return bad(malformed.description)
            case nil:
                return .failure(Refusal(status: .notImplemented, message: "transfer coding \"\(transferEncoding)\" is not supported (only chunked)"))
            case .success: body = .chunked
            }
        }
        // An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1).
        var expectsContinue = false
        if let expect = section.expect, httpVersion == .http1_1 {
            guard expect == "100-continue" else {
                return .failure(Refusal(status: .expectationFailed, message: "expectation \"\(expect)\" is not supported (only 100-continue)"))
            }
            expectsContinue = body.expectsContent
        }
        head.version = httpVersion
        head.method = method
        head.uri = uri
        head.headers = HTTPHeaders(section.fields)
        return .success(ParsedHead(body: body, upgrade: section.upgrade, expectsContinue: expectsContinue, fieldsStart: lineEnd + 2))
    }

    static func method(_ bytes: UnsafeRawBufferPointer) -> HTTPMethod {
        if HTTP1Syntax.bytes(bytes, are: "GET") { return .GET }
        if HTTP1Syntax.bytes(bytes, are: "POST") { return .POST }
        return HTTPMethod(rawValue: String(decoding: bytes, as: UTF8.self))
    }

    /// Malformed input: answered with `status` unless the answer to the request it is part of
    /// (a malformed body) has begun, then the connection closes; nothing after it is read, and
    /// the handler's answer, if it comes, is dropped.
    private func refuse(_ status: HTTPResponseStatus, _ message: String, context: ChannelHandlerContext) {
        // A malformed body belongs to the last request handed on (no answer comes for it);
        // a malformed head to one not handed on.
        let own = { if case .body = self.inbound { return 1 } else { return 0 } }()
        inbound = .failed
        received = nil
        if unanswered.count > own {
            // Earlier requests' answers come first (the handler writes them in order).
            deferredRefusal = (Refusal(status: status, message: message), own)
            return
        }
        writeRefusal(status, message, context: context)
    }

    private func writeRefusal(_ status: HTTPResponseStatus, _ message: String, context: ChannelHandlerContext) {
        deferredRefusal = nil
        guard !answerHeadWritten else {
            context.close(promise: nil)
            return
        }
        let code: String
        switch status.code {
        case 414: code = "uri_too_long"
        case 417: code = "expectation_failed"
        case 431: code = "header_too_large"
        case 501: code = "not_implemented"
        case 505: code = "http_version_not_supported"
        default: code = "bad_request"
        }
        var answer = OutgoingResponse.error(status, code, "malformed HTTP request: " + message, headers: ["connection": "close"])
        answer.headers.add(name: "content-length", value: String(answer.body.readableBytes))
        let direct = writer.direct  // (kept: the codec stays attached to its connection)
        writer = HTTP1Message.Writer()
        writer.direct = direct
        writer.head(answer.headers, allocator: HTTP1Message.allocator) {
            Self.writeStatusLine(.http1_1, status, into: &$0)
        }
        writer.body(.byteBuffer(answer.body), context: context, promise: nil)
        let written = context.eventLoop.makePromise(of: Void.self)
        writer.end(nil, context: context, promise: written)
        context.flush()
        let channel = context.channel
        written.futureResult.whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: - Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        write(unwrapOutboundIn(data), context: context, promise: promise)
    }

    /// A part of the answer from the request handler right behind, by a direct call (as `write`
    /// through the pipeline would have it); with `flush`, what is pending goes out.
    func send(_ part: HTTPServerResponsePart, flush: Bool, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        write(part, context: context, promise: promise)
        if flush { self.flush(context: context) }
    }

    /// (A pattern match: `==` on HTTPMethod copies both sides, once per answer.)
    private static func isHEAD(_ method: HTTPMethod?) -> Bool {
        if case .HEAD = method { true } else { false }
    }

    /// An answer's head whose fields are lines of bytes already (a proxied answer's, see
    /// `HTTPResponseWriter.head(_:fieldLines:length:transferEncoding:)`), framed as `frame`
    /// frames a head: chunked when the lines hold neither a length nor a transfer coding.
    func sendHead(_ status: HTTPResponseStatus, fieldLines: ByteBuffer, length: Bool, transferEncoding: Bool, close: Bool) {
        guard let context else { return }
        if case .failed = inbound, deferredRefusal == nil { return }  // answered already (malformed input)
        answerHeadWritten = true
        writer.suppressBody = Self.isHEAD(unanswered.first)
        writer.chunked = !length && !writer.suppressBody
        let size = 64 + status.reasonPhrase.utf8.count + fieldLines.readableBytes
        writer.head(size: size, allocator: HTTP1Message.allocator) { out in
            Self.writeStatusLine(.http1_1, status, into: &out)
            out.writeImmutableBuffer(fieldLines)
            if !length && !transferEncoding { out.writeStaticString("transfer-encoding: chunked\r\n") }
            if close { out.writeStaticString("connection: close\r\n") }
        }
    }

    /// What the handler right behind wrote goes out (as `flush` through the pipeline).
    func flushPending() {
        guard let context else { return }
        flush(context: context)
    }

    private func write(_ part: HTTPServerResponsePart, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        if case .failed = inbound, deferredRefusal == nil {
            // Malformed input was answered (or the connection cut): the handler's answer is dropped.
            promise?.fail(ChannelError.outputClosed)
            return
        }
        switch part {
        case .head(var head):
            if head.status.code >= 200 || head.status.code == 101 { answerHeadWritten = true }
            frame(&head)
            writer.head(head.headers, allocator: HTTP1Message.allocator) { Self.writeStatusLine(head.version, head.status, into: &$0) }
            if promise != nil { writer.writePending(context: context, promise: promise) }
        case .body(let body):
            writer.body(body, context: context, promise: promise)
        case .end(let trailers):
            writer.end(trailers, context: context, promise: promise)
            answerEnded(context: context)
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

    /// Framing as NIO's encoder does it: no body for 1xx, 204 and 304 (nor for HEAD, whose head
    /// still says what a GET would get); else content-length, or chunked when the length is
    /// not known (HTTP/1.1).
    private func frame(_ head: inout HTTPResponseHead) {
        writer.suppressBody = Self.isHEAD(unanswered.first)
        let (length, transferEncoding) = HTTP1Message.framing(of: head.headers)
        if !head.status.mayHaveResponseBody {
            if length { head.headers.remove(name: "content-length") }
            if transferEncoding != nil { head.headers.remove(name: "transfer-encoding") }
            writer.chunked = false
        } else if length {
            if transferEncoding != nil { head.headers.remove(name: "transfer-encoding") }
            writer.chunked = false
        } else if head.version.major == 1 && head.version.minor >= 1 {
            head.headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
            writer.chunked = !writer.suppressBody
        } else {
            writer.chunked = false
        }
    }

    /// (From the version and status, not a head: making a head allocates.)
    static func writeStatusLine(_ version: HTTPVersion, _ status: HTTPResponseStatus, into out: inout ByteBuffer) {
        let code = status.code
        let digits = code >= 100 && code <= 999 ? nil : String(code)
        let reason = status.reasonPhrase
        out.write(capacity: 16 + (digits?.utf8.count ?? 3) + reason.utf8.count) { cursor in
            cursor.put(version.minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
            if let digits {
                cursor.put(digits)
            } else {
                cursor.put(UInt8(truncatingIfNeeded: 0x30 + code / 100))
                cursor.put(UInt8(truncatingIfNeeded: 0x30 + code / 10 % 10))
                cursor.put(UInt8(truncatingIfNeeded: 0x30 + code % 10))
            }
            cursor.put(UInt8(ascii: " "))
            cursor.put(reason)
            cursor.put("\r\n")
        }
    }

    /// An answer is complete: the next pipelined request may go on.
    private func answerEnded(context: ChannelHandlerContext) {
        if !unanswered.isEmpty { unanswered.removeFirst() }
        answerHeadWritten = false
        if let (refusal, after) = deferredRefusal {
            if unanswered.count <= after { writeRefusal(refusal.status, refusal.message, context: context) }
            return
        }
        guard !parsing else { return }  // the parse loop that handed on the request goes on
        let before = handedOn
        parse(context: context)
        if handedOn != before && !inRead {
            // Handed on outside a read: the handler sees the end of this burst now (it flushes
            // the answers of a burst then).
            context.fireChannelReadComplete()
        }
        if readHeld && !holdsReads {
            readHeld = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if holdsReads {
            readHeld = true
            return
        }
        context.read()
    }

    /// 64 KiB or more wait unparsed behind an answer (or after an upgrade request): reading
    /// pauses until they are taken.
    private var holdsReads: Bool {
        guard let held = received?.readableBytes, held >= Self.maxHeadBytes else { return false }
        switch inbound {
        case .upgraded: return true
        case .head: return !unanswered.isEmpty && (!readAheadAllowed || unanswered.count >= Self.maxUnanswered)
        case .body, .failed: return false
        }
    }

    /// Leaving (the connection becomes a tunnel): bytes that arrived after the upgrade request
    /// go to the handler after this one.
    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        writer.writePending(context: context, promise: nil)
        context.flush()  // (nothing is left for a batch's flush, which finds the codec gone)
        received.handOver(context: context)
        if readHeld {
            readHeld = false
            context.read()
        }
        context.leavePipeline(removalToken: removalToken)
    }
}
