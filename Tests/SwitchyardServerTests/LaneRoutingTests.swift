import Foundation
import SwitchyardTesting
import Testing

@Suite(.serialized) struct LaneRoutingTests {
    func config(baseline: TestHTTPService, gray: TestHTTPService?) -> String {
        """
        lanes:
          - name: gray
            entry: {devices: [d-gray]}
        routes:
          - name: telemetry
            match: "^devices/(?<product>[^/]+)/(?<device>[^/]+)/telemetry$"
            targets: [{service: telemetry, path: "/ingest/{product}/{device}", retries: 0}]
        services:
          telemetry:
            instances:
              - {url: "\(baseline.url)"}
        \(gray.map { "      - {url: \"\($0.url)\", lane: gray}" } ?? "")
        """
    }

    @Test func grayDeviceLandsOnGrayInstanceAndFallsBackWhenItIsRemoved() async throws {
        let baseline = try await TestHTTPService.start()
        let gray = try await TestHTTPService.start()
        let server = try await TestServer.start(config(baseline: baseline, gray: gray))

        let r1 = try await server.post(
            "devices/lock/d-gray/telemetry",
            body: #"{"t":1}"#,
            headers: [("x-switchyard-lane", "dev"), ("x-message-id", "msg-1"), ("content-type", "application/json")]
        )
        #expect(r1.status == 202)
        #expect(r1.body.contains("\"id\":\"msg-1\""))
        let r2 = try await server.post("devices/lock/d-base/telemetry")
        #expect(r2.status == 202)

        let atGray = await gray.waitFor(count: 1)
        let atBaseline = await baseline.waitFor(count: 1)
        #expect(atGray.count == 1)
        #expect(atBaseline.count == 1)
        let g = try #require(atGray.first)
        #expect(g.uri == "/ingest/lock/d-gray")
        #expect(g.body == #"{"t":1}"#)
        #expect(g.header("x-switchyard-lane") == "gray")  // the sender's "dev" was stripped
        #expect(g.header("x-switchyard-lane-fallback") == nil)
        #expect(g.header("x-switchyard-message-id") == "msg-1")
        #expect(g.header("x-switchyard-device") == "d-gray")
        #expect(g.header("x-switchyard-product") == "lock")
        #expect(g.header("x-switchyard-topic") == "devices/lock/d-gray/telemetry")
        #expect(g.header("content-type") == "application/json")
        #expect(g.header("baggage") == "lane=gray")
        #expect(g.header("traceparent")?.split(separator: "-").count == 4)
        let b = try #require(atBaseline.first)
        #expect(b.header("x-switchyard-lane") == nil)
        #expect(b.uri == "/ingest/lock/d-base")

        // Remove the gray instance (hot reload through the file) → baseline serves gray, and says so.
        try server.rewrite(config(baseline: baseline, gray: nil))
        #expect(try await server.admin("POST", "/admin/reload").status == 200)
        #expect(try await server.post("devices/lock/d-gray/telemetry").status == 202)
        let after = await baseline.waitFor(count: 2)
        #expect(after.count == 2)
        #expect(after.last?.header("x-switchyard-lane") == "gray")
        #expect(after.last?.header("x-switchyard-lane-fallback") == "true")
        #expect(gray.received.count == 1)

        await server.settle()
        let ledger = server.app.ledger.snapshot()
        #expect(ledger.forwardedTotal == 3)
        #expect(ledger.balances)
        await server.stop()
        await baseline.stop()
        await gray.stop()
    }

    @Test func traceContextIsContinued() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(config(baseline: svc, gray: nil))
        let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        _ = try await server.post(
            "devices/p/d/telemetry",
            headers: [("traceparent", "00-\(traceID)-00f067aa0ba902b7-01"), ("baggage", "lane=evil,user=42")]
        )
        let got = await svc.waitFor(count: 1)
        let parts = try #require(got.first?.header("traceparent")).split(separator: "-")
        #expect(parts[1] == Substring(traceID))
        #expect(parts[2] != "00f067aa0ba902b7")  // a new span for the hop
        #expect(got.first?.header("baggage") == "user=42")  // the sender's lane= is dropped; baseline adds none
        await server.stop()
        await svc.stop()
    }
}
