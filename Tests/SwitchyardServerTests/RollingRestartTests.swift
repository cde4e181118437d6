import Foundation
import NIOConcurrencyHelpers
import SwitchyardTesting
import Testing

/// A rolling restart under load: three registered instances of a service are drained (and so
/// deregistered by Switchyard), stopped, restarted and registered again in turn while requests go through
/// the gateway and messages through the HTTP channel. With the lossless steps nothing fails,
/// nothing is lost, and each restarted instance's share climbs the warm-up curve; the same
/// restart done abruptly is run beside it and its failures printed.
@Suite(.serialized) struct RollingRestartTests {
    final class Load: @unchecked Sendable {
        let requests = NIOLockedValueBox((sent: 0, failed: 0, statuses: [Int: Int]()))
        let messages = NIOLockedValueBox((accepted: Set<String>(), refused: 0))
        let running = NIOLockedValueBox(true)
        var tasks: [Task<Void, Never>] = []

        func start(port: Int, clients: Int) {
            for c in 0..<clients {
                tasks.append(
                    Task {
                        let client = KeepAliveHTTPClient(port: port)
                        while running.withLockedValue({ $0 }) {
                            let status = try? await client.request(.GET, "/api/item/\(c)", timeoutSeconds: 5)
                            requests.withLockedValue { r in
                                r.sent += 1
                                if status != 200 { r.failed += 1 }
                                r.statuses[status ?? 0, default: 0] += 1
                            }
                            try? await Task.sleep(nanoseconds: 4_000_000)
                        }
                        await client.close()
                    }
                )
            }
            tasks.append(
                Task {
                    let client = KeepAliveHTTPClient(port: port)
                    var n = 0
                    while running.withLockedValue({ $0 }) {
                        n += 1
                        let id = "m-\(n)"
                        let status = try? await client.post("/v1/messages/orders/m", headers: [("x-message-id", id)], body: id, timeoutSeconds: 5)
                        messages.withLockedValue { m in
                            if status == 202 { m.accepted.insert(id) } else { m.refused += 1 }
                        }
                        try? await Task.sleep(nanoseconds: 10_000_000)
                    }
                    await client.close()
                }
            )
        }

        func stop() async {
            running.withLockedValue { $0 = false }
            for task in tasks { await task.value }
        }
    }

    static func yaml() -> String {
        """
        registry: {health_check_interval: 1s}
        resilience: {warmup: {duration: 6s, aggression: 1, min_percent: 10}}
        gateway:
          routes: [{name: api, path_prefix: /api, service: orders}]
        routes:
          - {name: orders, match: "^orders/.+$", targets: [{service: orders, path: /msg, retries: 5}]}
        """
    }

    /// Registers (POST) or deregisters (DELETE) a persistent instance of `orders` (TCP-checked).
    static func registry(_ method: String, _ nacos: Int, _ port: Int) async throws {
        let path = "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(port)&ephemeral=false"
        let answer = try await TestHTTPClient.request(method, port: nacos, path: path, body: "")
        try #require(answer.status == 200, "\(method) \(path): \(answer.body)")
    }

    /// Requests an instance got among all the gateway's requests, per second, for `seconds`.
    static func shares(of instance: TestHTTPService, among all: @Sendable () -> Int, seconds: Int) async throws -> [(mine: Int, all: Int)] {
        var shares: [(mine: Int, all: Int)] = []
        for _ in 0..<seconds {
            let (mine, total) = (instance.received.filter { $0.uri.hasPrefix("/api") }.count, all())
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let (mine2, total2) = (instance.received.filter { $0.uri.hasPrefix("/api") }.count, all())
            shares.append((mine2 - mine, total2 - total))
        }
        return shares
    }

