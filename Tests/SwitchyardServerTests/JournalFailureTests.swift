import Foundation
import SwitchyardTesting
import Testing

/// The journal cannot write (here: a file-size limit, as `ulimit -f` sets it; a full disk
/// behaves alike): the senders of the failed batch get 503 `journal_unavailable`, nothing
/// acknowledged is lost, and appends work again without a restart.
@Suite(.serialized) struct JournalFailureTests {
    @Test func writeErrorsRefuseThenRecoverWithoutARestart() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit"), "prlimit (util-linux) is needed")
        let svc = try await TestHTTPService.start()
        let node = try CrashTests.Node(
            """
            registry: {enabled: false}  # its SQLite file would hit the 64 KiB limit meant for the journal
            telemetry: {log_level: info}  # the recovery line is read below
            routes:
              - {name: r, match: "^devices/(?<device>[^/]+)$", targets: [{service: s, path: "/in/{device}"}]}
            services:
              s: {instances: [{url: "\(svc.url)"}]}
            """,
            name: "fsize"
        )
        defer { node.cleanUp() }
        let (httpPort, adminPort, configPath, dir) = (node.httpPort, node.adminPort, node.configPath, node.dir)

        // No file of the process may grow past 64 KiB: every few dozen messages a write fails.
        let process = try Spawn.start(
            "/usr/bin/prlimit",
            ["--fsize=65536", "--", ProcessTests.binary, "serve", "--config", configPath, "--data-dir", "\(dir)/data"]
        )
        defer { process.terminate() }
        var ready = false
        for _ in 0..<200 where !ready {
            ready = (try? await TestHTTPClient.request("GET", port: adminPort, path: "/readyz"))?.status == 200
            if !ready { try await Task.sleep(nanoseconds: 25_000_000) }
        }
        try #require(ready)

        let payload = String(repeating: "x", count: 1000)
        var refused = 0
        var refusal = ""
        for i in 0..<200 {
            // A device retries until it is acknowledged.
            for _ in 0..<100 {
                let r = try await TestHTTPClient.request(
                    "POST",
                    port: httpPort,
                    path: "/v1/messages/devices/d\(i % 5)",
                    headers: [("x-message-id", "m-\(i)")],
                    body: payload
                )
                if r.status == 202 { break }
                #expect(r.status == 503)
                refused += 1
                refusal = r.body
                try await Task.sleep(nanoseconds: 20_000_000)
            }
        }
        print("journal write failures: \(refused) refusals while 200 messages of 1 KB went through a 64 KiB file-size limit")
        #expect(refused > 0)
        #expect(refusal.contains("journal_unavailable"))
        let received = await svc.waitFor(count: 200)
        #expect(Set(received.compactMap { $0.header("x-switchyard-message-id") }) == Set((0..<200).map { "m-\($0)" }))

        let metrics = try await TestHTTPClient.request("GET", port: adminPort, path: "/metrics").body
        #expect(metrics.contains("switchyard_journal_write_errors_total"))
        #expect(metrics.contains(#"switchyard_messages_rejected_total{channel="http",reason="journal_unavailable"}"#))
        #expect(try await TestHTTPClient.request("GET", port: adminPort, path: "/readyz").status == 200)  // recovered
        process.terminate()
        #expect(try await ProcessTests.offloaded { process.wait() } < 128, "ended by a signal, not by its own exit")

        // Nothing left to redeliver and nothing torn: every acknowledged message was settled.
        let again = try Spawn.start(
            ProcessTests.binary,
            ["serve", "--config", configPath, "--data-dir", "\(dir)/data"],
            output: .pipe,
            errors: .output
        )
        defer { again.terminate() }
        ready = false
        for _ in 0..<200 where !ready {
            ready = (try? await TestHTTPClient.request("GET", port: adminPort, path: "/readyz"))?.status == 200
            if !ready { try await Task.sleep(nanoseconds: 25_000_000) }
        }
        try #require(ready)
        again.terminate()
        let output = try await ProcessTests.offloaded { again.readOutput() }
        #expect(output.contains("journal recovered"))
        #expect(output.contains("redeliver=0"))
        await svc.stop()
    }
}
