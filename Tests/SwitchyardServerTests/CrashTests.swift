import Foundation
import NIOConcurrencyHelpers
import SwitchyardTesting
import Testing

/// Acceptance means durability: a server killed with SIGKILL three times while 20,000
/// messages stream in loses none that it answered 202 for, and keeps each device's order.
@Suite(.serialized) struct CrashTests {
    final class Node: @unchecked Sendable {
        // @unchecked: only the test's killer task touches `process` after the start.
        let configPath: String
        let dataDir: String
        let adminPort: Int
        /// The HTTP listener's port (admin is the next one).
        let httpPort: Int
        /// The node's own directory (config and data), removed by `cleanUp`.
        let dir: String
        var process: Spawn.Child?

        /// A node in a fresh directory on random loopback ports (http, admin = http + 1; MQTT
        /// and Nacos on any port), its config the listeners plus `yaml`. Not started yet.
        init(_ yaml: String, name: String) throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-\(name)-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            // Below the kernel's ephemeral range (32768+), where other tests' port-0 listeners
            // and outgoing connections take ports, and above startRestartable's 10000–19999.
            httpPort = Int.random(in: 20_000...32_700)
            adminPort = httpPort + 1
            configPath = "\(dir)/switchyard.yaml"
            dataDir = "\(dir)/data"
            try """
            listeners:
              http: {host: 127.0.0.1, port: \(httpPort)}
              admin: {host: 127.0.0.1, port: \(adminPort)}
              mqtt: {host: 127.0.0.1, port: 0}
              nacos: {host: 127.0.0.1, port: 0}
            \(yaml.contains("telemetry:") ? "" : "telemetry: {log_level: error}")
            \(yaml)
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        }

        func cleanUp() {
            stop()
            try? FileManager.default.removeItem(atPath: dir)
        }

        func start() async throws {
            // Its log (errors only, unless the test's config says otherwise) goes to a file in its
            // directory: a start that fails says why.
            let p = try Spawn.start(ProcessTests.binary, ["serve", "--config", configPath, "--data-dir", dataDir], errors: .file("\(dir)/node.log"))
            process = p
            for _ in 0..<1200 {  // 30 s: a loaded machine starts slowly
                if (try? await TestHTTPClient.request("GET", port: adminPort, path: "/readyz"))?.status == 200 { return }
                if !p.isRunning {
                    throw TestClientError(message: "switchyard exited with status \(p.wait()) before it was ready: \(lastLogLines())")
                }
                try await Task.sleep(nanoseconds: 25_000_000)
            }
            throw TestClientError(message: "switchyard did not become ready within 30 s: \(lastLogLines())")
        }

        /// The end of the node's log, for a failure's message.
        func lastLogLines() -> String {
            let text = (try? String(contentsOfFile: "\(dir)/node.log", encoding: .utf8)) ?? ""
            let lines = text.split(separator: "\n").suffix(5)
            return lines.isEmpty ? "(nothing logged)" : lines.joined(separator: " | ")
        }

        func kill9() {
            guard let p = process else { return }
            p.signal(SIGKILL)
            p.wait()
        }

        func stop() {
            guard let p = process, p.isRunning else { return }
            p.terminate()
            p.wait()
        }
    }

    @Test func sigkillThreeTimesLosesNothingAcknowledged() async throws {
        let svc = try await TestHTTPService.start()
        let node = try Node(
            """
            routes:
              - {name: seq, match: "^devices/(?<device>[^/]+)/seq$", targets: [{service: s, path: "/in/{device}", retries: 5}]}
            services:
              s: {instances: [{url: "\(svc.url)"}]}
            """,
            name: "crash"
        )
        defer { node.cleanUp() }
        let httpPort = node.httpPort
        try await node.start()

        let devices = 50
        let perDevice = 400  // 20,000 messages
        let total = devices * perDevice
        let acknowledged = NIOLockedValueBox(Set<String>())
        let progress = NIOLockedValueBox(0)

        try await withThrowingTaskGroup(of: Void.self) { group in
            for d in 0..<devices {
                group.addTask {
                    let client = KeepAliveHTTPClient(port: httpPort)
                    for seq in 1...perDevice {
                        let key = "d\(d):\(seq)"
                        // A sender retries until it gets its 202 (refused while the node is down).
                        var attempts = 0
                        while true {
                            attempts += 1
                            if let status = try? await client.post(
                                "/v1/messages/devices/d\(d)/seq",
                                headers: [("x-message-id", key)],
                                body: key,
                                timeoutSeconds: 5
                            ), status == 202 {
                                break
                            }
                            if attempts > 2000 { throw TestClientError(message: "\(key) never accepted") }
                            try await Task.sleep(nanoseconds: 20_000_000)
                        }
                        acknowledged.withLockedValue { _ = $0.insert(key) }
                        progress.withLockedValue { $0 += 1 }
                    }
                    await client.close()
                }
            }
            group.addTask {
                // Kill at three random moments spread over the run, restart each time.
                for window in [(0.1, 0.3), (0.4, 0.6), (0.7, 0.85)] {
                    let at = Int(Double(total) * Double.random(in: window.0...window.1))
                    while progress.withLockedValue({ $0 }) < at { try await Task.sleep(nanoseconds: 5_000_000) }
                    node.kill9()
                    try await node.start()
                }
            }
            try await group.waitForAll()
        }

        // Every acknowledged message reaches the service at least once.
        let acked = acknowledged.withLockedValue { $0 }
        #expect(acked.count == total)
        let deadline = Date().addingTimeInterval(60)
        var arrived: [TestHTTPService.Received] = []
        while Date() < deadline {
            arrived = svc.received
            if Set(arrived.map(\.body)).isSuperset(of: acked) { break }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        let keys = Set(arrived.map(\.body))
        let lost = acked.subtracting(keys)
        #expect(lost.isEmpty, "\(lost.count) acknowledged messages never arrived, e.g. \(lost.sorted().prefix(5))")

        // Each device's first arrivals come in sequence order; repeats are duplicates.
        var maxSeen: [String: Int] = [:]
        var seen = Set<String>()
        var duplicates = 0
        var outOfOrder: [String] = []
        for r in arrived {
            let parts = r.body.split(separator: ":")
            guard parts.count == 2, let seq = Int(parts[1]) else { continue }
            let device = String(parts[0])
            if !seen.insert(r.body).inserted {
                duplicates += 1
                continue
            }
            if seq < maxSeen[device, default: 0] { outOfOrder.append(r.body) }
            maxSeen[device] = max(maxSeen[device, default: 0], seq)
        }
        #expect(outOfOrder.isEmpty, "out of order: \(outOfOrder.prefix(5))")
        print("crash test: \(total) acknowledged, \(arrived.count) deliveries, \(duplicates) duplicates, \(lost.count) lost, 3 × SIGKILL")
        await svc.stop()
    }
}
