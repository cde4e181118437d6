import Foundation
import SwitchyardTesting
import Testing

/// The end of a drain: `switchyard drain --wait` returns once the in-flight requests are done;
/// the instance then leaves the registry (an ephemeral one is disabled, so its beats cannot
/// bring it back); `undrain` takes it back.
@Suite struct DrainTests {
    /// No warm-up; `/api` goes to the registry's service `orders`.
    static func startServer() async throws -> TestServer {
        try await TestServer.start(
            """
            resilience: {warmup: {duration: 0s}}
            gateway:
              routes: [{name: api, path_prefix: /api, service: orders}]
            """
        )
    }

    @Test func aDrainEndsWhenInFlightRequestsAreDoneAndTheInstanceLeavesTheRegistry() async throws {
        let server = try await Self.startServer()
        let nacos = try await RegistryAPITests.nacosPort(server)
        let service = try await TestHTTPService.start()
        let port = service.port
        let register = "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(port)"  // ephemeral
        #expect(try await TestHTTPClient.request("POST", port: nacos, path: register, body: "").status == 200)
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/x").status == 200)
        // A slow request is in flight when the drain starts.
        service.setDelay(seconds: 1.5)
        async let slow = TestHTTPClient.request("GET", port: server.httpPort, path: "/api/slow")
        _ = await service.waitFor(count: 2)
        let admin = ["--admin", "http://127.0.0.1:\(server.adminPort)", "--token", TestServer.token]
        let started = ContinuousClock.now
        let (code, out) = try await ProcessTests.runBinary(["drain", "orders", "127.0.0.1:\(port)", "--wait", "20"] + admin, mergeErrors: false)
        let waited = ContinuousClock.now - started
        #expect(code == 0, "\(out)")
        #expect(try await slow.status == 200)  // the in-flight request finished
        #expect(waited > .milliseconds(700), "drain --wait returned while a request was in flight")
        #expect(out.contains("\"drain\":\"completed\"") && out.contains("\"registry\":\"disabled\""), "\(out)")
        // Disabled, not deleted: a beat of the still-running process does not bring it back.
        let beat = "/nacos/v1/ns/instance/beat?serviceName=orders&ip=127.0.0.1&port=\(port)"
        #expect(try await TestHTTPClient.request("PUT", port: nacos, path: beat, body: "").body.contains("10200"))
        let listed = try await TestHTTPClient.request("GET", port: nacos, path: "/nacos/v1/ns/instance/list?serviceName=orders").body
        #expect(!listed.contains("\"port\":\(port)"), "\(listed)")
        service.setDelay(seconds: 0)
        let before = service.received.count
        #expect(try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/x").status == 503)
        #expect(service.received.count == before)
        // Undrain: enabled in the registry again, and requests reach it.
        let (undrained, text) = try await ProcessTests.runBinary(["undrain", "orders", "127.0.0.1:\(port)"] + admin, mergeErrors: false)
        #expect(undrained == 0, "\(text)")
        var status = 0
        for _ in 0..<50 where status != 200 {
            status = try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/x").status
            if status != 200 { try await Task.sleep(nanoseconds: 50_000_000) }
        }
        #expect(status == 200)
        // Unknown instances and actions get clear errors.
        #expect(try await server.admin("GET", "/admin/instances/orders@127.0.0.1:1").status == 404)
        #expect(try await server.admin("POST", "/admin/instances/orders@127.0.0.1:\(port)/explode").status == 404)
        await service.stop()
        await server.stop()
    }

    /// Registry metadata `draining: true` drains as `switchyard drain` does, to the end: a
    /// persistent instance is deregistered once nothing is in flight.
    @Test func registryMetadataDrainsAndDeregisters() async throws {
        let server = try await Self.startServer()
        let nacos = try await RegistryAPITests.nacosPort(server)
        let (a, b) = try await (TestHTTPService.start(), TestHTTPService.start())
        for s in [a, b] {
            let path = "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(s.port)&ephemeral=false"
            #expect(try await TestHTTPClient.request("POST", port: nacos, path: path, body: "").status == 200)
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        let metadata = #"{"draining":"true"}"#.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let update = "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(a.port)&ephemeral=false&metadata=\(metadata)"
        let updated = try await TestHTTPClient.request("PUT", port: nacos, path: update, body: "")
        #expect(updated.status == 200, "\(updated.body)")
        let state = try await server.drainState("orders@127.0.0.1:\(a.port)")
        #expect(state.contains("\"drain\":\"completed\"") && state.contains("\"registry\":\"deregistered\""), "\(state)")
        let listed = try await TestHTTPClient.request("GET", port: nacos, path: "/nacos/v1/ns/instance/list?serviceName=orders").body
        #expect(!listed.contains("\"port\":\(a.port)") && listed.contains("\"port\":\(b.port)"), "\(listed)")
        let before = a.received.count
        for _ in 0..<10 { #expect(try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/x").status == 200) }
        #expect(a.received.count == before)
        await a.stop()
        await b.stop()
        await server.stop()
    }
}

/// A service without instances holds messages back, counted and logged, and gets them once an
/// instance registers.
@Suite struct WaitingMessageTests {
    @Test func messagesWaitForAServiceWithoutInstancesAndArriveWhenOneRegisters() async throws {
        let server = try await TestServer.start(
            """
            resilience: {warmup: {duration: 0s}}
            routes:
              - {name: orders, match: "^orders/.+$", targets: [{service: orders, path: /msg}]}
            """
        )
        let nacos = try await RegistryAPITests.nacosPort(server)
        #expect(try await server.post("orders/o1", body: #"{"n":1}"#).status == 202)
        try await Task.sleep(nanoseconds: 300_000_000)
        let metrics = try await server.admin("GET", "/metrics", token: nil).body.split(separator: "\n")
        #expect(
            metrics.contains {
                $0.hasPrefix("switchyard_message_waits_total") && $0.contains(#"reason="no_instances""#) && $0.contains(#"route="orders""#)
            },
            "a waiting message should be counted"
        )
        #expect(!(try await server.admin("GET", "/admin/dead-letters").body.contains("\"reason\"")))
        // An instance registers: the message goes to it.
        let service = try await TestHTTPService.start()
        let path = "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(service.port)"
        #expect(try await TestHTTPClient.request("POST", port: nacos, path: path, body: "").status == 200)
        let got = await service.waitFor(count: 1, timeoutSeconds: 15)
        #expect(got.first?.body == #"{"n":1}"#)
        await service.stop()
        await server.stop()
    }
}
