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
/// pauses). After a request with an `Upgrade` header nothing more is parsed: the bytes that
/// follow belong to whatever the connection becomes, and are passed on when this handler is
/// removed (a WebSocket tunnel) or dropped with the connection.
///
/// Malformed input is answered here with a JSON error and `connection: close` (400; 414 or
/// 431 for a request line or head over 64 KiB; 501 for a transfer coding other than chunked;
/// 505 for an HTTP version other than 1.0 and 1.1), then the connection closes: a connection
/// whose framing cannot be trusted is never read further (request smuggling).
final class HTTP1ServerCodec: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = IOData

    /// The most a request head (request line, headers) or a chunked body's trailers may take.
    static let maxHeadBytes = 64 * 1024
    static let maxChunkLineBytes = 1024
    /// Body bytes of a response up to this size are copied behind its head (one buffer, one iovec).
    static let coalesceBytes = 4096

    private enum Inbound {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        /// After an upgrade request: the bytes are no longer HTTP's to parse.
        case upgraded
        case failed
    }

    private var inbound = Inbound.head
    /// Received bytes not yet parsed.
    private var received: ByteBuffer?
    /// The current request carries `Upgrade`: parsing stops after it.
    private var upgrade = false
    private var trailers: [(String, String)] = []
    private var trailerBytes = 0
    /// A request was handed on and its answer has not ended: the next head waits.
    private var answering = false
    /// Inside the parse loop (an answer ending synchronously re-enters through `write`).
    private var parsing = false
    private var inRead = false
    /// Request parts handed on so far (to tell whether a parse handed on anything).
    private var handedOn = 0
    private var readHeld = false

    /// The answer being written: its method (HEAD answers carry no body), its framing, and
    /// bytes not yet handed to the channel (its head, a small body).
    private var requestMethod = HTTPMethod.GET
    private var chunked = false
    private var suppressBody = false
    private var pending: ByteBuffer?
    /// The answer's (final) head has been written: too late to answer with an error.
    private var answerHeadWritten = false
    /// The connection's input was malformed and answered (or cut): later answers are dropped.
    private var refused = false

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        switch inbound {
        case .failed: return
        default: break
        }
        if received == nil || received!.readableBytes == 0 {
            received = bytes
        } else {
            received!.writeBuffer(&bytes)
        }
        inRead = true
        parse(context: context)
        inRead = false
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let r = received, r.readableBytes == 0 {
            received = nil
        } else if let r = received, r.readerIndex > 16 * 1024 {
            received!.discardReadBytes()
        }
        context.fireChannelReadComplete()
    }

    /// Hands on what the received bytes complete, as far as the current answer allows.
    private func parse(context: ChannelHandlerContext) {
        guard !parsing else { return }
        parsing = true
        defer { parsing = false }
        while let available = received?.readableBytes {
            switch inbound {
            case .failed, .upgraded:
                return
            case .head:
                guard !answering, available > 0 else { return }
                guard let head = readHead(context: context) else { return }
                answering = true
                requestMethod = head.method
                handOn(context, .head(head))
                if endAfterHead {
                    endAfterHead = false
                    requestEnded(context: context, trailers: nil)
                }
            case .fixedBody(let remaining):
                guard available > 0 else { return }
                let n = min(remaining, available)
                let chunk = received!.readSlice(length: n)!
                inbound = remaining == n ? .head : .fixedBody(remaining: remaining - n)
                handOn(context, .body(chunk))
                if remaining == n { requestEnded(context: context, trailers: nil) }
            case .chunkSize:
                guard let length = received!.withUnsafeReadableBytes(HTTP1Syntax.lineLength) else {
                    if available > Self.maxChunkLineBytes { refuse(.badRequest, "chunk size line longer than 1 KiB", context: context) }
                    return
                }
                let size = received!.withUnsafeReadableBytes { HTTP1Syntax.chunkSize(UnsafeRawBufferPointer(rebasing: $0[..<length])) }
                received!.moveReaderIndex(forwardBy: length + 2)
                guard let size else { return refuse(.badRequest, "invalid chunk size", context: context) }
                inbound = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                guard available > 0 else { return }
                let n = min(remaining, available)
                let chunk = received!.readSlice(length: n)!
                inbound = remaining == n ? .chunkDataEnd : .chunkData(remaining: remaining - n)
                handOn(context, .body(chunk))
            case .chunkDataEnd:
                guard available >= 2 else { return }
                guard received!.readInteger(as: UInt16.self) == 0x0D0A else {
                    return refuse(.badRequest, "chunk data not followed by CR LF", context: context)
                }
                inbound = .chunkSize
            case .trailers:
                guard let length = received!.withUnsafeReadableBytes(HTTP1Syntax.lineLength) else {
                    if trailerBytes + available > Self.maxHeadBytes { refuse(.badRequest, "trailers larger than 64 KiB", context: context) }
                    return
                }
                trailerBytes += length + 2
                guard trailerBytes <= Self.maxHeadBytes else { return refuse(.badRequest, "trailers larger than 64 KiB", context: context) }
                if length == 0 {
                    received!.moveReaderIndex(forwardBy: 2)
                    inbound = .head
                    let fields = trailers
                    trailers = []
                    trailerBytes = 0
                    requestEnded(context: context, trailers: fields.isEmpty ? nil : HTTPHeaders(fields))
                    continue
                }
                let field = received!.withUnsafeReadableBytes { Self.field(UnsafeRawBufferPointer(rebasing: $0[..<length])) }
                received!.moveReaderIndex(forwardBy: length + 2)
                guard let field else { return refuse(.badRequest, "malformed trailer field", context: context) }
                trailers.append(field)
            }
        }
    }

    private func handOn(_ context: ChannelHandlerContext, _ part: HTTPServerRequestPart) {
        handedOn &+= 1
        context.fireChannelRead(wrapInboundOut(part))
    }

    private func requestEnded(context: ChannelHandlerContext, trailers: HTTPHeaders?) {
        if upgrade { inbound = .upgraded }
        handOn(context, .end(trailers))
    }

    /// Reads and checks a whole request head and chooses how its body is framed; nil when it
    /// has not fully arrived or was refused.
    private func readHead(context: ChannelHandlerContext) -> HTTPRequestHead? {
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
        let parsed = received!.withUnsafeReadableBytes { Self.parseHead(UnsafeRawBufferPointer(rebasing: $0[..<length])) }
        received!.moveReaderIndex(forwardBy: length)
        switch parsed {
        case .failure(let refusal):
            refuse(refusal.status, refusal.message, context: context)
            return nil
        case .success(let request):
            upgrade = request.upgrade
            if request.chunked {
                inbound = .chunkSize
            } else if request.length > 0 {
                inbound = .fixedBody(remaining: request.length)
            } else {
                // No body: the end follows the head at once.
                inbound = .head
                endAfterHead = true
            }
            return request.head
        }
    }

    /// Set by `readHead` for a request without a body: its end is handed on right after its head.
    private var endAfterHead = false

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
        var head: HTTPRequestHead
        var length = 0
        var chunked = false
        var upgrade = false
    }

    /// A request head (without its blank line's meaning: `raw` ends with CR LF CR LF).
    static func parseHead(_ raw: UnsafeRawBufferPointer) -> Result<ParsedHead, Refusal> {
        func bad(_ message: String) -> Result<ParsedHead, Refusal> { .failure(Refusal(status: .badRequest, message: message)) }
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
        if version.elementsEqual("HTTP/1.1".utf8) {
            httpVersion = .http1_1
        } else if version.elementsEqual("HTTP/1.0".utf8) {
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

        var fields: [(String, String)] = []
        fields.reserveCapacity(8)
        var parsed = ParsedHead(head: HTTPRequestHead(version: httpVersion, method: method, uri: uri))
        var length: Int?
        var transferEncoding: String?
        var position = lineEnd + 2
        let end = raw.count - 2  // the blank line
        while position < end {
            // Every line ends with CR LF: the head ends with two.
            let n = HTTP1Syntax.lineLength(UnsafeRawBufferPointer(rebasing: raw[position...]))!
            let fieldLine = UnsafeRawBufferPointer(rebasing: raw[position..<(position + n)])
            position += n + 2
            if let first = fieldLine.first, first == 0x20 || first == 0x09 { return bad("folded header line (obs-fold)") }
            guard let colon = fieldLine.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return bad("header line without a name and colon") }
            let name = UnsafeRawBufferPointer(rebasing: fieldLine[..<colon])
            guard name.allSatisfy(HTTP1Syntax.isTokenByte) else { return bad("malformed header name") }
            let value = HTTP1Syntax.trimmed(UnsafeRawBufferPointer(rebasing: fieldLine[(colon + 1)...]))
            guard value.allSatisfy(HTTP1Syntax.isFieldValueByte) else { return bad("control character in a header value") }
            if HTTP1Syntax.name(name, is: "content-length") {
                guard let n = HTTP1Syntax.decimal(value) else { return bad("invalid content-length") }
                guard length == nil else { return bad("more than one content-length") }
                length = n
            } else if HTTP1Syntax.name(name, is: "transfer-encoding") {
                let coding = String(decoding: value, as: UTF8.self).lowercased()
                transferEncoding = transferEncoding.map { $0 + ", " + coding } ?? coding
            } else if HTTP1Syntax.name(name, is: "upgrade") {
                parsed.upgrade = true
            }
            fields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        if let transferEncoding {
            guard length == nil else { return bad("both content-length and transfer-encoding (request smuggling)") }
            guard httpVersion == .http1_1 else { return bad("transfer-encoding in an HTTP/1.0 request") }
            let codings = transferEncoding.split(separator: ",").map { String($0.filter { $0 != " " && $0 != "\t" }) }
            guard codings.last == "chunked" else { return bad("transfer-encoding must end with chunked") }
            guard codings.count == 1 else {
                return .failure(Refusal(status: .notImplemented, message: "transfer coding \"\(transferEncoding)\" is not supported (only chunked)"))
            }
            parsed.chunked = true
        }
        parsed.length = length ?? 0
        parsed.head.headers = HTTPHeaders(fields)
        return .success(parsed)
    }

    /// `name: value` of a trailer field; nil when malformed.
    static func field(_ line: UnsafeRawBufferPointer) -> (String, String)? {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return nil }
        let name = UnsafeRawBufferPointer(rebasing: line[..<colon])
        let value = HTTP1Syntax.trimmed(UnsafeRawBufferPointer(rebasing: line[(colon + 1)...]))
        guard name.allSatisfy(HTTP1Syntax.isTokenByte), value.allSatisfy(HTTP1Syntax.isFieldValueByte) else { return nil }
        return (String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
    }

    static func method(_ bytes: UnsafeRawBufferPointer) -> HTTPMethod {
        if bytes.elementsEqual("GET".utf8) { return .GET }
        if bytes.elementsEqual("POST".utf8) { return .POST }
        return HTTPMethod(rawValue: String(decoding: bytes, as: UTF8.self))
    }

    /// Malformed input: answered with `status` unless the answer to the request it is part of
    /// (a malformed body) has begun, then the connection closes; nothing after it is read, and
    /// the handler's answer, if it comes, is dropped.
    private func refuse(_ status: HTTPResponseStatus, _ message: String, context: ChannelHandlerContext) {
        inbound = .failed
        received = nil
        let answerBegun = answerHeadWritten
        refused = true
        guard !answerBegun else {
            context.close(promise: nil)
            return
        }
        let code: String
        switch status.code {
        case 414: code = "uri_too_long"
        case 431: code = "header_too_large"
        case 501: code = "not_implemented"
        case 505: code = "http_version_not_supported"
        default: code = "bad_request"
        }
        let body = ByteBuffer(string: "{\"error\":\(JSONText.quote(code)),\"message\":\(JSONText.quote("malformed HTTP request: " + message))}")
        var out = context.channel.allocator.buffer(capacity: 160 + body.readableBytes)
        writeStatusLine(HTTPResponseHead(version: .http1_1, status: status), into: &out)
        out.writeStaticString("content-type: application/json\r\nconnection: close\r\ncontent-length: ")
        out.writeString(String(body.readableBytes))
        out.writeStaticString("\r\n\r\n")
        out.writeImmutableBuffer(body)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.byteBuffer(out))).whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: - Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !refused else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        switch unwrapOutboundIn(data) {
        case .head(var head):
            if head.status.code >= 200 || head.status.code == 101 { answerHeadWritten = true }
            writeHead(&head, context: context)
            if promise != nil { writePending(context: context, promise: promise) }
        case .body(let body):
            guard !suppressBody else {
                promise?.succeed(())
                return
            }
            writeBody(body, context: context, promise: promise)
        case .end(let trailers):
            if chunked {
                if pending == nil { pending = context.channel.allocator.buffer(capacity: 8) }
                if let trailers {
                    pending!.writeStaticString("0\r\n")
                    writeFields(trailers, into: &pending!)
                    pending!.writeStaticString("\r\n")
                } else {
                    pending!.writeStaticString("0\r\n\r\n")
                }
            }
            writePending(context: context, promise: promise)
            answerEnded(context: context)
        }
    }

    func flush(context: ChannelHandlerContext) {
        writePending(context: context, promise: nil)
        context.flush()
    }

    private func writeHead(_ head: inout HTTPResponseHead, context: ChannelHandlerContext) {
        // Framing as NIO's encoder does it: no body for 1xx, 204 and 304 (nor for HEAD, whose
        // head still says what a GET would get); else content-length, or chunked when the
        // length is not known (HTTP/1.1).
        suppressBody = requestMethod == .HEAD
        if !head.status.mayHaveResponseBody {
            head.headers.remove(name: "content-length")
            head.headers.remove(name: "transfer-encoding")
            chunked = false
        } else if head.headers.contains(name: "content-length") {
            head.headers.remove(name: "transfer-encoding")
            chunked = false
        } else if head.version.major == 1 && head.version.minor >= 1 {
            head.headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
            chunked = !suppressBody
        } else {
            chunked = false
        }
        var out = context.channel.allocator.buffer(capacity: 256)
        if let earlier = pending {
            // An interim answer not yet written.
            out.writeImmutableBuffer(earlier)
        }
        writeStatusLine(head, into: &out)
        writeFields(head.headers, into: &out)
        out.writeStaticString("\r\n")
        pending = out
    }

    private func writeStatusLine(_ head: HTTPResponseHead, into out: inout ByteBuffer) {
        out.writeStaticString("HTTP/1.")
        out.writeInteger(UInt8(ascii: head.version.minor == 0 ? "0" : "1"))
        out.writeInteger(UInt8(ascii: " "))
        out.writeString(String(head.status.code))
        out.writeInteger(UInt8(ascii: " "))
        out.writeString(head.status.reasonPhrase)
        out.writeStaticString("\r\n")
    }

    private func writeFields(_ headers: HTTPHeaders, into out: inout ByteBuffer) {
        for (name, value) in headers {
            out.writeString(name)
            out.writeStaticString(": ")
            out.writeString(value)
            out.writeStaticString("\r\n")
        }
    }

    private func writeBody(_ body: IOData, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        let size = body.readableBytes
        if chunked && size > 0 {
            if pending == nil { pending = context.channel.allocator.buffer(capacity: 24) }
            pending!.writeString(String(size, radix: 16))
            pending!.writeStaticString("\r\n")
        }
        if case .byteBuffer(let bytes) = body, size <= Self.coalesceBytes, promise == nil {
            if pending == nil { pending = context.channel.allocator.buffer(capacity: size + 2) }
            pending!.writeImmutableBuffer(bytes)
        } else if size > 0 || promise != nil {
            writePending(context: context, promise: nil)
            context.write(wrapOutboundOut(body), promise: promise)
        }
        if chunked && size > 0 {
            if pending == nil { pending = context.channel.allocator.buffer(capacity: 2) }
            pending!.writeStaticString("\r\n")
        }
    }

    /// Hands the bytes held back (head, small bodies) to the channel.
    private func writePending(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        if let bytes = pending {
            pending = nil
            context.write(wrapOutboundOut(.byteBuffer(bytes)), promise: promise)
        } else if let promise {
            // Nothing to write, but the promise completes in order with the writes before it.
            context.write(wrapOutboundOut(.byteBuffer(ByteBuffer())), promise: promise)
        }
    }

    /// An answer is complete: the next pipelined request may go on.
    private func answerEnded(context: ChannelHandlerContext) {
        answering = false
        answerHeadWritten = false
        chunked = false
        suppressBody = false
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
        case .head: return answering
        default: return false
        }
    }

    /// Leaving (the connection becomes a tunnel): bytes that arrived after the upgrade request
    /// go to the handler after this one.
    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        writePending(context: context, promise: nil)
        if let rest = received, rest.readableBytes > 0 {
            received = nil
            context.fireChannelRead(NIOAny(rest))
            context.fireChannelReadComplete()
        }
        if readHeld {
            readHeld = false
            context.read()
        }
        context.leavePipeline(removalToken: removalToken)
    }
}