    @Test func aRollingRestartLosesNothingAndWarmsUp() async throws {
        let server = try await TestServer.start(Self.yaml())
        let nacos = try await RegistryAPITests.nacosPort(server)
        var instances = try await [TestHTTPService.startRestartable(), TestHTTPService.startRestartable(), TestHTTPService.startRestartable()]
        let everyone = NIOLockedValueBox(instances)
        for instance in instances { try await Self.registry("POST", nacos, instance.port) }
        try await Task.sleep(nanoseconds: 300_000_000)
        let load = Load()
        load.start(port: server.httpPort, clients: 4)
        try await Task.sleep(nanoseconds: 1_500_000_000)
        let total: @Sendable () -> Int = { everyone.withLockedValue { $0.reduce(0) { $0 + $1.received.filter { $0.uri.hasPrefix("/api") }.count } } }
        for i in 0..<3 {
            let port = instances[i].port
            let id = "orders@127.0.0.1:\(port)"
            // 1. Drain: no new requests from now on; once the in-flight ones are done the drain
            // completes and Switchyard deregisters the instance.
            #expect(try await server.admin("POST", "/admin/instances/\(id)/drain").status == 200)
            let state = try await server.drainState(id)
            #expect(state.contains("\"drain\":\"completed\"") && state.contains("\"registry\":\"deregistered\""), "\(state)")
            let listed = try await TestHTTPClient.request("GET", port: nacos, path: "/nacos/v1/ns/instance/list?serviceName=orders").body
            #expect(!listed.contains("\"port\":\(port)"), "\(listed)")
            let before = instances[i].received.count
            // 2. Stop (connections cut, as when the process exits), 3. start again and register.
            await instances[i].stop(closingConnections: true)
            #expect(instances[i].received.count == before)  // nothing reached it after the drain
            try await Task.sleep(nanoseconds: 300_000_000)
            let restarted = try await TestHTTPService.start(port: port)
            instances[i] = restarted
            everyone.withLockedValue { $0.append(restarted) }
            try await Self.registry("POST", nacos, port)
            let counts = try await Self.shares(of: restarted, among: total, seconds: 7)
            let shares = counts.map { $0.all > 0 ? Double($0.mine) / Double($0.all) : 0 }
            // Judged over spans, not single seconds: on a loaded machine a second may hold a
            // handful of requests.
            func share(_ span: ArraySlice<(mine: Int, all: Int)>) -> Double {
                let all = span.reduce(0) { $0 + $1.all }
                return all > 0 ? Double(span.reduce(0) { $0 + $1.mine }) / Double(all) : 0
            }
            let (early, late) = (share(counts.prefix(2)), share(counts.suffix(3)))
            print(
                "instance \(i + 1) restarted; its share of requests per second: \(shares.map { String(format: "%.0f%%", $0 * 100) }.joined(separator: " "))"
            )
            #expect(early < late, "the share should climb while warming up: \(shares)")
            #expect(late > 0.1, "\(shares)")
        }
        await load.stop()
        let (sent, failed, statuses) = load.requests.withLockedValue { ($0.sent, $0.failed, $0.statuses) }
        print("lossless rolling restart: \(sent) requests, \(failed) failed \(statuses)")
        #expect(failed == 0 && sent > 200)
        // Every accepted message arrives (at least once) and none is dead-lettered.
        let accepted = load.messages.withLockedValue { $0.accepted }
        var delivered = Set<String>()
        for _ in 0..<200 {
            delivered = Set(everyone.withLockedValue { $0.flatMap { $0.received.filter { $0.uri == "/msg" }.map(\.body) } })
            if accepted.isSubset(of: delivered) { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(accepted.count > 100 && accepted.isSubset(of: delivered), "\(accepted.subtracting(delivered).count) not delivered")
        let letters = try await server.admin("GET", "/admin/dead-letters").body
        #expect(!letters.contains("\"reason\""), "\(letters)")
    }

    /// The same restarts done abruptly (no drain, no deregistration: the health check notices):
    /// the failures are printed, to show what the lossless steps save; messages are still safe.
    @Test func theSameRestartsAbruptly() async throws {
        let server = try await TestServer.start(Self.yaml())
        let nacos = try await RegistryAPITests.nacosPort(server)
        var instances = try await [TestHTTPService.startRestartable(), TestHTTPService.startRestartable(), TestHTTPService.startRestartable()]
        for instance in instances { try await Self.registry("POST", nacos, instance.port) }
        try await Task.sleep(nanoseconds: 300_000_000)
        let load = Load()
        load.start(port: server.httpPort, clients: 4)
        try await Task.sleep(nanoseconds: 1_500_000_000)
        for i in 0..<3 {
            let port = instances[i].port
            await instances[i].stop(closingConnections: true)
            try await Task.sleep(nanoseconds: 300_000_000)
            instances[i] = try await TestHTTPService.start(port: port)
            try await Task.sleep(nanoseconds: 2_000_000_000)
        }
        await load.stop()
        let (sent, failed, statuses) = load.requests.withLockedValue { ($0.sent, $0.failed, $0.statuses) }
        print("abrupt rolling restart (lossless steps off): \(sent) requests, \(failed) failed \(statuses)")
        #expect(sent > 200)
        let letters = try await server.admin("GET", "/admin/dead-letters").body
        #expect(!letters.contains("\"reason\""), "\(letters)")
    }
}
