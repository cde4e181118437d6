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
    static func sessionsAlive(_ server: TestServer) -> Int {
        guard let gateway = server.app.ingest?.streaming as? GatewayResponder else { return -1 }
        return gateway.pool.sessionsAlive.load(ordering: .relaxed)
    }

    /// Polls until no session is alive (the client connections' handlers let go of theirs as
    /// the connections close, on the event loops): the count then, or after 5 s.
    static func settled(_ server: TestServer) async -> Int {
        for _ in 0..<100 {
            if sessionsAlive(server) == 0 { return 0 }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        return sessionsAlive(server)
    }

    @Test(arguments: [1, 0])
    func sessionsAreFreedAfterTheirExchange(closeEvery: Int) async throws {
        let upstream = try await TestHTTPService.start()
        upstream.setCloseEvery(closeEvery)
        let server = try await TestServer.start(
            """
            gateway:
              routes:
                - {name: api, path_prefix: /api, service: api}
            services:
              api: {instances: [{url: "\(upstream.url)"}]}
            """
        )
        for i in 0..<40 {
            let r = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/\(i)", body: "")
            #expect(r.status == 200)
        }
        #expect(upstream.received.count == 40)
        if closeEvery == 1 {
            #expect(upstream.connectionsAccepted >= 40, "the upstream closed every connection: one per request")
        }
        #expect(Self.sessionsAlive(server) >= 0, "the gateway responder was not found")
        let alive = await Self.settled(server)
        #expect(alive == 0, "\(alive) of 40 sessions still held after their exchanges (upstream closing every \(closeEvery))")
        await server.stop()
        await upstream.stop()
    }
}
