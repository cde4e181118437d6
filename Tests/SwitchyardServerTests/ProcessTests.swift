import Foundation
import SwitchyardTesting
import Testing

/// The `switchyard` binary as a user runs it: serve on a config file, reload on SIGHUP,
/// keep serving after a bad reload, shut down cleanly on SIGTERM.
@Suite(.serialized) struct ProcessTests {
    static let binary = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/debug/switchyard").path

    /// A port below the kernel's ephemeral range (32768+), so no port-0 listener or outgoing
    /// connection of a concurrent test holds it.
    static func freePort() -> Int { Int.random(in: 20_000...32_700) }

    /// Runs the binary to its end; returns its status and output (stdout, and stderr when `mergeErrors`).
    static func runBinary(_ args: [String], in dir: String? = nil, mergeErrors: Bool = true) async throws -> (Int32, String) {
        try await run(binary, args, in: dir, mergeErrors: mergeErrors)
    }

    /// Runs a program to its end; returns its status and output (stdout, and stderr when `mergeErrors`).
    static func run(_ path: String, _ args: [String], in dir: String? = nil, mergeErrors: Bool = true) async throws -> (Int32, String) {
        try await offloaded {
            let (status, output, _) = try Spawn.run(path, args, in: dir, mergeErrors: mergeErrors)
            return (status, String(decoding: output, as: UTF8.self))
        }
    }

    /// Runs blocking work (a child process to its end) on a thread of its own, not on the
    /// concurrency pool: two tests waiting on processes would otherwise stall every other test.
    static func offloaded<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try work() }) }.start()
        }
    }

    /// Runs a Python scenario script of Tests/Fixtures; returns the JSON object it prints (its
    /// exit status must be 0).
    static func runScenario(_ script: String, _ args: [String]) async throws -> [String: Any] {
        let (status, data, problem) = try await offloaded { try runScenarioBlocking(script, args) }
        try #require(status == 0, "scenario \(args) failed: \(problem)\n\(String(decoding: data, as: UTF8.self))")
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func runScenarioBlocking(_ script: String, _ args: [String]) throws -> (Int32, Data, String) {
        let (status, output, errors) = try Spawn.run("/usr/bin/env", ["python3", script] + args)
        return (status, output, String(decoding: errors, as: UTF8.self))
    }

    @Test func serveReloadsOnSIGHUPAndStopsOnSIGTERM() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build the binary first (scripts/test does)")
        let svc = try await TestHTTPService.start()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-proc-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let httpPort = Self.freePort()
        let adminPort = httpPort + 1
        func config(_ path: String) -> String {
            """
            listeners:
              http: {host: 127.0.0.1, port: \(httpPort)}
              admin: {host: 127.0.0.1, port: \(adminPort)}
              mqtt: {host: 127.0.0.1, port: 0}
              nacos: {host: 127.0.0.1, port: 0}
            routes:
              - {name: r, match: "^devices/(?<device>[^/]+)$", targets: [{service: s, path: "\(path)"}]}
            services:
              s: {instances: [{url: "\(svc.url)"}]}
            """
        }
        let configPath = "\(dir)/switchyard.yaml"
        try config("/v1/{device}").write(toFile: configPath, atomically: true, encoding: .utf8)

        let process = try Spawn.start(Self.binary, ["serve", "--config", configPath, "--data-dir", "\(dir)/data"])
        defer { process.terminate() }

        var ready = false
        for _ in 0..<100 where !ready {
            ready = (try? await TestHTTPClient.request("GET", port: adminPort, path: "/readyz"))?.status == 200
            if !ready { try await Task.sleep(nanoseconds: 50_000_000) }
        }
        #expect(ready)
        // First start generated the admin token into the data dir, readable by the owner only.
        let tokenPath = "\(dir)/data/admin-token"
        let attrs = try FileManager.default.attributesOfItem(atPath: tokenPath)
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let dataDirAttrs = try FileManager.default.attributesOfItem(atPath: "\(dir)/data")
        #expect((dataDirAttrs[.posixPermissions] as? NSNumber)?.intValue == 0o700)  // payloads live here
        let token = try String(contentsOfFile: tokenPath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count == 64)
        let routes = try await TestHTTPClient.request("GET", port: adminPort, path: "/admin/routes", headers: [("authorization", "Bearer \(token)")])
        #expect(routes.status == 200)

        #expect(try await TestHTTPClient.request("POST", port: httpPort, path: "/v1/messages/devices/a", body: "1").status == 202)
        #expect(await svc.waitFor(count: 1).last?.uri == "/v1/a")

        // Keep the mtime unchanged is impossible; SIGHUP right after writing exercises the signal path.
        try config("/v2/{device}").write(toFile: configPath, atomically: true, encoding: .utf8)
        process.signal(SIGHUP)
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try await TestHTTPClient.request("POST", port: httpPort, path: "/v1/messages/devices/b", body: "1").status == 202)
        #expect(await svc.waitFor(count: 2).last?.uri == "/v2/b")

        // A bad file: SIGHUP is answered with a logged rejection; the old routes keep serving.
        try "routes: [{oops".write(toFile: configPath, atomically: true, encoding: .utf8)
        process.signal(SIGHUP)
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(process.isRunning)
        #expect(try await TestHTTPClient.request("POST", port: httpPort, path: "/v1/messages/devices/c", body: "1").status == 202)
        #expect(await svc.waitFor(count: 3).last?.uri == "/v2/c")

        process.terminate()  // SIGTERM
        #expect(try await Self.offloaded { process.wait() } == 0)
        await svc.stop()
    }

    @Test func checkConfigExitCodes() async throws {
        func run(_ args: [String]) async throws -> (Int32, String) { try await Self.runBinary(args) }
        let root = URL(fileURLWithPath: Self.binary).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let (ok, _) = try await run(["check-config", "\(root)/examples/switchyard.yaml"])
        #expect(ok == 0)
        let (bad, text) = try await run(["check-config", "\(root)/Tests/Fixtures/broken.yaml"])
        #expect(bad == 1)
        #expect(text.contains("lanes[0].entry.percentage: must be between 0 and 100"))
        #expect(text.contains("routes[0].match: unbalanced \"(\" at offset 9"))
        let (missing, _) = try await run(["check-config", "/nonexistent.yaml"])
        #expect(missing == 1)
        let (explain, out) = try await run([
            "explain", "--config", "\(root)/examples/switchyard.yaml", "--topic", "devices/beta-lock/d1/telemetry",
        ])
        #expect(explain == 0)
        #expect(out.contains("\"lane\" : \"gray\""))
        #expect(out.contains("\"fallback_taken\" : false"))
    }
}

