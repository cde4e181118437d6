import Foundation
import SwitchyardTesting
import Testing

/// Downlink: a service sends a command to a device through the admin API and (optionally)
/// waits for its reply, over MQTT 3.1.1 and 5.
@Suite(.serialized) struct CommandTests {
    func command(_ server: TestServer, _ device: String = "d1", query: String = "", body: String, token: String? = TestServer.token) async throws
        -> TestHTTPClient.Response
    {
        var headers: [(String, String)] = [("content-type", "text/plain")]
        if let token { headers.append(("authorization", "Bearer \(token)")) }
        return try await TestHTTPClient.request(
            "POST",
            port: server.adminPort,
            path: "/v1/devices/p1/\(device)/commands\(query)",
            headers: headers,
            body: body
        )
    }

    @Test(arguments: ["3", "5"])
    func commandsReachTheDeviceAndRepliesComeBack(version: String) async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(MQTTChannelTests.yaml(svc))
        let port = String(try await server.mqttPort())
        #expect(try await command(server, body: "x", token: nil).status == 401)
        let offline = try await command(server, body: "reboot")
        #expect(offline.status == 404)
        #expect(offline.body.contains("device_offline"))

        // The device: answers every command but "ignore".
        let device = try Spawn.start("/usr/bin/env", ["python3", MQTTChannelTests.script, "responder", port, version, "3", "15"], output: .pipe)
        defer { device.terminate() }

        var sent = offline
        for _ in 0..<100 where sent.status != 202 {
            try await Task.sleep(nanoseconds: 50_000_000)
            sent = try await command(server, body: "hello")
        }
        #expect(sent.status == 202, "\(sent.body)")
        #expect(sent.body.contains("\"connections\":1"))

        let reply = try await command(server, query: "?wait=5s", body: "reboot")
        #expect(reply.status == 200, "\(reply.body)")
        #expect(reply.body == "ack:reboot")
        #expect(reply.header("x-switchyard-command-id") != nil)

        let silent = try await command(server, query: "?wait=500ms", body: "ignore")
        #expect(silent.status == 504)
        #expect(silent.body.contains("no_reply"))
        #expect(try await command(server, query: "?wait=forever", body: "x").status == 400)
        #expect(try await command(server, "d2", query: "?wait=1s", body: "x").status == 404)

        let printed = try await ProcessTests.offloaded { device.readOutputData() }
        let result = try JSONSerialization.jsonObject(with: printed) as? [String: Any]
        #expect((result?["handled"] as? [String])?.suffix(3) == ["hello", "reboot", "ignore"])
        if version == "5" {
            // v5 devices are told where to answer (Response Topic), with the id as Correlation Data.
            #expect(
                (result?["response_topics"] as? [String])?.allSatisfy { $0.hasPrefix("devices/p1/d1/commands/") && $0.hasSuffix("/reply") } == true
            )
        }
        await server.stop()
        await svc.stop()
    }
}
