import Foundation
import SwitchyardTesting
import Testing

/// Bad input gets its status and the server keeps serving.
@Suite(.serialized) struct BadInputTests {
    static let yaml = """
        channels: {http: {max_body_bytes: 64KiB}}
        filters:
          - max_payload: 32KiB
        tags:
          - match: {field: {name: level, equals: alarm}}
            set: {severity: high}
        routes:
          - {name: all, match: "^devices/(?<rest>.+)$", targets: [{service: sink, retries: 0}]}
        services:
          sink: {instances: [{url: "http://127.0.0.1:1"}]}
        """

    func stillServing(_ server: TestServer) async throws {
        let ok = try await server.post("devices/p/d/telemetry")
        #expect(ok.status == 202, "server stopped serving: \(ok.status) \(ok.body)")
    }

    @Test func eachBadInputGetsItsStatus() async throws {
        let server = try await TestServer.start(Self.yaml)
        let cases: [(String, String, Int, String)] = [
            ("wildcard", "devices/+/d/x", 400, "malformed_topic"),
            ("multi-level wildcard", "devices/%23", 400, "malformed_topic"),
            ("empty level", "devices//d", 400, "malformed_topic"),
            ("bad percent-encoding", "devices/%ZZ/d", 400, "malformed_topic"),
            ("percent-encoded invalid UTF-8", "devices/%FF%FE/d", 400, "malformed_topic"),
            ("percent-encoded NUL", "devices/a%00b/d", 400, "malformed_topic"),
            ("system topic", "$SYS/x", 400, "malformed_topic"),
            ("too long", String(repeating: "a", count: 1100), 400, "malformed_topic"),
        ]
        for (name, topic, status, code) in cases {
            let r = try await server.post(topic)
            #expect(r.status == status, "\(name): \(r.status) \(r.body)")
            #expect(r.body.contains("\"error\":\"\(code)\""), "\(name): \(r.body)")
        }
        let empty = try await server.post("devices/p/d/telemetry", body: "")
        #expect(empty.status == 400)
        #expect(empty.body.contains("empty_payload"))

        let filtered = try await server.post("devices/p/d/x", body: String(repeating: "x", count: 40_000))
        #expect(filtered.status == 413)
        #expect(filtered.body.contains("\"filter\":\"max_payload\""))
        let tooBig = try await server.post("devices/p/d/x", body: String(repeating: "x", count: 100_000))
        #expect(tooBig.status == 413)
        #expect(tooBig.body.contains("payload_too_large"))
        try await stillServing(server)

        let deep = #"{"x":"# + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + #","level":"alarm"}"#
        let deepResponse = try await server.post("devices/p/d/deep", body: deep)
        #expect(deepResponse.status == 202)
        let unbalanced = String(repeating: "{\"a\":", count: 6_000)  // 30 KB, under max_payload
        #expect(try await server.post("devices/p/d/deep", body: unbalanced).status == 202)

        let wrongMethod = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/v1/messages/devices/p/d/x")
        #expect(wrongMethod.status == 405)
        let unknown = try await TestHTTPClient.request("POST", port: server.httpPort, path: "/nope", body: "x")
        #expect(unknown.status == 404)
        let conflict = try await server.post("devices/p/d1/x", headers: [("x-device-id", "d2")])
        #expect(conflict.status == 400)
        #expect(conflict.body.contains("identity_conflict"))
        let badID = try await server.post("devices/p/d1/x", headers: [("x-message-id", "has space")])
        #expect(badID.status == 400)
        try await stillServing(server)

        // Invalid UTF-8 in a header value, sent as raw bytes.
        var raw = Array("POST /v1/messages/devices/p/d/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\nx-device-id: ".utf8)
        raw += [0xC3, 0x28, 0xFF]
        raw += Array("\r\n\r\nhi".utf8)
        let utf8Response = String(decoding: try await TestHTTPClient.raw(raw, port: server.httpPort), as: UTF8.self)
        #expect(utf8Response.hasPrefix("HTTP/1.1 400"), "\(utf8Response)")
        #expect(utf8Response.contains("malformed_header"))

        // A client waiting for 100 Continue with a body over the listener's limit hears 413 at
        // once (without sending the body; before, it got nothing until it gave up waiting).
        let expect = "POST /v1/messages/devices/p/d/x HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n"
        let early = String(decoding: try await TestHTTPClient.raw(Array(expect.utf8), port: server.httpPort), as: UTF8.self)
        #expect(early.hasPrefix("HTTP/1.1 413"), "\(early)")
        #expect(!early.contains("100 Continue") && early.contains("connection: close"))

        // Not HTTP at all.
        let garbage = String(decoding: try await TestHTTPClient.raw(Array("\u{1}\u{2}garbage\r\n\r\n".utf8), port: server.httpPort), as: UTF8.self)
        #expect(garbage.hasPrefix("HTTP/1.1 400"))
        try await stillServing(server)

        await server.settle()
        let ledger = server.app.ledger.snapshot()
        #expect(ledger.rejected.keys.contains { $0.second == "malformed_topic" })
        #expect(ledger.rejected.keys.contains { $0.second == "payload_too_large" })
        #expect(ledger.rejected.keys.contains { $0.second == "malformed_header" })
        #expect(ledger.rejected.keys.contains { $0.second == "empty_payload" })
        #expect(ledger.balances)
        await server.stop()
    }
}