@Suite(.serialized) struct DefaultsProcessTests {
    /// `switchyard serve` with no config: embedded defaults, data dir in the working directory,
    /// survives SIGHUP (nothing to reload), stops cleanly on SIGINT.
    @Test func serveOnEmbeddedDefaults() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-defaults-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let process = try Spawn.start(ProcessTests.binary, ["serve"], in: dir)
        defer { process.terminate() }
        var ready = false
        for _ in 0..<100 where !ready {
            ready = (try? await TestHTTPClient.request("GET", port: 8090, path: "/readyz"))?.status == 200
            if !ready { try await Task.sleep(nanoseconds: 50_000_000) }
        }
        #expect(ready, "default admin port 8090 did not answer (is another switchyard running?)")
        #expect(FileManager.default.fileExists(atPath: "\(dir)/switchyard-data/admin-token"))
        let posted = try await TestHTTPClient.request("POST", port: 8080, path: "/v1/messages/devices/p/d/t", body: "{}")
        #expect(posted.status == 202)
        // The dlq CLI finds the node and its token by the defaults (./switchyard-data).
        let (listedStatus, listed) = try await ProcessTests.runBinary(["dlq", "list"], in: dir, mergeErrors: false)
        #expect(listedStatus == 0)
        #expect(listed.contains("\"reason\" : \"unrouted\""))
        // The registry on its default port (loopback, no auth), and the registry CLI.
        func registryCLI(_ args: String...) async throws -> (Int32, String) { try await ProcessTests.runBinary(args, in: dir, mergeErrors: false) }
        let form = [("content-type", "application/x-www-form-urlencoded")]
        for content in ["v%3A+1", "v%3A+2"] {
            let r = try await TestHTTPClient.request(
                "POST",
                port: 8848,
                path: "/nacos/v1/cs/configs",
                headers: form,
                body: "dataId=app.yaml&group=DEFAULT_GROUP&content=\(content)"
            )
            #expect(r.body == "true")
        }
        let registered = try await TestHTTPClient.request("POST", port: 8848, path: "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=9")
        #expect(registered.body == "ok")
        let (servicesStatus, services) = try await registryCLI("registry", "services")
        #expect(servicesStatus == 0 && services.contains("\"name\" : \"orders\""), "\(services)")
        let (_, instances) = try await registryCLI("registry", "instances", "orders")
        #expect(instances.contains("\"port\" : 9"), "\(instances)")
        let (_, history) = try await registryCLI("registry", "history", "app.yaml")
        let revisions = try #require(try JSONSerialization.jsonObject(with: Data(history.utf8)) as? [[String: Any]])
        #expect(revisions.compactMap { $0["content"] as? String } == ["v: 2", "v: 1"])
        let first = try #require(revisions.last?["revision"] as? Int)
        let (rolled, _) = try await registryCLI("registry", "rollback", "app.yaml", String(first))
        #expect(rolled == 0)
        let now = try await TestHTTPClient.request("GET", port: 8848, path: "/nacos/v1/cs/configs?dataId=app.yaml&group=DEFAULT_GROUP")
        #expect(now.body == "v: 1")
        let (refused, _) = try await registryCLI("registry", "rollback", "app.yaml", "999999")
        #expect(refused != 0)
        process.signal(SIGHUP)
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(process.isRunning)
        process.signal(SIGINT)
        #expect(try await ProcessTests.offloaded { process.wait() } == 0)
    }

    /// The registry load tool runs end to end (small numbers: a smoke run) and fails on a lost
    /// instance or a missed wake-up.
    @Test func benchRegistryRuns() async throws {
        let (status, out) = try await ProcessTests.runBinary([
            "bench", "registry", "--instances", "300", "--beat-seconds", "2", "--listeners", "20", "--publishes", "2",
        ])
        #expect(status == 0, "\(out)")
        #expect(out.contains("registrations: 300 in"), "\(out)")
        #expect(out.contains("healthy after beating: 300 of 300"), "\(out)")
        #expect(out.contains("20 listeners × 2 publishes = 40 wake-ups"), "\(out)")
    }

    /// The HTTP benchmark runs end to end, one message per request and in batches both ways
    /// (a smoke run): every message's stamp reaches the sink and is counted once.
    @Test func benchHTTPRunsAndLosesNothing() async throws {
        let (status, out) = try await ProcessTests.runBinary(["bench", "http", "--messages", "2000", "--connections", "4", "--depth", "2"])
        #expect(status == 0, "\(out)")
        #expect(out.contains("2000 sent, 2000 accepted (202), 2000 delivered"), "\(out)")
        let (batchStatus, batchOut) = try await ProcessTests.runBinary([
            "bench", "http", "--messages", "2000", "--connections", "2", "--depth", "2", "--ingest-batch", "50", "--batch", "50",
        ])
        #expect(batchStatus == 0, "\(batchOut)")
        #expect(batchOut.contains("2000 sent, 2000 accepted (202), 2000 delivered"), "\(batchOut)")
    }

    /// The MQTT load tool runs end to end against a Switchyard it starts (a smoke run: small
    /// numbers; the figures are the benchmark's business, not this test's) and fails on loss.
    @Test func benchMQTTRunsAndLosesNothing() async throws {
        let (status, out) = try await ProcessTests.runBinary([
            "bench", "mqtt", "--messages", "1000", "--publishers", "10", "--pairs", "5", "--idle-connections", "200", "--qos", "0,1", "--pipeline",
            "--duration", "30",
        ])
        #expect(status == 0, "\(out)")
        for scenario in ["fan-in 10→1, QoS 0", "pairs 5×1→1, QoS 1", "fan-in 10→1, QoS 1, pipeline on"] {
            #expect(out.contains("switchyard: \(scenario): 1000/1000 received"), "\(scenario): \(out)")
        }
        #expect(out.contains("sink received 1000 of 1000 forwarded messages"), "\(out)")
        #expect(out.contains("200 idle connections"), "\(out)")
    }

    /// `bench mqtt pub --rate` paces each publisher: 50 messages at 100/s take at least 0.49 s
    /// from the first to the last, however fast the broker acknowledges them.
    @Test func benchMQTTPubKeepsItsRate() async throws {
        let server = try await TestServer.start(
            """
            channels:
              mqtt: {allow_anonymous: true}
            """
        )
        let port = String(try await server.mqttPort())
        let (status, out) = try await ProcessTests.runBinary([
            "bench", "mqtt", "pub", "--port", port, "--clients", "2", "--count", "50", "--rate", "100", "--qos", "1", "--duration", "30",
        ])
        #expect(status == 0, "\(out)")
        #expect(out.contains("pub: 2 clients sent 100 (acknowledged 100)"), "\(out)")
        let seconds = out.firstMatch(of: /sent 100 \(acknowledged 100\) in ([0-9.]+) s/).flatMap { Double($0.1) }
        #expect((seconds ?? 0) >= 0.49, "\(out)")
        await server.stop()
    }
}
