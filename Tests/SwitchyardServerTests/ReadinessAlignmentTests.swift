import Foundation
import SwitchyardTesting
import Testing

/// `switchyard register --ready … --delay …`: a service is registered only once its readiness
/// check passes and the delay has gone by; `switchyard deregister` removes it.
@Suite struct ReadinessAlignmentTests {
    @Test func registrationWaitsForReadinessAndTheDelay() async throws {
        let server = try await TestServer.start("")
        let nacos = try await RegistryAPITests.nacosPort(server)
        let svc = try await TestHTTPService.start(status: 503)  // not ready yet
        let args = [
            "register", "--nacos", "http://127.0.0.1:\(nacos)", "--service", "aligned", "--port", String(svc.port),
            "--ready", "\(svc.url)/ready", "--delay", "1", "--timeout", "60", "--metadata", "lane=gray",
        ]
        let registering = Task { try await ProcessTests.runBinary(args) }
        func listed() async throws -> Bool {
            let list = try await TestHTTPClient.request("GET", port: nacos, path: "/nacos/v1/ns/instance/list?serviceName=aligned", body: "")
            return list.body.contains("\"port\":\(svc.port)")
        }
        try await Task.sleep(nanoseconds: 1_500_000_000)
        #expect(try await listed() == false)  // not ready: not registered
        #expect(svc.received.contains { $0.uri == "/ready" })
        svc.setStatus(200)
        let readyAt = Date()
        let (status, output) = try await registering.value
        #expect(status == 0, "\(output)")
        #expect(Date().timeIntervalSince(readyAt) >= 1, "registered before the delay was over")
        #expect(try await listed())
        let list = try await TestHTTPClient.request("GET", port: nacos, path: "/nacos/v1/ns/instance/list?serviceName=aligned", body: "").body
        #expect(list.contains("gray"), "\(list)")
        let (gone, _) = try await ProcessTests.runBinary([
            "deregister", "--nacos", "http://127.0.0.1:\(nacos)", "--service", "aligned", "--port", String(svc.port),
        ])
        #expect(gone == 0)
        #expect(try await listed() == false)
        // Never ready: it gives up with a clear message and registers nothing.
        let (failed, message) = try await ProcessTests.runBinary([
            "register", "--nacos", "http://127.0.0.1:\(nacos)", "--service", "never", "--port", "1", "--ready", "http://127.0.0.1:1/ready",
            "--timeout", "1",
        ])
        #expect(failed != 0 && message.contains("not ready"), "\(message)")
    }
}
