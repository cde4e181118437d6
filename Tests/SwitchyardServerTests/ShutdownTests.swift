import Foundation
import SwitchyardTesting
import Testing

/// Lossless offline for Switchyard itself: on SIGTERM it reports not ready at once and keeps
/// serving for `node.shutdown_delay` before its listeners stop.
@Suite struct ShutdownTests {
    @Test func notReadyFirstThenServingForTheDelayThenGone() async throws {
        let svc = try await TestHTTPService.start()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-shutdown-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let httpPort = Int.random(in: 20_000...39_000)
        let adminPort = httpPort + 1
        try """
        node: {shutdown_delay: 6s}
        listeners:
          http: {host: 127.0.0.1, port: \(httpPort)}
          admin: {host: 127.0.0.1, port: \(adminPort)}
          mqtt: {host: 127.0.0.1, port: 0}
          nacos: {host: 127.0.0.1, port: 0}
        telemetry: {log_level: error}
        gateway: {routes: [{name: api, path_prefix: /api, service: s}]}
        services: {s: {instances: [{url: "\(svc.url)"}]}}
        """.write(toFile: "\(dir)/switchyard.yaml", atomically: true, encoding: .utf8)
        let node = CrashTests.Node(configPath: "\(dir)/switchyard.yaml", dataDir: "\(dir)/data", adminPort: adminPort)
        try await node.start()
        defer { node.stop() }
        let process = try #require(node.process)
        let signalled = Date()
        kill(process.processIdentifier, SIGTERM)
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try await TestHTTPClient.request("GET", port: adminPort, path: "/readyz").status == 503)
        // Still serving during the delay: requests and messages are not refused.
        #expect(try await TestHTTPClient.request("GET", port: httpPort, path: "/api/x", body: "").status == 200)
        #expect(try await TestHTTPClient.request("POST", port: httpPort, path: "/v1/messages/devices/p/d/t", body: "{}").status == 202)
        try await ProcessTests.offloaded { process.waitUntilExit() }
        let took = Date().timeIntervalSince(signalled)
        #expect(took >= 6, "exited after \(took) s, before the shutdown delay")
        #expect(process.terminationStatus == 0)
    }
}
