import NIOHTTP1
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
}
