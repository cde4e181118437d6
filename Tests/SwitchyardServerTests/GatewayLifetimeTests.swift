import NIOHTTP1
import SwitchyardTesting
import Synchronization
import Testing

@testable import Gateway
@testable import HTTPIngress
@testable import SwitchyardServer

/// Nothing holds a gateway session once its exchange is over, whether the upstream keeps its
/// connection or closes it after each answer. (A session and its upstream connection's
/// handler once held each other: every connection the upstream closed leaked both, with the
/// connection's buffers — ~6 KB per request in a release build.)
@Suite struct GatewayLifetimeTests {
    static func pool(_ server: TestServer) -> UpstreamPool? {
        (server.app.ingest?.streaming as? GatewayResponder)?.pool
    }

    static func sessionsAlive(_ server: TestServer) -> Int {
        pool(server)?.sessionsAlive.load(ordering: .relaxed) ?? -1
    }

    static func tunnelEndsAlive(_ server: TestServer) -> Int {
        pool(server)?.tunnelEndsAlive.load(ordering: .relaxed) ?? -1
    }

    /// A gateway with one route, `/<name>` to a service of one instance.
    static func oneRoute(_ name: String, to url: String) async throws -> TestServer {
        try await TestServer.start(
            """
            gateway:
              routes:
                - {name: \(name), path_prefix: /\(name), service: \(name)}
            services:
              \(name): {instances: [{url: "\(url)"}]}
            """
        )
    }

    /// Polls until `count` is 0 (the connections' handlers let go as the connections close, on
    /// the event loops): the count then, or after 5 s.
    static func settled(_ count: () -> Int) async -> Int {
        for _ in 0..<100 {
            if count() == 0 { return 0 }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        return count()
    }

    @Test(arguments: [1, 0])
    func sessionsAreFreedAfterTheirExchange(closeEvery: Int) async throws {
        let upstream = try await TestHTTPService.start()
        upstream.setCloseEvery(closeEvery)
        let server = try await Self.oneRoute("api", to: upstream.url)
        for i in 0..<40 {
            let r = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/\(i)", body: "")
            #expect(r.status == 200)
        }
        #expect(upstream.received.count == 40)
        if closeEvery == 1 {
            #expect(upstream.connectionsAccepted >= 40, "the upstream closed every connection: one per request")
        }
        #expect(Self.sessionsAlive(server) >= 0, "the gateway responder was not found")
        let alive = await Self.settled { Self.sessionsAlive(server) }
        #expect(alive == 0, "\(alive) of 40 sessions still held after their exchanges (upstream closing every \(closeEvery))")
        await server.stop()
        await upstream.stop()
    }

    /// One client connection's requests to two instances in turn, then to one: each instance's
    /// idle upstream connection is taken again every time (the client connection keeps the
    /// last instance's idle list, and finds the other's in the pool's table), and a connection
    /// the upstream closed is not taken again.
    @Test func aClientConnectionsRequestsReuseEachInstancesUpstreamConnection() async throws {
        let a = try await TestHTTPService.start()
        let b = try await TestHTTPService.start()
        let server = try await TestServer.start(
            """
            gateway:
              routes:
                - {name: a, path_prefix: /a, service: a}
                - {name: b, path_prefix: /b, service: b}
            services:
              a: {instances: [{url: "\(a.url)"}]}
              b: {instances: [{url: "\(b.url)"}]}
            """
        )
        let client = KeepAliveHTTPClient(port: server.httpPort)
        for i in 0..<20 {
            #expect(try await client.request(.GET, i % 2 == 0 ? "/a/\(i)" : "/b/\(i)") == 200)
        }
        for i in 0..<10 { #expect(try await client.request(.GET, "/a/again/\(i)") == 200) }
        #expect(a.received.count == 20 && b.received.count == 10)
        #expect(
            a.connectionsAccepted == 1 && b.connectionsAccepted == 1,
            "upstream connections: a \(a.connectionsAccepted), b \(b.connectionsAccepted)"
        )
        a.setCloseEvery(1)
        for i in 0..<3 { #expect(try await client.request(.GET, "/a/closing/\(i)") == 200) }
        // The first goes over the kept connection, which closes after it; each of the others over
        // a new one (and a kept connection that closed gets the instance probed: one more).
        #expect(a.received.count == 23)
        #expect((3...4).contains(a.connectionsAccepted), "upstream connections of a: \(a.connectionsAccepted), 3 (4 with the probe) expected")
        let alive = await Self.settled { Self.sessionsAlive(server) }
        #expect(alive == 0, "\(alive) sessions still held after their exchanges")
        await server.stop()
        await a.stop()
        await b.stop()
    }

    /// A WebSocket's tunnel (two ends, two handlers, both connections) is freed once both
    /// sides closed, and so is its session.
    @Test func aWebSocketTunnelIsFreedOnceBothSidesClosed() async throws {
        let echo = try await GatewayWebSocketTests.echoServer()
        defer { echo.close(promise: nil) }
        let server = try await Self.oneRoute("ws", to: "http://127.0.0.1:\(echo.localAddress!.port!)")
        for _ in 0..<3 {
            let echoed = try await ProcessTests.runScenario(GatewayWebSocketTests.script, ["ws://127.0.0.1:\(server.httpPort)/ws/room", "echo"])
            #expect(echoed["echoed"] as? Int == 4 && echoed["closed_cleanly"] as? Bool == true, "\(echoed)")
        }
        let ends = await Self.settled { Self.tunnelEndsAlive(server) }
        #expect(ends == 0, "\(ends) of 6 tunnel ends still held after both sides closed")
        let sessions = await Self.settled { Self.sessionsAlive(server) }
        #expect(sessions == 0, "\(sessions) of 3 WebSocket sessions still held")
        await server.stop()
    }

    /// Failed exchanges let go too: an instance that refuses connections (502) and one that
    /// answers after the route's timeout (504); 503 once their circuits opened.
    @Test func failedExchangesAreFreed() async throws {
        let slow = try await TestHTTPService.start()
        slow.setDelay(seconds: 0.5)
        let refusing = try RefusingPort()
        let server = try await TestServer.start(
            """
            gateway:
              routes:
                - {name: gone, path_prefix: /gone, service: gone, retries: 0}
                - {name: slow, path_prefix: /slow, service: slow, timeout: 100ms, retries: 0}
            services:
              gone: {instances: [{url: "\(refusing.url)"}]}
              slow: {instances: [{url: "\(slow.url)"}]}
            """
        )
        for i in 0..<10 {
            let gone = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/gone/\(i)", body: "")
            // (503 once the instance's circuit opened after its failures.)
            #expect([502, 503].contains(gone.status), "\(gone.status) \(gone.body)")
            let slowAnswer = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/slow/\(i)", body: "")
            #expect([504, 503].contains(slowAnswer.status), "\(slowAnswer.status) \(slowAnswer.body)")
        }
        let alive = await Self.settled { Self.sessionsAlive(server) }
        #expect(alive == 0, "\(alive) of 20 failed sessions still held")
        await server.stop()
        await slow.stop()
        withExtendedLifetime(refusing) {}  // (refusing until here)
    }
}
