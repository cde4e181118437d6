import Foundation
import SwitchyardTesting
import Testing

/// `POST /v1/batch`: many messages per request, each with its own outcome and count.
@Suite(.serialized) struct BatchIngestTests {
    static func yaml(_ svc: TestHTTPService, extra: String = "", service: String = "") -> String {
        """
        channels: {http: {max_batch_items: 50}}
        filters:
          - devices: {deny: [banned]}
        routes:
          - name: t
            match: "^devices/(?<product>[^/]+)/(?<device>[^/]+)/telemetry$"
            targets: [{service: s, path: "/in/{device}", retries: 0}]
        services:
          s: {instances: [{url: "\(svc.url)"}]\(service)}
        \(extra)
        """
    }

    func postBatch(_ server: TestServer, _ body: String, contentType: String? = nil, headers: [(String, String)] = [])
        async throws -> (status: Int, json: [String: Any], body: String, headers: [(String, String)])
    {
        var all = headers
        if let contentType { all.append(("content-type", contentType)) }
        let r = try await TestHTTPClient.request("POST", port: server.httpPort, path: "/v1/batch", headers: all, body: body)
        let json = (try? JSONSerialization.jsonObject(with: Data(r.body.utf8))) as? [String: Any] ?? [:]
        return (r.status, json, r.body, r.headers)
    }

    func results(_ json: [String: Any]) -> [[String: Any]] { json["results"] as? [[String: Any]] ?? [] }

    @Test func ndjsonBatchIsDeliveredWithEveryMessageCounted() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let lines = (0..<20).map { i in
            #"{"topic":"devices/p1/d\#(i % 4)/telemetry","id":"b-\#(i)","payload":{"seq":\#(i),"temp":21.5}}"#
        }
        let r = try await postBatch(
            server,
            lines.joined(separator: "\n") + "\n",
            contentType: "application/x-ndjson",
            headers: [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
        )
        #expect(r.status == 202, "\(r.body)")
        #expect(r.json["accepted"] as? Int == 20)
        #expect(results(r.json).map { $0["id"] as? String } == (0..<20).map { "b-\($0)" })
        let got = await svc.waitFor(count: 20)
        #expect(got.count == 20)
        let first = try #require(got.first { $0.header("x-switchyard-message-id") == "b-0" })
        #expect(first.body == #"{"seq":0,"temp":21.5}"#)  // the JSON value's text, as written
        #expect(first.header("content-type") == "application/json")
        #expect(first.header("x-switchyard-device") == "d0")
        #expect(first.uri == "/in/d0")
        #expect(first.header("traceparent")?.contains("4bf92f3577b34da6a3ce929d0e0e4736") == true)  // the request's trace
        // Per-device order holds inside a batch.
        let d1 = got.filter { $0.header("x-switchyard-device") == "d1" }.compactMap { $0.header("x-switchyard-message-id") }
        #expect(d1 == ["b-1", "b-5", "b-9", "b-13", "b-17"])
        await server.settle()
        let metrics = try await server.admin("GET", "/metrics", token: nil).body
        #expect(ScrapedLedger(metrics).received == 20 && ScrapedLedger(metrics).forwarded == 20)
        await server.stop()
        await svc.stop()
    }

