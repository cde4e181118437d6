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
            let ok = try await mqtt.run(
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
            #expect(try await mqtt.run("signin", port, version, "d1&p1", "wrong")["connack"] as? Int == 0x86)
            #expect(try await mqtt.run("signin", port, version, "nobody&p1", secret)["connack"] as? Int == 0x86)
        }
        let got = await svc.waitFor(count: 2)
        #expect(got.allSatisfy { $0.header("x-switchyard-device") == "d1" && $0.uri == "/in/d1/telemetry" })

        // Disabled: refused; enabled again and rotated: the old secret no longer works.
        #expect(try await server.admin("POST", "/admin/devices/p1/d1/disable").status == 200)
        #expect(try await mqtt.run("signin", port, "5", "d1&p1", secret)["connack"] as? Int == 0x87)
        #expect(try await server.admin("POST", "/admin/devices/p1/d1/enable").status == 200)
        let rotated = try await server.admin("POST", "/admin/devices/p1/d1/rotate")
        let fresh = try #require(json(rotated.body)["secret"] as? String)
        #expect(try await mqtt.run("signin", port, "5", "d1&p1", secret)["connack"] as? Int == 0x86)
        #expect(try await mqtt.run("signin", port, "5", "d1&p1", fresh)["connack"] as? Int == 0)
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
        #expect(try await MQTTChannelTests().run("signin", port, "5", "d1&p1", secret)["connack"] as? Int == 0)
        let got = await svc.waitFor(count: 2)
        #expect(got.map(\.uri) == ["/events/d1/connected", "/events/d1/disconnected"])
        #expect(got.first?.body.contains("\"client_id\":\"signed-d1&p1\"") == true)
        #expect(got.last?.body.contains("\"reason\"") == true)
        #expect(got.allSatisfy { $0.header("x-switchyard-device") == "d1" && $0.header("x-switchyard-channel") == "mqtt" })
        await server.stop()
        await svc.stop()
    }

    @Test func signingDevicesSignInWithAnAlibabaStyleSignedPassword() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(MQTTChannelTests.yaml(svc, anonymous: false))
        let port = String(try await server.mqttPort())
        let mqtt = MQTTChannelTests()
        let signing = try await server.admin("POST", "/admin/devices", body: #"{"product":"p1","device":"s1","signing":true}"#)
        let secret = try #require(json(signing.body)["secret"] as? String)
        let plain = try await server.admin("POST", "/admin/devices", body: #"{"product":"p1","device":"n1"}"#)
        let plainSecret = try #require(json(plain.body)["secret"] as? String)
        // The sealed secret is not the secret in clear; the sealing key is the node's, 0600.
        let file = try String(contentsOfFile: "\(server.dir)/data/devices.json", encoding: .utf8)
        #expect(!file.contains(secret) && file.contains("\"sealed\""))
        let keyMode = try FileManager.default.attributesOfItem(atPath: "\(server.dir)/data/device-signing.key")[.posixPermissions] as? NSNumber
        #expect(keyMode?.intValue == 0o600)

        for version in ["3", "5"] {
            for method in ["hmacsha256", "hmacsha1"] {
                let ok = try await mqtt.run("signed", port, version, "p1", "s1", secret, "0", method)
                #expect(ok["connack"] as? Int == 0, "\(version) \(method): \(ok)")
                #expect(ok["ack"] as? Int == 0)
            }
            let wrong = try await mqtt.run("signed", port, version, "p1", "s1", "not-the-secret", "0", "hmacsha256")
            #expect(wrong["connack"] as? Int == 0x86, "\(wrong)")
            let stale = try await mqtt.run("signed", port, version, "p1", "s1", secret, "-3600", "hmacsha256")  // an hour old: a replay
            #expect(stale["connack"] as? Int == 0x86, "\(stale)")
            let notSigning = try await mqtt.run("signed", port, version, "p1", "n1", plainSecret, "0", "hmacsha256")
            #expect(notSigning["connack"] as? Int == 0x86, "\(notSigning)")
        }
        // Their messages went through the pipeline as s1's.
        let got = await svc.waitFor(count: 4)
        #expect(got.count == 4 && got.allSatisfy { $0.header("x-switchyard-device") == "s1" && $0.body == "signed" })
        let listed = try JSONSerialization.jsonObject(with: Data(try await server.admin("GET", "/admin/devices").body.utf8)) as? [[String: Any]]
        #expect(listed?.first { $0["device"] as? String == "s1" }?["signing"] as? Bool == true)
        #expect(listed?.first { $0["device"] as? String == "n1" }?["signing"] as? Bool == false)
        await server.stop()
        await svc.stop()
    }
}

