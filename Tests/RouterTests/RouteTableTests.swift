import NIOCore
import SwitchyardCore
import Testing

@testable import Router

@Suite struct RouteTableTests {
    func route(_ name: String, _ match: String, service: String = "svc", path: String = "/") -> SwitchyardConfiguration.RouteRule {
        var r = SwitchyardConfiguration.RouteRule(name: name, match: match)
        var t = SwitchyardConfiguration.TargetRule(service: service)
        t.path = path
        r.targets = [t]
        return r
    }

    /// Delivery collects captures only for routes with a target that renders them; it picks
    /// the same route as `match`, and `takes` agrees with both.
    @Test func deliveryMatchesCollectCapturesOnlyWhenRendered() throws {
        var batched = route("batched", "^devices/(?<product>[^/]+)/(?<device>[^/]+)/bulk$")
        batched.targets[0].batch = SwitchyardConfiguration.BatchRule()
        let table = try RouteTable([batched, route("single", "^devices/(?<product>[^/]+)/(?<device>[^/]+)/.+$", path: "/in/{device}")])
        #expect(table.matchForDelivery("devices/p/d/bulk")?.route.name == "batched")
        #expect(table.matchForDelivery("devices/p/d/bulk")?.captures == [:])
        #expect(table.match("devices/p/d/bulk")?.captures == ["product": "p", "device": "d"])  // explain still sees them
        #expect(table.matchForDelivery("devices/p/d/x")?.captures == ["product": "p", "device": "d"])
        for topic in ["devices/p/d/bulk", "devices/p/d/x", "devices/p/d", "other", ""] {
            #expect(table.matchForDelivery(topic)?.route.name == table.match(topic)?.route.name)
            #expect(table.takes(topic) == (table.match(topic) != nil))
        }
    }

    @Test func firstMatchingRouteWinsWithNamedCaptures() throws {
        let table = try RouteTable([
            route("telemetry", "^devices/(?<product>[^/]+)/(?<device>[^/]+)/telemetry$"),
            route("any-device", "^devices/(?<rest>.+)$"),
            route("events", "^devices/(?<product>[^/]+)/(?<device>[^/]+)/event$"),
        ])
        let m = try #require(table.match("devices/lock/d1/telemetry"))
        #expect(m.route.name == "telemetry")
        #expect(m.captures == ["product": "lock", "device": "d1"])
        let n = try #require(table.match("devices/lock/d1/event"))
        #expect(n.route.name == "any-device")  // declared before "events"
        #expect(n.captures == ["rest": "lock/d1/event"])
        #expect(table.match("other/x") == nil)
    }

    @Test func fastPathAgreesWithRegexEngine() throws {
        let patterns = [
            "^devices/(?<product>[^/]+)/(?<device>[^/]+)/telemetry$",
            "^devices/[^/]+/(?<device>[^/]+)/(?<rest>.*)$",
            "^a/b$",
            "^ota/(?<device>[^/]+)$",
            "^x/(?<all>.+)$",
            "^bench/.+/data$",
            "^a/(?<x>.*)/b/(?<y>[^/]+)$",
            "^(?<p>[^/]+)x/(?<q>.+)$",
            "^devices/(?<p>.+)/(?<d>.+)$",
        ]
        let topics = [
            "devices/p/d/telemetry", "devices/p/d/telemetry/x", "devices//d/telemetry", "devices/p/d/", "devices/p/d",
            "a/b", "a/bc", "ota/dev-1", "ota/dev-1/x", "ota/", "x/", "x/y/z", "x/y\nz", "devices/p/d/a/b/c",
            "bench/d1/data", "bench/a/b/data", "bench//data", "bench/data", "a//b/c", "a/q/b/r/b/s", "a/b/b/c",
            "axx/q", "ppx/x/y", "x/q", "devices/a/b/c/d",
        ]
        for p in patterns {
            let regex = try TopicRegex(p)
            #expect(regex.usesFastPath, "\(p) should use the fast path")
            for t in topics {
                #expect(regex.match(t) == regex.matchWithRegexEngine(t), "pattern \(p) topic \(t)")
                #expect(regex.matches(t) == (regex.matchWithRegexEngine(t) != nil), "matches: pattern \(p) topic \(t)")
            }
        }
    }

    @Test func otherPatternsUseTheRegexEngine() throws {
        let r = try TopicRegex("^devices/(?<product>lock|door)/(?<device>\\d+)/.*$")
        #expect(!r.usesFastPath)
        #expect(r.match("devices/lock/42/x") == ["product": "lock", "device": "42"])
        #expect(r.match("devices/window/42/x") == nil)
        #expect(r.matches("devices/lock/42/x") && !r.matches("devices/window/42/x"))
        let unanchored = try TopicRegex("event")
        #expect(unanchored.match("devices/p/d/event") != nil)
    }

    @Test func unbalancedParenthesisNamesTheOffset() {
        #expect(throws: KeyPathError.self) { try RouteTable([route("r", "^devices/(?<p>[^/]+/x$")]) }
        do {
            _ = try RouteTable([route("a", "^ok$"), route("b", "^ok$"), route("c", "^abc(def$")])
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "routes[2].match: unbalanced \"(\" at offset 4")
        }
    }

    @Test func pathTemplateRendersCapturesAndBuiltins() {
        let e = Envelope(
            id: "m1",
            channel: "http",
            topic: "devices/p/d 1/x",
            product: "p",
            device: "d 1",
            payload: ByteBuffer(),
            receivedAt: 0,
            trace: .generate()
        )
        #expect(PathTemplate.render("/in/{product}/{device}?id={id}", captures: [:], envelope: e) == "/in/p/d%201?id=m1")
        #expect(PathTemplate.render("/c/{x}/{lane}", captures: ["x": "ä"], envelope: e) == "/c/%C3%A4/baseline")
        #expect(PathTemplate.render("/static", captures: [:], envelope: e) == "/static")
        #expect(PathTemplate.render("/a/{unknown}/{device}{", captures: [:], envelope: e) == "/a//d%201{")
        #expect(PathTemplate.percentEncode("a/b c~%", keepSlash: false) == "a%2Fb%20c~%25")
    }

    @Test func messageEndpointsAreTheMessageChannelsPaths() {
        for uri in ["/v1/messages/a/b", "/v1/messages/", "/v1/batch", "/v1/batch?x=1"] { #expect(MessageEndpoints.contains(uri), "\(uri)") }
        for uri in ["/v1/messages", "/v1/batches", "/v1/batch/x", "/api/v1/batch", "", "/"] { #expect(!MessageEndpoints.contains(uri), "\(uri)") }
    }

    /// Header names and methods are RFC 9110 tokens, byte by byte.
    @Test func tokensAreTheRFCsTchars() {
        let tchars = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for b in 0...255 {
            #expect(HTTPToken.isToken(String(decoding: [UInt8(b)], as: UTF8.self)) == tchars.contains(UInt8(b)), "byte \(b)")
        }
        #expect(!HTTPToken.isToken("") && !HTTPToken.isToken("x-a b") && HTTPToken.isToken("x-switchyard-tag-kind"))
    }
}
