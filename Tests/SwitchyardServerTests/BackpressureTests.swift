import Foundation
import SwitchyardTesting
import Testing

@testable import SwitchyardServer

/// A stopped service is not an error of the messages: they wait in the journal (or, with it
/// off, in memory) up to its cap, then the channels push back (HTTP 503 + Retry-After, MQTT
/// 0x97); none accepted is lost.
@Suite(.serialized) struct BackpressureTests {
    /// A node whose one service is down, filled with 4 KiB messages until it pushes back.
    struct Filled {
        var svc: TestHTTPService
        let port: Int
        let server: TestServer
        let accepted: [String]
        let refusal: TestHTTPClient.Response

        init(journal: String) async throws {
            svc = try await TestHTTPService.startRestartable()
            port = svc.port
            await svc.stop()  // the service is down: connections are refused
            server = try await TestServer.start(
                """
                journal: \(journal)
                channels: {mqtt: {allow_anonymous: true}}
                routes:
                  - {name: r, match: "^devices/(?<device>[^/]+)/x$", targets: [{service: s, path: "/in/{device}", retries: 0}]}
                services:
                  s: {instances: [{url: "http://127.0.0.1:\(port)"}], circuit: {open_for: 1s, max_open_for: 2s}}
                """
            )
            let payload = String(repeating: "p", count: 4096)
            var accepted: [String] = []
            var pushedBack: TestHTTPClient.Response?
            for i in 0..<1000 where pushedBack == nil {
                let id = "m-\(i)"
                let r = try await server.post("devices/d\(i % 8)/x", body: id + ":" + payload, headers: [("x-message-id", id)])
                switch r.status {
                case 202: accepted.append(id)
                case 503: pushedBack = r
                default: Issue.record("unexpected \(r.status): \(r.body)")
                }
            }
            self.accepted = accepted
            refusal = try #require(pushedBack, "no 503 after \(accepted.count) messages")
            #expect(refusal.body.contains("\"error\":\"backpressure\""))
            #expect(refusal.header("retry-after") == "1")
            #expect(server.app.ledger.snapshot().rejected.keys.contains { $0.second == "backpressure" })
        }

        /// The service comes back on the same port: everything accepted arrives (the circuit,
        /// open while it was down, probes again within 2 s here; by default within 60 s), and
        /// the node takes messages again.
        mutating func serviceReturnsAndEverythingArrives() async throws {
            svc = try await TestHTTPService.start(port: port)
            let got = await svc.waitFor(count: accepted.count, timeoutSeconds: 30)
            let arrived = Set(got.map { String($0.body.prefix { $0 != ":" }) })
            #expect(arrived.isSuperset(of: accepted), "\(Set(accepted).subtracting(arrived).count) accepted messages lost")
            await server.settle(timeoutSeconds: 10)
            #expect(server.app.pipeline.memoryBacklogBytes == 0)  // (always 0 with the journal on)
            #expect(try await server.post("devices/d0/x", body: "after").status == 202)
            let ledger = server.app.ledger.snapshot()
            #expect(ledger.balances)
            #expect(ledger.deadLetteredTotal == 0)
        }

        func stop() async {
            await server.stop()
            await svc.stop()
        }
    }

    @Test func journalCapPushesBackAndNothingAcceptedIsLost() async throws {
        var node = try await Filled(journal: "{max_bytes: 1MiB}")
        #expect(node.accepted.count > 100)  // ~1 MiB of 4 KiB messages went in first
        try await node.serviceReturnsAndEverythingArrives()
        await node.stop()
    }

    /// With the journal off the same cap bounds what waits in memory (else a service that is
    /// down or slow would grow the node until it runs out of memory, and lose everything).
    @Test func withTheJournalOffTheCapBoundsWhatIsHeldInMemory() async throws {
        var node = try await Filled(journal: "{enabled: false, max_bytes: 1MiB}")
        let server = node.server
        #expect(node.refusal.body.contains("in memory"), "\(node.refusal.body)")
        let batch = try await TestHTTPClient.request(
            "POST",
            port: server.httpPort,
            path: "/v1/batch",
            headers: [("content-type", "application/x-ndjson")],
            body: #"{"topic": "devices/d1/x", "payload": "in a batch"}"#
        )
        #expect(batch.status == 503, "\(batch.status) \(batch.body)")
        // An MQTT 5 publisher gets 0x97 (quota exceeded) with the reason, not a false acknowledgement.
        let mqtt = try await ProcessTests.runScenario(
            MQTTChannelTests.script,
            ["publish", String(try await server.mqttPort()), "5", "1", "1", "devices/m1/x"]
        )
        #expect(mqtt["acks"] as? [Int] == [0x97], "\(mqtt)")
        #expect((mqtt["reasons"] as? [String])?.first?.contains("backpressure") == true, "\(mqtt)")
        // Each 4 KiB message counts ~5.3 KiB (payload, topic, 1.25 KiB for what holds it): ~195 fit.
        #expect((150...260).contains(node.accepted.count), "\(node.accepted.count) accepted")
        let held = try await server.admin("GET", "/metrics").body
        let gauge = held.split(separator: "\n").first { $0.hasPrefix("switchyard_memory_backlog_bytes ") }
        let bytes = gauge.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        #expect(bytes > 1_048_576, "\(gauge.map(String.init) ?? "no switchyard_memory_backlog_bytes")")

        try await node.serviceReturnsAndEverythingArrives()
        await node.stop()
    }
}
