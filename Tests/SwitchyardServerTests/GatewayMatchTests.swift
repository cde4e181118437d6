import HTTPIngress
import NIOCore
import NIOHTTP1
import SwitchyardCore
import Testing

@testable import Gateway

/// The byte-level checks at the edge: a route's path prefix and the Host header's syntax.
@Suite struct GatewayMatchTests {
    @Test func aPathPrefixCoversWholeSegmentsOnly() {
        let cases: [(path: String, prefix: String, matches: Bool)] = [
            ("/api", "/api", true),
            ("/api/orders", "/api", true),
            ("/api?x=1", "/api", true),
            ("/apix", "/api", false),
            ("/ap", "/api", false),
            ("/", "/api", false),
            ("/anything/at/all", "/", true),
            ("/api/x", "/api/", true),
            ("/api", "/api/", false),
            ("/caf%C3%A9/menu", "/caf%C3%A9", true),
            ("/café/menu", "/café", true),
            ("/cafe/menu", "/café", false),
        ]
        for c in cases {
            #expect(GatewaySnapshot.path(c.path, hasPrefix: c.prefix) == c.matches, "\(c.path) under \(c.prefix)")
        }
    }

    @Test func aHostIsANameOrAddressWithAnOptionalPort() {
        func problem(_ hosts: [String], version: HTTPVersion = .http1_1) -> String? {
            GatewayResponder.hostProblem(HTTPRequestHead(version: version, method: .GET, uri: "/", headers: HTTPHeaders(hosts.map { ("Host", $0) })))
        }
        for good in ["eu.shop.test", "eu.shop.test:8080", "[::1]:80", "127.0.0.1", "a_b-c~d", "x%41"] {
            #expect(problem([good]) == nil, "\(good)")
        }
        for bad in ["a b", "a/b", "a\u{7F}", "café.test", "a\"b", "a@b", "a{b}"] {
            #expect(problem([bad]) == "Host \"\(bad)\" is not a host name", "\(bad)")
        }
        #expect(problem(["a,b"]) == "more than one Host header")
        #expect(problem(["a", "b"]) == "more than one Host header")
        #expect(problem([]) == "an HTTP/1.1 request needs a Host header")
        #expect(problem([], version: .http1_0) == nil)
        #expect(problem(["  "]) == "an HTTP/1.1 request needs a Host header")
    }

    /// HTTP/1.1 requests go upstream as bytes (`upstreamLines`): the same fields in the same
    /// order as the header-list path (`upstreamHead`) makes, or nil where only that path applies.
    @Test func fieldLinesGoUpstreamAsTheHeaderListPathSendsThem() throws {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let cases: [(lines: String, lane: String?, fellBack: Bool, ip: String?)] = [
            ("Host: a\r\n", nil, false, "10.0.0.1"),
            ("", nil, false, nil),
            (
                "host: shop.test:8080\r\nAccept: */*\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
                    + "Expect: 100-continue\r\nTraceparent: \(traceparent)\r\nX-Switchyard-Lane: gray\r\nx-user: 7\r\n"
                    + "X-Forwarded-Host: evil\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\nContent-Length: 5\r\n"
                    + "Proxy-Authorization: x\r\nProxy-Connection: close\r\nTrailer: x\r\nx-last:   spaced value \t\r\n",
                "gray", true, "192.0.2.1"
            ),
            ("X-Forwarded-For: 1.2.3.4\r\nCONNECTION: close\r\nx-switchyard-debug: 1\r\n", "beta", false, nil),
            ("Host: a\r\nContent-Length: 0\r\nConnection: Keep-Alive, close\r\n", nil, true, "::1"),
        ]
        // The buffer the previous case's lines were written into, as a keep-alive connection
        // keeps it for its next request.
        var scratch: ByteBuffer?
        for c in cases {
            let raw = ByteBuffer(string: c.lines)
            let section = try raw.withUnsafeReadableBytes { try HTTP1Message.fieldSection($0).get() }
            let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/x", headers: HTTPHeaders(section.fields))
            let listed = GatewayResponder.upstreamHead(
                head,
                uri: "/x",
                lane: c.lane,
                fellBack: c.fellBack,
                clientIP: c.ip,
                traceparent: traceparent,
                rewrite: nil
            )
            let bytes = try #require(
                GatewayResponder.upstreamLines(raw, lane: c.lane, fellBack: c.fellBack, clientIP: c.ip, traceparent: Traceparent(given: traceparent)),
                "\(c.lines.debugDescription)"
            )
            let sent = HTTP1Message.headers(lines: bytes.lines)
            #expect(sent.map { "\($0.name): \($0.value)" } == listed.headers.map { "\($0.name): \($0.value)" }, "\(c.lines.debugDescription)")
            #expect(bytes.length == listed.headers.contains(name: "content-length"))
            // Written into the earlier request's buffer: the same bytes, nothing of that request left.
            let reused = try #require(
                GatewayResponder.upstreamLines(
                    raw,
                    lane: c.lane,
                    fellBack: c.fellBack,
                    clientIP: c.ip,
                    traceparent: Traceparent(given: traceparent),
                    into: scratch.take()
                )
            )
            #expect(reused.lines == bytes.lines && reused.length == bytes.length, "\(c.lines.debugDescription)")
            scratch = reused.lines
        }
        // Bytes that are not UTF-8 (obs-text, e.g. Latin-1) pass on as they came; the header-list
        // path, which makes Strings, would have replaced them with U+FFFD.
        var latin = ByteBuffer(string: "x-name: caf")
        latin.writeBytes([0xE9, 0x0D, 0x0A])
        let passed = try #require(
            GatewayResponder.upstreamLines(latin, lane: nil, fellBack: false, clientIP: nil, traceparent: Traceparent(given: traceparent))
        )
        #expect(passed.lines.readableBytesView.starts(with: Array("x-name: caf".utf8) + [0xE9, 0x0D, 0x0A]))
        // What only the header-list path handles: upgrades, transfer codings (framed anew),
        // baggage (members filtered) and fields a Connection header nominates.
        for lines in [
            "Host: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            "Host: a\r\nbaggage: lane=gray,user=7\r\n",
            "Host: a\r\nConnection: close, x-private\r\nx-private: 1\r\n",
        ] {
            #expect(
                GatewayResponder.upstreamLines(
                    ByteBuffer(string: lines),
                    lane: nil,
                    fellBack: false,
                    clientIP: nil,
                    traceparent: Traceparent(given: traceparent)
                ) == nil
            )
        }
    }
}
