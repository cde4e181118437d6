import Foundation
import SwitchyardTesting
import Testing

/// received = forwarded + rejected + dead_lettered + in_flight at every scrape, under load,
/// with a service that fails and a filter that rejects.
@Suite(.serialized) struct AccountingTests {
    @Test func identityHoldsAtEveryScrapeUnderLoad() async throws {
        let ok = try await TestHTTPService.start()
        let failing = try await TestHTTPService.start(status: 503)
        let server = try await TestServer.start(
            """
            filters:
              - devices: {deny: [banned]}
            routes:
              - {name: good, match: "^devices/[^/]+/[^/]+/good$", targets: [{service: ok, retries: 0}]}
              - name: bad
                match: "^devices/[^/]+/[^/]+/bad$"
                targets: [{service: failing, retries: 2, backoff: {base: 5ms, max: 10ms}}]
            services:
              ok: {instances: [{url: "\(ok.url)"}]}
              failing: {instances: [{url: "\(failing.url)"}], circuit: {failures: 0}}  # dead letters, not waiting
            """
        )
        let total = 1200
        let scrapes = await withTaskGroup(of: [ScrapedLedger].self) { group in
            for worker in 0..<12 {
                group.addTask {
                    for i in stride(from: worker, to: total, by: 12) {
                        let device = i % 10 == 0 ? "banned" : "d\(i % 50)"
                        let kind = ["good", "bad", "unrouted"][i % 3]
                        _ = try? await server.post("devices/p/\(device)/\(kind)")
                    }
                    return []
                }
            }
            group.addTask {
                var seen: [ScrapedLedger] = []
                for _ in 0..<40 {
                    if let page = try? await server.admin("GET", "/metrics", token: nil) { seen.append(ScrapedLedger(page.body)) }
                    try? await Task.sleep(nanoseconds: 5_000_000)
                }
                return seen
            }
            var all: [ScrapedLedger] = []
            for await s in group { all += s }
            return all
        }
        #expect(scrapes.count >= 30)
        for s in scrapes { #expect(s.balances, "received \(s.received) ≠ \(s.forwarded)+\(s.rejected)+\(s.deadLettered)+\(s.inFlight)") }
        #expect(scrapes.contains { $0.inFlight > 0 || $0.received > 0 })

        await server.settle()
        let final = ScrapedLedger(try await server.admin("GET", "/metrics", token: nil).body)
        #expect(final.received == Double(total))
        #expect(final.rejected == Double(total / 10))
        #expect(final.inFlight == 0)
        #expect(final.forwarded > 0 && final.deadLettered > 0)
        #expect(final.balances)
        let metrics = try await server.admin("GET", "/metrics", token: nil).body
        #expect(metrics.contains(#"switchyard_messages_dead_lettered_total{route="bad",reason="service_error"}"#))
        #expect(metrics.contains(#"switchyard_messages_dead_lettered_total{route="(unrouted)",reason="unrouted"}"#))
        #expect(metrics.contains(#"switchyard_messages_rejected_total{channel="http",reason="device_denied"}"#))
        #expect(metrics.contains(#"switchyard_messages_retried_total{route="bad"}"#))
        #expect(metrics.contains("switchyard_forward_duration_seconds_bucket"))
        for name in [
            "switchyard_journal_backlog_bytes", "switchyard_journal_unsettled_messages 0", "switchyard_journal_fsyncs_total",
            "switchyard_messages_journaled_total", "switchyard_journal_commit_duration_seconds_bucket",
        ] {
            #expect(metrics.contains(name), "missing \(name)")
        }
        await server.stop()
        await ok.stop()
        await failing.stop()
    }
}