    @Test func aJSONArrayWithBadMessagesGetsPerMessageOutcomes() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let body = """
            [
              {"topic": "devices/p1/d1/telemetry", "payload": "text payload", "headers": {"x-switchyard-lane": "gray", "x-seq": "1"}},
              {"topic": "devices/p1/d1/telemetry", "payload_base64": "AAEC/w=="},
              {"topic": "devices/+/d1/telemetry", "payload": 1},
              {"topic": "devices/p1/banned/telemetry", "payload": 1},
              {"payload": 1},
              {"topic": "devices/p1/d2/telemetry", "payload": 1, "colour": "red"},
              42,
              {"topic": "devices/p1/d2/telemetry", "payload": ""},
              {"topic": "devices/p1/d2/telemetry", "payload_base64": "not base64!"}
            ]
            """
        let r = try await postBatch(server, body)  // no content type: an array by its first byte
        #expect(r.status == 207, "\(r.body)")
        #expect(r.json["accepted"] as? Int == 2)
        #expect(r.json["rejected"] as? Int == 7)
        let codes = results(r.json).map { ($0["status"] as? Int ?? 0, $0["error"] as? String ?? "-") }
        #expect(codes.map(\.0) == [202, 202, 400, 403, 400, 400, 400, 400, 400])
        #expect(
            codes.map(\.1) == [
                "-", "-", "malformed_topic", "device_denied", "malformed_topic", "malformed_item", "malformed_item", "empty_payload",
                "malformed_item",
            ]
        )
        #expect((results(r.json)[5]["message"] as? String)?.contains("unknown field \"colour\"") == true)
        let got = await svc.waitFor(count: 2)
        let text = try #require(got.first { $0.body == "text payload" })
        #expect(text.header("content-type") == "text/plain; charset=utf-8")
        #expect(text.header("x-switchyard-lane") == nil)  // a sender cannot pick its lane
        #expect(got.contains { $0.header("content-type") == "application/octet-stream" && $0.body.unicodeScalars.count == 4 })
        await server.settle()
        let ledger = ScrapedLedger(try await server.admin("GET", "/metrics", token: nil).body)
        #expect(ledger.received == 9)
        #expect(ledger.rejected == 7)
        #expect(ledger.balances)
        await server.stop()
        await svc.stop()
    }

    /// String payloads reach the service as their text: plain ones byte for byte (non-ASCII
    /// included), escaped ones unescaped.
    @Test func stringPayloadsArriveAsTheirText() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let body = [
            #"{"topic":"devices/p1/d1/telemetry","id":"plain","payload":"h€llo wörld"}"#,
            #"{"topic":"devices/p1/d2/telemetry","id":"escaped","payload":"a\"b\\c\n\u00e9"}"#,
        ].joined(separator: "\n")
        let r = try await postBatch(server, body, contentType: "application/x-ndjson")
        #expect(r.status == 202, "\(r.body)")
        let got = await svc.waitFor(count: 2)
        #expect(got.first { $0.header("x-switchyard-message-id") == "plain" }?.body == "h€llo wörld")
        #expect(got.first { $0.header("x-switchyard-message-id") == "escaped" }?.body == "a\"b\\c\né")
        #expect(got.allSatisfy { $0.header("content-type") == "text/plain; charset=utf-8" })
        // No traceparent anywhere: both share the one generated for the request.
        let traces = Set(got.compactMap { $0.header("traceparent")?.split(separator: "-").dropFirst().first })
        #expect(traces.count == 1, "\(got.map { $0.header("traceparent") ?? "-" })")
        await server.stop()
        await svc.stop()
    }

    @Test func unreadableOrOversizedBatchesAreRefusedWhole() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let broken = try await postBatch(server, #"[{"topic": "devices/p/d/telemetry", "payload": 1}"#, contentType: "application/json")
        #expect(broken.status == 400)
        #expect(broken.body.contains("malformed_json"))
        let empty = try await postBatch(server, "\n\n", contentType: "application/x-ndjson")
        #expect(empty.status == 400)
        #expect(empty.body.contains("empty_payload"))
        let many = (0..<51).map { _ in #"{"topic":"devices/p/d/telemetry","payload":1}"# }.joined(separator: "\n")
        let tooMany = try await postBatch(server, many)
        #expect(tooMany.status == 413)
        #expect(tooMany.body.contains("max_batch_items"))
        // A bad NDJSON line spoils only itself.
        let mixed = try await postBatch(server, "{\"topic\":\"devices/p/d/telemetry\",\"payload\":1}\n{oops\n", contentType: "application/x-ndjson")
        #expect(mixed.status == 207)
        #expect(results(mixed.json).map { $0["status"] as? Int } == [202, 400])
        let get = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/v1/batch")
        #expect(get.status == 405)
        await server.settle()
        let ledger = ScrapedLedger(try await server.admin("GET", "/metrics", token: nil).body)
        #expect(ledger.received == 1 + 1 + 51 + 2)
        #expect(ledger.forwarded == 1)
        #expect(ledger.balances)
        await server.stop()
        await svc.stop()
    }

    /// Pipelined single-message requests are taken together (they share journal commits) and
    /// answered in order; malformed input after them is refused after their answers.
    @Test func pipelinedMessagesAreAnsweredInOrder() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        var raw = ""
        for i in 0..<6 {
            raw += "POST /v1/messages/devices/p1/d1/telemetry HTTP/1.1\r\nhost: x\r\nx-message-id: pipe-\(i)\r\ncontent-length: 7\r\n\r\n{\"n\":\(i)}"
        }
        raw += "POST /v1/messages/devices/p1/d1/telemetry HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx"
        let answer = String(decoding: try await TestHTTPClient.raw(Array(raw.utf8), port: server.httpPort), as: UTF8.self)
        let statuses = answer.matches(of: #/HTTP/1\.1 (\d{3}) /#).map { String($0.1) }
        #expect(statuses == ["202", "202", "202", "202", "202", "202", "400"], "\(answer)")
        let ids = answer.matches(of: /"id":"(pipe-\d)"/).map { String($0.1) }
        #expect(ids == (0..<6).map { "pipe-\($0)" })
        // One device: delivered in the order sent.
        let got = await svc.waitFor(count: 6)
        #expect(got.compactMap { $0.header("x-switchyard-message-id") } == (0..<6).map { "pipe-\($0)" })
        await server.stop()
        await svc.stop()
    }

    /// Batched delivery to a real service: one request carries many messages as a JSON array,
    /// in per-device order, payloads intact (a body this large goes without being copied).
    @Test func batchedDeliveryReachesARealServiceAsJSONArrays() async throws {
        let svc = try await TestHTTPService.start()
        let yaml = """
            routes:
              - name: t
                match: "^devices/(?<product>[^/]+)/(?<device>[^/]+)/telemetry$"
                targets: [{service: s, path: /batch, retries: 0, batch: {max: 50, linger: 20ms}}]
            services:
              s: {instances: [{url: "\(svc.url)"}]}
            """
        let server = try await TestServer.start(yaml)
        let payload = String(repeating: "p", count: 500)
        let lines = (0..<40).map { i in #"{"topic":"devices/p/d\#(i % 20)/telemetry","id":"m\#(i)","payload":"\#(i):\#(payload)"}"# }
        #expect(try await postBatch(server, lines.joined(separator: "\n")).status == 202)
        var messages: [[String: Any]] = []
        let deadline = Date().addingTimeInterval(10)
        while messages.count < 40 && Date() < deadline {
            messages = svc.received.flatMap { request -> [[String: Any]] in
                #expect(request.uri == "/batch" && request.header("content-type") == "application/json")
                return (try? JSONSerialization.jsonObject(with: Data(request.body.utf8))) as? [[String: Any]] ?? []
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(messages.count == 40)
        #expect(svc.received.contains { $0.body.utf8.count > 4096 }, "\(svc.received.map(\.body.utf8.count))")
        for message in messages {
            let id = try #require(message["id"] as? String)
            #expect(message["payload"] as? String == "\(id.dropFirst()):\(payload)")
        }
        let d1 = messages.filter { $0["device"] as? String == "d1" }.compactMap { $0["id"] as? String }
        #expect(d1 == ["m1", "m21"])
        await server.stop()
        await svc.stop()
    }

    @Test func aFullJournalRefusesTheWholeBatchWithRetryAfter() async throws {
        // (Brought back on its port later: a port outside the ephemeral range, which the suite's
        // other listeners and connections may take meanwhile — once this test's bind failed.)
        let svc = try await TestHTTPService.startRestartable()
        let port = svc.port
        // (While the service is down its circuit's open time doubles with each failed probe; on
        // a loaded machine the default 60 s cap outlasted the wait below once.)
        let yaml = Self.yaml(svc, extra: "journal: {max_bytes: 1MiB}", service: ", circuit: {max_open_for: 5s}")
        await svc.stop()  // the service is down: messages wait in the journal
        let server = try await TestServer.start(yaml)
        let payload = String(repeating: "x", count: 8000)
        var last: (status: Int, json: [String: Any], body: String, headers: [(String, String)])?
        for round in 0..<40 {
            let lines = (0..<20).map { i in #"{"topic":"devices/p/d\#(i)/telemetry","id":"r\#(round)-\#(i)","payload":"\#(payload)"}"# }
            last = try await postBatch(server, lines.joined(separator: "\n"))
            if last?.status == 503 { break }
            #expect(last?.status == 202)
        }
        let refused = try #require(last)
        #expect(refused.status == 503)
        #expect(refused.body.contains("backpressure"))
        #expect(refused.headers.contains { $0.0.lowercased() == "retry-after" })
        let accepted = ScrapedLedger(try await server.admin("GET", "/metrics", token: nil).body)
        // The service comes back on its port: everything accepted arrives.
        let back = try await TestHTTPService.start(port: port)
        let expected = Int(accepted.received - accepted.rejected)
        let got = await back.waitFor(count: expected, timeoutSeconds: 30)
        #expect(Set(got.compactMap { $0.header("x-switchyard-message-id") }).count == expected)
        await server.stop()
        await back.stop()
    }
}
