import Foundation
import SwitchyardTesting
import Testing

/// A full redeploy: once every instance of a service is new, the gateway admits only a third of
/// the service's usual concurrency at first (the rest wait their turn at the edge, none fails).
@Suite struct ColdFleetTests {
    static func burst(_ server: TestServer, _ count: Int) async throws -> [Int] {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<count {
                group.addTask { try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/\(i)").status }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }

    @Test func aColdFleetIsNotFlooded() async throws {
        let server = try await TestServer.start(
            """
            resilience: {warmup: {duration: 60s}}
            gateway:
              routes: [{name: api, path_prefix: /api, service: orders, timeout: 10s}]
            """
        )
        let nacos = try await RegistryAPITests.nacosPort(server)
        func registry(_ method: String, _ port: Int) async throws {
            let path = "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(port)"
            #expect(try await TestHTTPClient.request(method, port: nacos, path: path, body: "").status == 200)
        }
        let old = try await [TestHTTPService.start(), TestHTTPService.start()]
        for service in old {
            // Long enough for all twelve to overlap on a loaded machine (1 s once saw only 7 at
            // once while the whole suite ran).
            service.setDelay(seconds: 2)
            try await registry("POST", service.port)
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        // The usual load: 12 requests at once.
        #expect(try await Self.burst(server, 12).allSatisfy { $0 == 200 })
        let peak = old.map(\.maxConcurrent).reduce(0, +)
        #expect(peak >= 9, "the twelve requests should overlap: \(old.map(\.maxConcurrent))")
        // Redeploy: new instances in, old ones out.
        let new = try await [TestHTTPService.start(), TestHTTPService.start()]
        for service in new {
            service.setDelay(seconds: 0.3)
            try await registry("POST", service.port)
        }
        for service in old { try await registry("DELETE", service.port) }
        try await Task.sleep(nanoseconds: 200_000_000)
        let started = ContinuousClock.now
        let statuses = try await Self.burst(server, 12)
        let took = ContinuousClock.now - started
        // The limit is a third of the peak Switchyard saw (at most 12 here: at most 4).
        let services = try await server.admin("GET", "/admin/services").body
        let limit = services.replacingOccurrences(of: " ", with: "").components(separatedBy: "\"cold_limit\":").dropFirst().first
            .flatMap { Int($0.prefix { $0.isNumber }) }
        let most = new.map(\.maxConcurrent)
        print("cold fleet (usual peak \(peak)): 12 requests at once took \(took); limit \(limit ?? -1); most at once per new instance: \(most)")
        #expect(statuses.allSatisfy { $0 == 200 }, "\(statuses)")  // they waited, none failed
        let cap = try #require(limit, "GET /admin/services should show the cold limit: \(services)")
        #expect(cap >= 1 && cap <= 4)
        #expect(new.allSatisfy { $0.maxConcurrent <= cap }, "\(new.map(\.maxConcurrent))")
        #expect(took >= .milliseconds(850), "12 requests of 0.3 s, at most 4 at a time, take at least 0.9 s")
        for service in old + new { await service.stop() }
        await server.stop()
    }
}

/// The gateway's retry budget keeps no slot for a retry that never went out.
@Suite struct GatewayRetryBudgetTests {
    @Test func aRetryThatFindsEveryCircuitOpenGivesItsSlotBack() async throws {
        let a = try await TestHTTPService.start()
        let b = try await TestHTTPService.start(status: 503)
        let server = try await TestServer.start(
            """
            resilience: {warmup: {duration: 0s}}
            gateway:
              routes: [{name: api, path_prefix: /api, service: s, retries: 1}]
            services:
              s: {circuit: {failures: 1, open_for: 60s}, instances: [{url: "\(a.url)"}, {url: "\(b.url)"}]}
            """
        )
        // Until B has answered once (503: its circuit opens; the request is retried on A).
        for _ in 0..<50 where b.received.isEmpty {
            #expect(try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/x").status == 200)
        }
        #expect(b.received.count == 1)
        // A fails now: its retry may only go to B, whose circuit is open: nothing goes out.
        a.setStatus(503)
        let answer = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/x")
        #expect(answer.status == 503 && answer.body.contains("circuit_open"), "\(answer.body)")
        #expect(b.received.count == 1)
        let services = try await server.admin("GET", "/admin/services").body.replacingOccurrences(of: " ", with: "")
        #expect(services.contains("\"retries_in_flight\":0"), "\(services)")
        await a.stop()
        await b.stop()
        await server.stop()
    }
}
