import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import HTTPIngress

/// What the request handler would see: the parts handed on, in order.
final class PartCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    var parts: [String] = []
    var bodies: [String] = []
    var heads: [HTTPRequestHead] = []
    var trailers: [HTTPHeaders?] = []
    var readCompletes = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            heads.append(head)
            bodies.append("")
            parts.append("head \(head.method.rawValue) \(head.uri)")
        case .body(let chunk):
            bodies[bodies.count - 1] += String(buffer: chunk)
            parts.append("body")
        case .end(let t):
            trailers.append(t)
            parts.append("end")
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { readCompletes += 1 }
}

/// A handler that collects whole requests and lets the codec read ahead after each.
final class ReadAheadCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    let codec: HTTP1ServerCodec
    var parts: [String] = []
    init(codec: HTTP1ServerCodec) { self.codec = codec }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): parts.append("head \(head.method.rawValue) \(head.uri)")
        case .body: parts.append("body")
        case .end:
            parts.append("end")
            codec.allowReadAhead()
        }
    }
}

/// While a head is handed on, its field lines are there as they came (a proxy passes them on
/// as bytes); not after.
@Suite struct RequestFieldLinesTests {
    final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        let codec: HTTP1ServerCodec
        var lines: [String?] = []
        var heads: [HTTPRequestHead] = []
        init(codec: HTTP1ServerCodec) { self.codec = codec }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                lines.append(codec.requestFieldLines.map { String(buffer: $0) })
                heads.append(head)
            case .body: break
            case .end: codec.allowReadAhead()
            }
        }
    }

    @Test func eachHeadsFieldLinesAsTheyCame() throws {
        let channel = EmbeddedChannel()
        let codec = HTTP1ServerCodec { _ in true }
        let collector = Collector(codec: codec)
        try channel.pipeline.syncOperations.addHandler(codec)
        try channel.pipeline.syncOperations.addHandler(collector)
        let requests =
            "GET /a HTTP/1.1\r\nHost: x\r\nX-A:  1 \t\r\n\r\n" + "\r\nPOST /b HTTP/1.1\r\nHost: y\r\nContent-Length: 2\r\n\r\nok"
            + "GET /c HTTP/1.0\r\n\r\n"
        try channel.writeInbound(ByteBuffer(string: requests))
        #expect(collector.lines == ["Host: x\r\nX-A:  1 \t\r\n", "Host: y\r\nContent-Length: 2\r\n", ""])
        #expect(codec.requestFieldLines == nil)
        // Each request's fields are parsed into the last one's list when nothing holds it any
        // more: heads kept (here, all of them) keep their own.
        #expect(collector.heads.map { $0.headers.map { "\($0.name)=\($0.value)" } } == [["Host=x", "X-A=1"], ["Host=y", "Content-Length=2"], []])
    }
}

@Suite struct ReadAheadTests {
    let channel = EmbeddedChannel()
    let collector: ReadAheadCollector

    init() throws {
        let codec = HTTP1ServerCodec { $0.uri != "/stream" }
        collector = ReadAheadCollector(codec: codec)
        try channel.pipeline.syncOperations.addHandler(codec)
        try channel.pipeline.syncOperations.addHandler(collector)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    func written() throws -> String {
        var out = ""
        while let data = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let b) = data { out += String(buffer: b) }
        }
        return out
    }

    func answer(_ status: HTTPResponseStatus, body: String) throws {
        let headers: HTTPHeaders = ["content-length": String(body.utf8.count)]
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
        try channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body))))
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
    }

    @Test func pipelinedRequestsAreTakenBeforeTheAnswersAndAnsweredInOrder() throws {
        try channel.writeInbound(ByteBuffer(string: "HEAD /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\n"))
        #expect(collector.parts == ["head HEAD /a", "end", "head POST /b", "body", "end", "head GET /c", "end"])
        // Answers in request order; the first is a HEAD's (no body), the others carry theirs.
        try answer(.ok, body: "aaaa")
        try answer(.accepted, body: "bb")
        try answer(.ok, body: "c")
        #expect(
            try written()
                == "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nbbHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nc"
        )
    }

    @Test func atMost32RequestsAreReadAheadOfTheirAnswers() throws {
        try channel.writeInbound(ByteBuffer(string: String(repeating: "GET /x HTTP/1.1\r\n\r\n", count: 40)))
        #expect(collector.parts.filter { $0.hasPrefix("head") }.count == 32)
        try answer(.ok, body: "")
        #expect(collector.parts.filter { $0.hasPrefix("head") }.count == 33)
    }

    @Test func aHeadNotToReadAheadWaitsForTheAnswersBefore() throws {
        try channel.writeInbound(ByteBuffer(string: "POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /stream HTTP/1.1\r\n\r\n"))
        #expect(collector.parts == ["head POST /a", "body", "end"])
        try answer(.accepted, body: "")
        #expect(collector.parts.suffix(2) == ["head GET /stream", "end"])
    }

    @Test func malformedInputAfterPendingAnswersIsRefusedAfterThem() throws {
        try channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"))
        #expect(collector.parts == ["head GET /a", "end"])
        let early = try written()
        #expect(early.isEmpty, "\(early)")  // not before the first answer
        #expect(channel.isActive)
        try answer(.ok, body: "a")
        let out = try written()
        #expect(out.hasPrefix("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\naHTTP/1.1 400 Bad Request\r\n"), "\(out)")
        #expect(!channel.isActive)
    }
}