/// The Mosquitto command-line clients (Debian `mosquitto-clients`) as a device and an app use them.
@Suite(.serialized) struct MosquittoClientTests {
    /// Starts a command, its standard error merged into its output.
    func start(_ args: [String]) throws -> Spawn.Child { try Spawn.start("/usr/bin/env", args, output: .pipe, errors: .output) }

    /// Runs a command to its end; returns its exit status and output (stdout + stderr).
    func run(_ args: [String]) async throws -> (Int32, String) { try await ProcessTests.run("/usr/bin/env", args) }

    @Test func mosquittoPubAndSubWithDeviceCredentials() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(MQTTChannelTests.yaml(svc, anonymous: false))
        let port = String(try await server.mqttPort())
        let created = try await server.admin("POST", "/admin/devices", body: #"{"product":"p1","device":"m1"}"#)
        let secret = try #require((try JSONSerialization.jsonObject(with: Data(created.body.utf8)) as? [String: Any])?["secret"] as? String)
        let auth = ["-h", "127.0.0.1", "-p", port, "-u", "m1&p1", "-P", secret]

        // The subscriber waits for two messages (10 s at most), one of them retained.
        _ = try await run(["mosquitto_pub"] + auth + ["-V", "5", "-i", "m1-retain", "-t", "devices/p1/m1/state", "-m", "on", "-q", "1", "-r"])
        let sub = try start(["mosquitto_sub"] + auth + ["-V", "5", "-i", "m1-sub", "-t", "devices/p1/m1/#", "-q", "1", "-C", "2", "-W", "10", "-v"])
        try await Task.sleep(nanoseconds: 500_000_000)
        let (pub, pubOut) = try await run(
            ["mosquitto_pub"] + auth + ["-V", "311", "-i", "m1-pub", "-t", "devices/p1/m1/telemetry", "-m", "21.5", "-q", "1"]
        )
        #expect(pub == 0, "\(pubOut)")
        let received = try await ProcessTests.offloaded { sub.readOutput() }
        #expect(try await ProcessTests.offloaded { sub.wait() } == 0, "\(received)")
        #expect(received.contains("devices/p1/m1/state on"), "\(received)")
        #expect(received.contains("devices/p1/m1/telemetry 21.5"), "\(received)")
        // The message also went through the pipeline to the service.
        let got = await svc.waitFor(count: 2)
        #expect(got.contains { $0.uri == "/in/m1/telemetry" && $0.body == "21.5" })

        // A wrong password: refused, and mosquitto_pub says so and fails.
        let (bad, why) = try await run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-u", "m1&p1", "-P", "wrong", "-t", "devices/p1/m1/x", "-m", "1", "-q", "1"]
        )
        #expect(bad != 0)
        #expect(why.lowercased().contains("not authori") || why.lowercased().contains("bad user name or password"), "\(why)")
        // Outside its topic space: v5 PUBACK 0x87, which mosquitto_pub reports.
        let (_, deniedOut) = try await run(["mosquitto_pub"] + auth + ["-V", "5", "-t", "devices/p1/other/x", "-m", "1", "-q", "1"])
        #expect(deniedOut.lowercased().contains("not authori"), "outside the device's space")
        await server.stop()
        await svc.stop()
    }
}
