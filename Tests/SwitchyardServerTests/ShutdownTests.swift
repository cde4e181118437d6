import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1
import SwitchyardTesting
import Testing

/// Lossless offline for Switchyard itself: on SIGTERM it reports not ready at once and keeps
/// serving for `node.shutdown_delay` before its listeners stop.
@Suite struct ShutdownTests {
    @Test func notReadyFirstThenServingForTheDelayThenGone() async throws {
        let svc = try await TestHTTPService.start()
        let node = try CrashTests.Node(
            """
            node: {shutdown_delay: 6s}
            gateway: {routes: [{name: api, path_prefix: /api, service: s}]}
            services: {s: {instances: [{url: "\(svc.url)"}]}}
            """,
            name: "shutdown"
        )
        defer { node.cleanUp() }
        let (httpPort, adminPort) = (node.httpPort, node.adminPort)
        try await node.start()
        let process = try #require(node.process)
        let signalled = Date()
        process.terminate()
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try await TestHTTPClient.request("GET", port: adminPort, path: "/readyz").status == 503)
        // Still serving during the delay: requests and messages are not refused.
        #expect(try await TestHTTPClient.request("GET", port: httpPort, path: "/api/x", body: "").status == 200)
        #expect(try await TestHTTPClient.request("POST", port: httpPort, path: "/v1/messages/devices/p/d/t", body: "{}").status == 202)
        let status = try await ProcessTests.offloaded { process.wait() }
        let took = Date().timeIntervalSince(signalled)
        #expect(took >= 6, "exited after \(took) s, before the shutdown delay")
        #expect(status == 0)
    }
}

/// Switchyard itself restarted with SIGTERM under load: clients that retry when the connection
/// is refused or cut see no failed request, and no accepted message is lost.
@Suite struct RestartUnderLoadTests {
    @Test func aSIGTERMRestartUnderLoadFailsNothing() async throws {
        let svc = try await TestHTTPService.start()
        let node = try CrashTests.Node(
            """
            node: {shutdown_delay: 1s}
            gateway: {routes: [{name: api, path_prefix: /api, service: s}]}
            routes:
              - {name: m, match: "^devices/.+$", targets: [{service: s, path: /msg}]}
            services: {s: {instances: [{url: "\(svc.url)"}]}}
            """,
            name: "restart"
        )
        defer { node.cleanUp() }
        try await node.start()
        let port = node.httpPort
        let running = NIOLockedValueBox(true)
        let outcome = NIOLockedValueBox((requests: 0, failed: [Int](), retriedConnections: 0, accepted: Set<String>()))
        /// Sends until an answer comes, retrying (50 ms apart) while the connection is refused or cut.
        @Sendable func send(_ client: KeepAliveHTTPClient, _ method: HTTPMethod, _ path: String, _ headers: [(String, String)], _ body: String) async
            -> Int
        {
            while true {
                if let status = try? await client.request(method, path, headers: headers, body: body, timeoutSeconds: 10) { return status }
                outcome.withLockedValue { $0.retriedConnections += 1 }
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
        }
        var tasks: [Task<Void, Never>] = []
        for c in 0..<3 {
            tasks.append(
                Task {
                    let client = KeepAliveHTTPClient(port: port)
                    var n = 0
                    while running.withLockedValue({ $0 }) {
                        n += 1
                        let status = await send(client, .GET, "/api/\(c)/\(n)", [], "")
                        outcome.withLockedValue { o in
                            o.requests += 1
                            if status != 200 { o.failed.append(status) }
                        }
                        let id = "c\(c)-\(n)"
                        let accepted = await send(client, .POST, "/v1/messages/devices/p/d\(c)/t", [("x-message-id", id)], id)
                        outcome.withLockedValue { o in
                            if accepted == 202 { o.accepted.insert(id) } else { o.failed.append(accepted) }
                        }
                        try? await Task.sleep(nanoseconds: 5_000_000)
                    }
                    await client.close()
                }
            )
        }
        /// Load time is counted in requests, not seconds: a loaded machine is slow.
        func waitFor(requests: Int) async throws {
            for _ in 0..<600 where outcome.withLockedValue({ $0.requests }) < requests { try await Task.sleep(nanoseconds: 50_000_000) }
        }
        try await waitFor(requests: 30)
        let process = try #require(node.process)
        process.terminate()
        try await ProcessTests.offloaded { process.wait() }
        try await node.start()  // same ports, same data dir: the journal is recovered
        try await waitFor(requests: outcome.withLockedValue { $0.requests } + 30)
        running.withLockedValue { $0 = false }
        for task in tasks { await task.value }
        let (requests, failed, retried, accepted) = outcome.withLockedValue { ($0.requests, $0.failed, $0.retriedConnections, $0.accepted) }
        var delivered = Set<String>()
        for _ in 0..<200 {
            delivered = Set(svc.received.filter { $0.uri == "/msg" }.map(\.body))
            if accepted.isSubset(of: delivered) { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        print(
            "SIGTERM restart under load: \(requests) requests, \(failed.count) failed \(failed), \(retried) connection retries; \(accepted.count) messages accepted, \(accepted.subtracting(delivered).count) not delivered"
        )
        #expect(failed.isEmpty && requests >= 60)
        #expect(accepted.count >= 60 && accepted.isSubset(of: delivered))
    }
}