@Suite struct HTTP1ServerCodecTests {
    let channel = EmbeddedChannel()
    let collector = PartCollector()

    init() throws {
        try channel.pipeline.syncOperations.addHandler(HTTP1ServerCodec())
        try channel.pipeline.syncOperations.addHandler(collector)
        // Connected, so that `isActive` says whether the codec closed it.
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    func feed(_ text: String) throws { try channel.writeInbound(ByteBuffer(string: text)) }

    /// Everything written to the socket so far, as text.
    func written() throws -> String {
        var out = ""
        while let data = try channel.readOutbound(as: IOData.self) {
            guard case .byteBuffer(let b) = data else { continue }
            out += String(buffer: b)
        }
        return out
    }

    func answer(_ status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: String? = nil, trailers: HTTPHeaders? = nil) throws {
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
        if let body { try channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body)))) }
        try channel.writeOutbound(HTTPServerResponsePart.end(trailers))
    }

    @Test func pipelinedRequestsAreHandedOnOneAtATime() throws {
        try feed("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(collector.parts == ["head POST /a", "body", "end"])
        #expect(collector.bodies == ["abc"])
        #expect(collector.heads[0].headers["host"] == ["x"])
        try answer(.accepted, headers: ["content-length": "2"], body: "ok")
        // The answer's end lets the next request through, with a read-complete for the handler.
        #expect(collector.parts == ["head POST /a", "body", "end", "head GET /b", "end"])
        #expect(collector.readCompletes >= 2)
        #expect(try written() == "HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok")
    }

    @Test func chunkedBodiesAndTrailersSurviveAnyCut() throws {
        let request =
            "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n4;name=v\r\nWiki\r\n5\r\npedia\r\nA \r\n in chunks\r\n0\r\nx-sum: 42\r\n\r\n"
        for byte in request.utf8 { try channel.writeInbound(ByteBuffer(bytes: [byte])) }
        #expect(collector.bodies == ["Wikipedia in chunks"])
        #expect(collector.parts.last == "end")
        #expect(collector.trailers == [["x-sum": "42"]])
    }

    @Test func answersWithoutALengthAreChunkedAndHeadAnswersHaveNoBody() throws {
        try feed("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        try answer(.ok, body: "hello")
        #expect(try written() == "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        try feed("HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        try answer(.ok, headers: ["content-length": "5"], body: "hello")
        #expect(try written() == "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        try feed("DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n")
        try answer(.noContent, headers: ["content-length": "0"])
        #expect(try written() == "HTTP/1.1 204 No Content\r\n\r\n")
    }

    @Test(arguments: [
        ("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", "400 Bad Request"),
        ("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", "400 Bad Request"),
        ("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", "400 Bad Request"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "400 Bad Request"),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "400 Bad Request"),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", "501 Not Implemented"),
        ("GET / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n", "400 Bad Request"),
        ("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "400 Bad Request"),
        ("GET / HTTP/1.1\r\nX\r\n\r\n", "400 Bad Request"),
        ("GET  / HTTP/1.1\r\n\r\n", "400 Bad Request"),
        ("GET /a b HTTP/1.1\r\n\r\n", "400 Bad Request"),
        ("GET / HTTP/1.2\r\n\r\n", "505 HTTP Version Not Supported"),
        ("GET / http/1.1\r\n\r\n", "400 Bad Request"),
        ("\u{1}\u{2}garbage\r\n\r\n", "400 Bad Request"),
    ])
    func malformedRequestsAreRefusedAndTheConnectionCloses(raw: String, status: String) throws {
        try feed(raw)
        #expect(collector.parts.isEmpty)
        let answer = try written()
        #expect(answer.hasPrefix("HTTP/1.1 \(status)\r\n"), "\(answer)")
        #expect(answer.contains("connection: close") && answer.contains("\"error\":"))
        #expect(!channel.isActive)
    }

    @Test func aClientWaitingFor100ContinueGetsIt() throws {
        try feed("POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
        #expect(collector.parts == ["head POST /a"])
        #expect(try written() == "HTTP/1.1 100 Continue\r\n\r\n")
        try feed("abc")
        #expect(collector.bodies == ["abc"])
        try answer(.accepted, headers: ["content-length": "0"])
        #expect(try written() == "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
        // No 100 when the body is already here, when there is none, or from HTTP/1.0.
        try feed("POST /b HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz")
        try answer(.accepted, headers: ["content-length": "0"])
        try feed("GET /c HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
        try answer(.ok, headers: ["content-length": "0"])
        try feed("POST /d HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
        #expect(!(try written().contains("100 Continue")))
        #expect(collector.parts.suffix(2) == ["end", "head POST /d"])
    }

    @Test func anUnknownExpectationGets417() throws {
        try feed("POST /a HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n")
        #expect(collector.parts.isEmpty)
        let answer = try written()
        #expect(answer.hasPrefix("HTTP/1.1 417 Expectation Failed\r\n"), "\(answer)")
        #expect(answer.contains("expectation_failed"))
        #expect(!channel.isActive)
    }

    @Test func aMalformedBodyCutsTheConnectionOnceTheAnswerBegan() throws {
        try feed("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
        try feed("zz\r\n")
        #expect(!channel.isActive)
        #expect(try written().hasPrefix("HTTP/1.1 200 OK"))  // what was written stays: no second status
    }

    @Test func oversizedHeadsGet431And414() throws {
        try feed("GET / HTTP/1.1\r\nX: \(String(repeating: "a", count: 70_000))\r\n\r\n")
        #expect(try written().hasPrefix("HTTP/1.1 431 Request Header Fields Too Large"))
        let other = EmbeddedChannel(handler: HTTP1ServerCodec())
        try other.writeInbound(ByteBuffer(string: "GET /\(String(repeating: "a", count: 70_000))"))
        guard case .byteBuffer(let b) = try other.readOutbound(as: IOData.self) else { Issue.record("no answer"); return }
        #expect(String(buffer: b).hasPrefix("HTTP/1.1 414 URI Too Long"))
    }

    @Test func bytesAfterAnUpgradeRequestWaitForWhatTheConnectionBecomes() throws {
        try feed("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\u{81}\u{0}GET /not-http HTTP/1.1\r\n\r\n")
        #expect(collector.parts == ["head GET /ws", "end"])
        try answer(.switchingProtocols, headers: ["upgrade": "websocket", "connection": "upgrade"])
        #expect(collector.parts.count == 2)  // nothing more is parsed
        _ = try written()
        // The connection becomes a tunnel: the codec leaves and hands over what it held.
        let raw = RawCollector()
        let codec = try channel.pipeline.syncOperations.handler(type: HTTP1ServerCodec.self)
        try channel.pipeline.syncOperations.addHandler(raw, position: .after(codec))
        channel.pipeline.syncOperations.removeHandler(codec, promise: nil)
        channel.embeddedEventLoop.run()
        #expect(raw.bytes == Array("\u{81}\u{0}GET /not-http HTTP/1.1\r\n\r\n".utf8))
    }

    @Test func readingPausesOnlyWhenMuchWaitsBehindAnAnswer() throws {
        let reads = ReadCounter()
        let counted = EmbeddedChannel()
        try counted.pipeline.syncOperations.addHandler(reads)
        try counted.pipeline.syncOperations.addHandler(HTTP1ServerCodec())
        try counted.pipeline.syncOperations.addHandler(PartCollector())
        try counted.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        counted.read()
        #expect(reads.count == 1)  // one request waiting for its answer: reading goes on
        try counted.writeInbound(ByteBuffer(string: String(repeating: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", count: 3000)))
        counted.read()
        #expect(reads.count == 1)  // 80 KiB waiting: held
        // Answered one by one, the backlog shrinks; below 64 KiB the held read goes out.
        var answers = 0
        while reads.count == 1 && answers < 3001 {
            try counted.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "0"])))
            try counted.writeOutbound(HTTPServerResponsePart.end(nil))
            answers += 1
        }
        #expect(reads.count == 2)
        #expect(answers > 500 && answers < 700, "\(answers)")  // (81,000 − 65,536) / 27 bytes per request ≈ 573
    }
}

final class RawCollector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var bytes: [UInt8] = []
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { bytes += unwrapInboundIn(data).readableBytesView }
}

final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var count = 0
    func read(context: ChannelHandlerContext) {
        count += 1
        context.read()
    }
}
