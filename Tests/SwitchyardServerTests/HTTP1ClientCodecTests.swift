import HTTPIngress
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Gateway

/// What the upstream handler would see: the answer's parts and errors.
final class AnswerCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    var parts: [String] = []
    var body = ""
    var errors: [String] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): parts.append("head \(head.status.code)")
        case .body(let chunk):
            body += String(buffer: chunk)
            parts.append("body")
        case .end(let trailers): parts.append(trailers.map { "end \($0.map { "\($0.name)=\($0.value)" })" } ?? "end")
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { errors.append("\(error)") }
}

@Suite struct HTTP1ClientCodecTests {
    let channel = EmbeddedChannel()
    let answers = AnswerCollector()

    init() throws {
        try channel.pipeline.syncOperations.addHandler(HTTP1ClientCodec())
        try channel.pipeline.syncOperations.addHandler(answers)
    }

    func written() throws -> String {
        var out = ""
        while let data = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let b) = data { out += String(buffer: b) }
        }
        return out
    }

    func send(_ method: HTTPMethod, _ uri: String, headers: HTTPHeaders = [:], body: [String] = []) throws {
        try channel.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)))
        for b in body { try channel.writeOutbound(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: b)))) }
        try channel.writeOutbound(HTTPClientRequestPart.end(nil))
    }

    @Test func requestsAreFramedByLengthOrChunked() throws {
        try send(.GET, "/a", headers: ["host": "up"])
        #expect(try written() == "GET /a HTTP/1.1\r\nhost: up\r\n\r\n")
        try send(.POST, "/b", headers: ["host": "up"], body: ["hello", " world"])
        #expect(try written() == "POST /b HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        try send(.PUT, "/c", headers: ["content-length": "2", "transfer-encoding": "chunked"], body: ["ok"])
        #expect(try written() == "PUT /c HTTP/1.1\r\ncontent-length: 2\r\n\r\nok")
    }

    /// Heads whose field lines are bytes already are framed the same way (no transfer coding
    /// reaches this path): by their length, else chunked for methods with a body.
    @Test func requestsFromFieldLinesAreFramedTheSameWay() throws {
        let channel = EmbeddedChannel()
        let codec = HTTP1ClientCodec(host: "10.0.0.7:8080")
        try channel.pipeline.syncOperations.addHandler(codec)
        func send(_ method: HTTPMethod, _ lines: String, length: Bool, body: [String] = []) throws -> String {
            codec.sendHead(.init(method: method, uri: "/p?q=1", fields: ByteBuffer(string: lines), length: length))
            for b in body { codec.send(.body(.byteBuffer(ByteBuffer(string: b))), flush: false) }
            codec.send(.end(nil), flush: true)
            var out = ""
            while let data = try channel.readOutbound(as: IOData.self) {
                if case .byteBuffer(let b) = data { out += String(buffer: b) }
            }
            return out
        }
        #expect(try send(.GET, "Accept: */*\r\n", length: false) == "GET /p?q=1 HTTP/1.1\r\nhost: 10.0.0.7:8080\r\nAccept: */*\r\n\r\n")
        #expect(
            try send(.POST, "x-a: 1\r\n", length: false, body: ["hello"])
                == "POST /p?q=1 HTTP/1.1\r\nhost: 10.0.0.7:8080\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        #expect(
            try send(.PUT, "Content-Length: 2\r\n", length: true, body: ["ok"])
                == "PUT /p?q=1 HTTP/1.1\r\nhost: 10.0.0.7:8080\r\nContent-Length: 2\r\n\r\nok"
        )
    }

    @Test func answersAreParsedAcrossAnyCut() throws {
        try send(.GET, "/a")
        try send(.HEAD, "/b")
        try send(.GET, "/c")
        _ = try written()
        let stream =
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n"
            + "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"  // HEAD: no body, whatever the length says
            + "HTTP/1.0 200 OK\r\n\r\nuntil close"
        for byte in stream.utf8 { try channel.writeInbound(ByteBuffer(bytes: [byte])) }
        #expect(answers.parts.prefix(6) == ["head 200", "body", "body", "body", "end [\"x-sum=1\"]", "head 200"])
        #expect(answers.parts.dropFirst(6).first == "end")
        #expect(answers.parts.last == "body")
        try channel.close().wait()
        #expect(answers.parts.last == "end")  // the close completes a body without a length
        #expect(answers.body == "abcuntil close")
        #expect(answers.errors.isEmpty)
    }

    @Test(arguments: [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "SSH-2.0-OpenSSH\r\n\r\n",
    ])
    func malformedAnswersAreErrors(raw: String) throws {
        try send(.GET, "/a")
        try channel.writeInbound(ByteBuffer(string: raw))
        #expect(answers.errors.count == 1, "\(raw.debugDescription)")
        #expect(answers.errors.first?.hasPrefix("invalid HTTP answer") == true)
    }

    /// A status line's reason phrase: a code NIO knows keeps NIO's phrase (as its initializer
    /// has it, whatever the answer said); another code keeps the answer's.
    @Test(arguments: [
        ("HTTP/1.1 200 OK", 200, "OK"),
        ("HTTP/1.1 200 Fine", 200, "OK"),
        ("HTTP/1.0 404 Not Found", 404, "Not Found"),
        ("HTTP/1.1 204", 204, "No Content"),
        ("HTTP/1.1 599 Network Weirdness", 599, "Network Weirdness"),
        ("HTTP/1.1 599", 599, ""),
    ])
    func statusLinesKeepTheirReasonPhrase(line: String, code: Int, reason: String) throws {
        var head = HTTPResponseHead(version: .http1_1, status: .ok)
        var section = HTTP1Message.FieldSection()
        var kept: ByteBuffer? = ByteBuffer()
        let bytes = Array((line + "\r\ncontent-length: 0\r\n\r\n").utf8)
        let malformed = bytes.withUnsafeBytes { HTTP1ClientCodec.parseHead($0, keptLines: &kept, section: &section, into: &head) }
        #expect(malformed == nil)
        #expect(head.status.code == UInt(code) && head.status.reasonPhrase == reason, "\(line): \(head.status)")
        #expect(head.version == (line.hasPrefix("HTTP/1.0") ? .http1_0 : .http1_1))
    }

    @Test func anAnswerToNoRequestIsAnError() throws {
        try channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
        #expect(answers.parts.isEmpty && answers.errors.count == 1)
    }
}
