import NIOCore
import SwitchyardCore
import Testing

@testable import HTTPForwarder

@Suite struct ResponseParserTests {
    /// Feeds `text` in pieces of `step` bytes, each in a buffer of its own (as reads from a
    /// socket come: the parser keeps a head or line cut between two of them), and collects
    /// the events.
    func parse(_ text: String, step: Int = .max) -> [HTTP1ResponseParser.Event] {
        var parser = HTTP1ResponseParser()
        var events: [HTTP1ResponseParser.Event] = []
        let bytes = Array(text.utf8)
        var i = 0
        while i < bytes.count {
            let n = min(step, bytes.count - i)
            var piece = ByteBuffer(bytes: bytes[i..<(i + n)])
            events += parser.feed(&piece)
            #expect(piece.readableBytes == 0)  // every byte is taken (kept or parsed)
            i += n
        }
        if let e = parser.connectionClosed() { events.append(e) }
        return events
    }

    func ok(_ status: Int, keepAlive: Bool = true, snippet: String = "", close: Bool = false) -> HTTP1ResponseParser.Event {
        .response(.init(status: status, keepAlive: keepAlive, snippet: snippet, closeHeader: close))
    }

    /// What the parser keeps between reads is bounded: a head past 64 KiB or a chunk-size
    /// line past 1 KiB is an error however it is cut, not a buffer that grows.
    @Test(arguments: [1000, Int.max])
    func keptBytesAreBounded(step: Int) {
        let bigHead = "HTTP/1.1 200 OK\r\nx-big: " + String(repeating: "a", count: 70_000) + "\r\n\r\n"
        let events = parse(bigHead, step: step)
        #expect(events.count == 1)
        #expect(events.first.map { if case .error(let m) = $0 { m.contains("64 KiB") } else { false } } == true)
        let longLine = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + String(repeating: "0", count: 2000)
        let lineEvents = parse(longLine, step: step == .max ? .max : 100)
        #expect(lineEvents.first.map { if case .error(let m) = $0 { m.contains("chunk size line too long") } else { false } } == true)
    }

    @Test(arguments: [1, 2, 3, 7, Int.max])
    func framingsInAnyPieces(step: Int) {
        let stream =
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            + "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
            + "HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nbusy\r\n3\r\n!!!\r\n0\r\nx-trailer: 1\r\n\r\n"
            + "HTTP/1.1 400 Bad\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbad"
        #expect(
            parse(stream, step: step) == [ok(200), ok(204), ok(503, snippet: "busy!!!"), ok(400, keepAlive: false, snippet: "bad", close: true)]
        )
    }

    /// Header names in any case, values with spaces and tabs around them, runs of spaces in
    /// the status line, a status line without a reason phrase.
    @Test func lenientWhereHTTPIs() {
        #expect(
            parse("HTTP/1.1  201\r\nCONTENT-LENGTH:\t2 \r\nConnection: Keep-Alive, Close\r\n\r\nok") == [
                ok(201, keepAlive: true, close: true)
            ]
        )
        #expect(
            parse("HTTP/1.1 200 OK\r\nX-Switchyard-Draining: TRUE\r\ncontent-length: 0\r\n\r\n")
                == [.response(.init(status: 200, keepAlive: true, snippet: "", draining: true))]
        )
    }

    @Test func bodyUntilClose() {
        #expect(parse("HTTP/1.1 500 Oops\r\n\r\nsomething broke") == [ok(500, keepAlive: false, snippet: "something broke")])
        #expect(parse("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n") == [ok(200, keepAlive: false)])
    }

    @Test func malformedResponsesAreErrors() {
        for bad in [
            "SMTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\ncontent-length: 5 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 20x OK\r\n\r\n",
            "HTTP/1.1200 OK\r\n\r\n",
            "\r\n\r\n",
        ] {
            let events = parse(bad)
            guard case .error = events.first else {
                Issue.record("accepted: \(bad.debugDescription) → \(events)")
                continue
            }
        }
        // Cut off in the middle of a body.
        guard case .error(let m) = parse("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").first else {
            Issue.record("truncated body accepted")
            return
        }
        #expect(m.contains("closed"))
        // A huge head never completes.
        let huge = "HTTP/1.1 200 OK\r\nx: " + String(repeating: "a", count: 70_000)
        guard case .error = parse(huge).first else {
            Issue.record("70 KB head accepted")
            return
        }
    }

    @Test func requestEncoderRefusesInjection() {
        var buffer = ByteBuffer()
        let good = ForwardRequestFixture.make(path: "/a/b", headers: [HeaderField("x-a", "1")])
        #expect(HTTP1RequestEncoder.encode(good, host: "h:1", into: &buffer) == nil)
        #expect(String(buffer: buffer) == "POST /a/b HTTP/1.1\r\nhost: h:1\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nhi")
        var head = ByteBuffer()
        #expect(HTTP1RequestEncoder.encode(good, host: "h:1", withBody: false, into: &head) == nil)
        #expect(String(buffer: head) == "POST /a/b HTTP/1.1\r\nhost: h:1\r\ncontent-length: 2\r\nx-a: 1\r\n\r\n")
        var other = ByteBuffer()
        #expect(HTTP1RequestEncoder.encode(ForwardRequestFixture.make(path: "/a b"), host: "h", into: &other) != nil)
        #expect(
            HTTP1RequestEncoder.encode(ForwardRequestFixture.make(path: "/a", headers: [HeaderField("x", "1\r\nevil: 1")]), host: "h", into: &other)
                != nil
        )
        #expect(
            HTTP1RequestEncoder.encode(ForwardRequestFixture.make(path: "/a", headers: [HeaderField("bad name", "1")]), host: "h", into: &other)
                != nil
        )
    }
}

enum ForwardRequestFixture {
    static func make(path: String, headers: [HeaderField] = []) -> ForwardRequest {
        ForwardRequest(method: "POST", path: path, headers: headers, body: ByteBuffer(string: "hi"))
    }
}
