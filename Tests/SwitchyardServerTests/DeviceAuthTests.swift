import Foundation
import SwitchyardTesting
import Testing

/// Devices sign in with their own credentials (made through the admin API) and stay in their
/// own topic space; wrong, unknown and disabled credentials are refused with their codes.
@Suite(.serialized) struct DeviceAuthTests {
    func json(_ body: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:]
    }

    @Test func devicesSignInAndStayInTheirTopicSpace() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(MQTTChannelTests.yaml(svc, anonymous: false))
        let port = String(try await server.mqttPort())
        let mqtt = MQTTChannelTests()

        let created = try await server.admin("POST", "/admin/devices", body: #"{"product":"p1","device":"d1"}"#)
        #expect(created.status == 201)
        let secret = try #require(json(created.body)["secret"] as? String)
        #expect(json(created.body)["username"] as? String == "d1&p1")
        #expect(try await server.admin("POST", "/admin/devices", body: #"{"product":"p1","device":"d1"}"#).status == 409)
        #expect(try await server.admin("POST", "/admin/devices", body: #"{"product":"p/1","device":"d1"}"#).status == 400)
        #expect(try await server.admin("POST", "/admin/devices", body: #"{"product":"p1","device":"x"}"#, token: nil).status == 401)
        // The secret never reaches the disk: only a salted digest.
        let file = try String(contentsOfFile: "\(server.dir)/data/devices.json", encoding: .utf8)
        #expect(!file.contains(secret))
        let mode = try FileManager.default.attributesOfItem(atPath: "\(server.dir)/data/devices.json")[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)

        for version in ["3", "5"] {
            let ok = try mqtt.run(
                "signin",
                port,
                version,
                "d1&p1",
                secret,
                "devices/p1/d1/telemetry,devices/p1/d2/telemetry",
                "devices/p1/d1/commands,devices/p1/+/commands"
            )
            #expect(ok["connack"] as? Int == 0, "v\(version): \(ok)")
            if version == "5" {
                #expect(ok["acks"] as? [Int] == [0, 0x87])  // its own space, then another device's
                #expect(ok["granted"] as? [Int] == [1, 0x87])
            } else {
                #expect((ok["acks"] as? [Any])?.first as? Int == 0)  // 3.1.1: the refusal closes the connection
            }
            #expect(try mqtt.run("signin", port, version, "d1&p1", "wrong")["connack"] as? Int == 0x86)
            #expect(try mqtt.run("signin", port, version, "nobody&p1", secret)["connack"] as? Int == 0x86)
        }
        let got = await svc.waitFor(count: 2)
        #expect(got.allSatisfy { $0.header("x-switchyard-device") == "d1" && $0.uri == "/in/d1/telemetry" })

        // Disabled: refused; enabled again and rotated: the old secret no longer works.
        #expect(try await server.admin("POST", "/admin/devices/p1/d1/disable").status == 200)
        #expect(try mqtt.run("signin", port, "5", "d1&p1", secret)["connack"] as? Int == 0x87)
        #expect(try await server.admin("POST", "/admin/devices/p1/d1/enable").status == 200)
        let rotated = try await server.admin("POST", "/admin/devices/p1/d1/rotate")
        let fresh = try #require(json(rotated.body)["secret"] as? String)
        #expect(try mqtt.run("signin", port, "5", "d1&p1", secret)["connack"] as? Int == 0x86)
        #expect(try mqtt.run("signin", port, "5", "d1&p1", fresh)["connack"] as? Int == 0)
        let listed = try await server.admin("GET", "/admin/devices")
        #expect(listed.body.contains("\"username\" : \"d1&p1\"") && !listed.body.contains(fresh))
        #expect(try await server.admin("DELETE", "/admin/devices/p1/d1").status == 200)
        #expect(try await server.admin("DELETE", "/admin/devices/p1/d1").status == 404)
        await server.stop()
        await svc.stop()
    }

    @Test func connectsAndDisconnectsAreEventsRoutedLikeMessages() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(
            """
            channels:
              mqtt: {connection_events: true}
            routes:
              - name: events
                match: '^\\$events/(?<product>[^/]+)/(?<device>[^/]+)/(?<kind>[^/]+)$'
                targets: [{service: s, path: "/events/{device}/{kind}", retries: 0}]
            services:
              s: {instances: [{url: "\(svc.url)"}]}
            """
        )
        let port = String(try await server.mqttPort())
        let created = try await server.admin("POST", "/admin/devices", body: #"{"product":"p1","device":"d1"}"#)
        let secret = try #require(json(created.body)["secret"] as? String)
        #expect(try MQTTChannelTests().run("signin", port, "5", "d1&p1", secret)["connack"] as? Int == 0)
        let got = await svc.waitFor(count: 2)
        #expect(got.map(\.uri) == ["/events/d1/connected", "/events/d1/disconnected"])
        #expect(got.first?.body.contains("\"client_id\":\"signed-d1&p1\"") == true)
        #expect(got.last?.body.contains("\"reason\"") == true)
        #expect(got.allSatisfy { $0.header("x-switchyard-device") == "d1" && $0.header("x-switchyard-channel") == "mqtt" })
        await server.stop()
        await svc.stop()
    }
}
