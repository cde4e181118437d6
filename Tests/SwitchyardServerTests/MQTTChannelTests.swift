import Foundation
import SwitchyardConfig
import SwitchyardTesting
import Testing

/// The MQTT device channel with real clients: paho-mqtt (3.1.1 and 5) and raw sockets for
/// bad input. The scenarios live in Tests/Fixtures/mqtt_scenarios.py.
@Suite(.serialized) struct MQTTChannelTests {
    static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/mqtt_scenarios.py").path

    static func yaml(_ svc: TestHTTPService, anonymous: Bool = true) -> String {
        """
        channels:
          mqtt: {allow_anonymous: \(anonymous), max_packet_size: 64KiB}
        filters:
          - devices: {deny: [banned]}
        routes:
          - name: t
            match: "^devices/(?<product>[^/]+)/(?<device>[^/]+)/(?<kind>[^/]+)$"
            targets: [{service: s, path: "/in/{device}/{kind}", retries: 0}]
        services:
          s: {instances: [{url: "\(svc.url)"}]}
        """
    }

    /// Runs a scenario and returns its JSON.
    func run(_ args: String...) async throws -> [String: Any] { try await ProcessTests.runScenario(Self.script, args) }

    @Test(arguments: ["4", "5"])
    func devicesPublishAtEveryQoSAndEachMessageIsDelivered(version: String) async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let port = try await server.mqttPort()
        var expected = 0
        for qos in 0...2 {
            let r = try await run("publish", String(port), version == "4" ? "3" : "5", String(qos), "5", "devices/p1/d\(qos)-{i}/telemetry")
            #expect(r["connack"] as? Int == 0)
            if qos > 0 { #expect(r["acks"] as? [Int] == [0, 0, 0, 0, 0], "QoS \(qos): \(r)") }
            expected += 5
        }
        let got = await svc.waitFor(count: expected)
        #expect(got.count == expected)
        let one = try #require(got.first { $0.uri == "/in/d1-3/telemetry" })
        #expect(one.body == #"{"seq": 3}"#)
        #expect(one.header("x-switchyard-channel") == "mqtt")
        #expect(one.header("x-switchyard-device") == "d1-3")
        #expect(one.header("x-switchyard-product") == "p1")
        await server.settle()
        let ledger = ScrapedLedger(try await server.admin("GET", "/metrics", token: nil).body)
        #expect(ledger.received == Double(expected) && ledger.forwarded == Double(expected))
        await server.stop()
        await svc.stop()
    }

    @Test func aRefusedMessageGetsItsReasonCodeInV5AndAClosedConnectionInV3() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let port = String(try await server.mqttPort())
        let v5 = try await run("publish", port, "5", "1", "2", "devices/p1/banned/telemetry")
        #expect(v5["acks"] as? [Int] == [0x87, 0x87])  // not authorized: the device is denied
        #expect((v5["reasons"] as? [String])?.first?.contains("device_denied") == true)
        let v3 = try await run("publish", port, "3", "1", "1", "devices/p1/banned/telemetry")
        #expect((v3["acks"] as? [Any])?.first is NSNull)  // never a false acknowledgement
        #expect(v3["disconnect"] != nil && !(v3["disconnect"] is NSNull))
        let ledger = ScrapedLedger(try await server.admin("GET", "/metrics", token: nil).body)
        #expect(ledger.rejected == 3)
        #expect(svc.received.isEmpty)
        await server.stop()
        await svc.stop()
    }

    @Test func anonymousAccessIsOffByDefault() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc, anonymous: false))
        let port = String(try await server.mqttPort())
        #expect(try await run("connect", port, "3")["connack"] as? Int == 0x87)  // paho maps 3.1.1 code 5 to 0x87
        #expect(try await run("connect", port, "5")["connack"] as? Int == 0x87)
        #expect(try await run("connect", port, "5", "someone")["connack"] as? Int == 0x86)  // no credential store yet
        await server.stop()
        await svc.stop()
    }

    @Test func badInputIsAnsweredAndClosed() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let port = String(try await server.mqttPort())
        let garbage = try await run("garbage", port)
        #expect(garbage["closed"] as? Bool == true)
        // A PUBLISH over max_packet_size (64 KiB): DISCONNECT 0x95 from its header alone.
        let oversize = try await run("oversize", port)
        let bytes = try #require(oversize["received"] as? String)
        #expect(bytes.hasPrefix("20"))  // CONNACK first
        #expect(bytes.contains("e0") && bytes.contains("95"), "\(bytes)")
        #expect(oversize["closed"] as? Bool == true)
        // An invalid filter gets 0x8F (never a silent grant); the shared subscription beside it QoS 1.
        let sub = try await run("subscribe", port)
        #expect((sub["received"] as? String)?.hasSuffix("8f01") == true, "\(sub)")
        // Keep-alive 1 s and silence: DISCONNECT 0x8D within 1.5 × keep-alive (checked each second).
        let sleepy = try await run("keepalive", port)
        #expect((sleepy["received"] as? String)?.contains("e0") == true)
        #expect((sleepy["received"] as? String)?.contains("8d") == true, "\(sleepy)")
        #expect(sleepy["closed"] as? Bool == true)
        // The same client id again: the first connection gets DISCONNECT 0x8E.
        let takeover = try await run("takeover", port)
        #expect((takeover["received"] as? String)?.contains("e0") == true)
        #expect((takeover["received"] as? String)?.contains("8e") == true, "\(takeover)")
        #expect(takeover["closed"] as? Bool == true)
        // Still serving.
        let ok = try await run("publish", port, "5", "1", "1", "devices/p1/d9/telemetry")
        #expect(ok["acks"] as? [Int] == [0])
        await server.stop()
        await svc.stop()
    }

    /// The broker decodes packets from whatever segments arrive: a CONNECT and three PUBLISHes
    /// one byte per segment, or all in one segment, get the same CONNACK and PUBACKs in order.
    @Test func packetsSplitAcrossSegmentsOrSharingOneAreDecodedAlike() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let port = String(try await server.mqttPort())
        let got = try await run("fragments", port, "devices/p1/frag/telemetry")
        let expected = "20020000" + "40020001" + "40020002" + "40020003"  // CONNACK, PUBACK 1, 2, 3
        #expect(got["dribbled"] as? String == expected, "\(got)")
        #expect(got["together"] as? String == expected, "\(got)")
        await server.stop()
        await svc.stop()
    }

    /// Without filters, a message no route takes goes to subscribers without an envelope:
    /// each is still counted once (received, `broker_only`), and the ledger balances.
    @Test func unroutedMessagesWithoutFiltersReachSubscribersAndAreCountedBrokerOnly() async throws {
        let server = try await TestServer.start(
            """
            channels:
              mqtt: {allow_anonymous: true}
            """
        )
        let port = String(try await server.mqttPort())
        let r = try await run("pubsub", port, "5", "1", "20")
        let got = try #require(r["got"] as? [[String: Any]])
        #expect(got.count == 20)
        let ledger = server.app.ledger.snapshot()
        // 20 for the subscriber, one it does not take, one retained.
        #expect(ledger.brokerOnly["mqtt"] == 22, "\(ledger)")
        #expect(ledger.receivedTotal == 22 && ledger.balances, "\(ledger)")
        await server.stop()
    }

    @Test(arguments: [("3", 0), ("3", 1), ("5", 1), ("5", 2)])
    func subscribersGetWhatDevicesPublishAndRetainedMessages(version: String, qos: Int) async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let port = String(try await server.mqttPort())
        let r = try await run("pubsub", port, version, String(qos), "20")
        #expect(r["granted"] as? [Int] == [qos])
        let got = try #require(r["got"] as? [[String: Any]])
        #expect(got.count == 20, "\(got.count) of 20 at QoS \(qos)")
        #expect(Set(got.compactMap { $0["payload"] as? String }) == Set((0..<20).map { "m\($0)" }))
        #expect(got.allSatisfy { $0["qos"] as? Int == qos && $0["retain"] as? Bool == false })
        #expect(!got.contains { ($0["topic"] as? String)?.hasSuffix("status") == true })
        // A subscriber that comes later gets the retained message, flagged as retained.
        let late = try #require(r["late"] as? [[String: Any]])
        #expect(late.count == 1)
        #expect(late.first?["payload"] as? String == "last known")
        #expect(late.first?["retain"] as? Bool == true)
        // The pipeline delivered every message to the service as well.
        #expect(await svc.waitFor(count: 22).count == 22)
        await server.stop()
        await svc.stop()
    }

    @Test func aDroppedConnectionPublishesItsWill() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let port = String(try await server.mqttPort())
        let r = try await run("will", port, "devices/p1/d7/status")
        #expect(r["connack"] as? String == "20020000")
        let got = await svc.waitFor(count: 1)
        #expect(got.first?.uri == "/in/d7/status")
        #expect(got.first?.body == "offline")
        #expect(got.first?.header("x-switchyard-channel") == "mqtt")
        await server.stop()
        await svc.stop()
    }

    @Test(arguments: ["3", "5"])
    func aPersistentSessionAndRetainedMessagesSurviveARestart(version: String) async throws {
        let svc = try await TestHTTPService.start()
        var server = try await TestServer.start(Self.yaml(svc))
        let parked = try await run("session_park", String(try await server.mqttPort()), version, "3")
        #expect(parked["first_present"] as? Bool == false)
        #expect(parked["published"] as? Int == 4)
        await server.stop(keepingData: true)
        server = try await TestServer.start(Self.yaml(svc), dir: server.dir)
        let resumed = try await run("session_resume", String(try await server.mqttPort()), version, "3")
        #expect(resumed["present"] as? Bool == true, "\(resumed)")
        let got = try #require(resumed["got"] as? [[String: Any]])
        #expect(got.compactMap { $0["payload"] as? String } == ["while-away-0", "while-away-1", "while-away-2"], "\(got)")
        let retained = try #require(resumed["retained"] as? [[String: Any]])
        #expect(retained.first?["payload"] as? String == "kept across restarts")
        await server.stop()
        await svc.stop()
    }

    @Test(arguments: ["3", "5"])
    func aSharedSubscriptionSplitsMessagesAcrossItsMembers(version: String) async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc))
        let r = try await run("shared", String(try await server.mqttPort()), version, "30")
        #expect((r["granted"] as? [[Int]])?.allSatisfy { $0 == [1] } == true, "\(r)")
        let perMember = try #require(r["per_member"] as? [[String]])
        let all = perMember.flatMap { $0 }
        #expect(all.count == 30 && Set(all).count == 30, "each message to exactly one member: \(perMember)")
        #expect(perMember.allSatisfy { !$0.isEmpty }, "every member gets a share: \(perMember.map(\.count))")
        await server.stop()
        await svc.stop()
    }

    @Test func systemTopicsShowTheBrokersFiguresAndClientsCannotForgeThem() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(
            Self.yaml(svc).replacingOccurrences(of: "max_packet_size: 64KiB", with: "max_packet_size: 64KiB, sys_interval: 1s")
        )
        let r = try await run("sys", String(try await server.mqttPort()), "2.5")
        let topics = try #require(r["topics"] as? [String: String])
        #expect(topics["$SYS/broker/version"]?.hasPrefix("switchyard ") == true, "\(topics)")
        #expect(Int(topics["$SYS/broker/clients/connected"] ?? "") ?? 0 >= 1, "\(topics)")
        #expect(Int(topics["$SYS/broker/bytes/received"] ?? "") ?? 0 > 0, "\(topics)")
        #expect(topics["$SYS/broker/subscriptions/count"] != nil && topics["$SYS/broker/uptime"] != nil)
        #expect(topics.values.allSatisfy { $0 != "999999" }, "a client's forged figure reached subscribers")
        #expect(r["forged_ack"] as? Int == 0x87)
        await server.stop()
        await svc.stop()
    }

    @Test func aConnectionBurstOverTheRateIsRefusedBeforeCONNECT() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(
            Self.yaml(svc).replacingOccurrences(of: "max_packet_size: 64KiB", with: "max_packet_size: 64KiB, max_connection_rate: 5")
        )
        let r = try await run("burst", String(try await server.mqttPort()), "40")
        let accepted = try #require(r["accepted"] as? Int)
        // A bucket of 5 (plus what refills while the burst is opened): most of the 40 are refused.
        #expect(accepted >= 1 && accepted <= 15, "\(r)")
        let metrics = try await server.admin("GET", "/metrics", token: nil).body
        #expect(metrics.contains("switchyard_mqtt_connects_total{result=\"rate_limited\"}"))
        await server.stop()
        await svc.stop()
    }

    /// A self-signed certificate for 127.0.0.1 made with the openssl command line.
    static func makeCertificate(in dir: String) throws -> (cert: String, key: String) {
        let (status, _, errors) = try Spawn.run(
            "/usr/bin/env",
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "\(dir)/key.pem", "-out", "\(dir)/cert.pem",
            ]
        )
        try #require(status == 0, "openssl could not make a certificate: \(String(decoding: errors, as: UTF8.self))")
        return ("\(dir)/cert.pem", "\(dir)/key.pem")
    }

    @Test(arguments: ["3", "5"])
    func devicesConnectOverTLSAndPlainTextThereIsRefused(version: String) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (cert, key) = try Self.makeCertificate(in: dir)
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(Self.yaml(svc), listeners: "  mqtts: {host: 127.0.0.1, port: 0, cert: \(cert), key: \(key)}")
        let port = try #require(try await server.app.mqttSecureAddress?.get().port)
        let r = try await run("tls", String(port), cert, version)
        #expect(r["connack"] as? Int == 0, "\(r)")
        #expect(r["ack"] as? Int == 0)
        #expect(r["got"] as? [String] == ["over tls"])
        let plain = try #require(r["plain"] as? [String: Any])
        #expect(plain["closed"] as? Bool == true)
        #expect((plain["received"] as? String)?.hasPrefix("20") != true, "a plain-text CONNECT got a CONNACK on the TLS port")
        #expect(await svc.waitFor(count: 1).first?.body == "over tls")  // into the pipeline like any device message
        await server.stop()
        await svc.stop()
    }

    @Test func aTLSListenerNeedsReadableCertificateAndKey() throws {
        let bad = "listeners:\n  mqtts: {cert: /nonexistent/cert.pem}\n"
        #expect(throws: (any Error).self) { try ConfigLoader.parse(yaml: bad) }
    }
}

/// Malformed input never crashes or hangs the broker, and memory stays bounded.
@Suite(.serialized) struct MQTTFuzzTests {
    static func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kb = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kb * 1024
    }

    @Test func tenThousandMutatedPacketsThenANormalClientStillGetsThrough() async throws {
        let svc = try await TestHTTPService.start()
        let server = try await TestServer.start(MQTTChannelTests.yaml(svc))
        let port = String(try await server.mqttPort())
        let mqtt = MQTTChannelTests()
        _ = try await mqtt.run("fuzz", port, "200", "1")  // warm-up: first allocations are not growth
        let before = Self.residentBytes()
        let seed = Int.random(in: 1...1_000_000)
        let fuzz = try await mqtt.run("fuzz", port, "2500", String(seed))
        #expect((fuzz["packets"] as? Int ?? 0) >= 10_000)
        let after = Self.residentBytes()
        print("MQTT fuzz: \(fuzz["packets"] ?? 0) packets on 2500 connections (seed \(seed)); RSS \(before >> 20) → \(after >> 20) MiB")
        #expect(after - before < 64 << 20, "RSS grew by \((after - before) >> 20) MiB (seed \(seed))")
        let ok = try await mqtt.run("publish", port, "5", "1", "3", "devices/p1/after-fuzz/telemetry")
        #expect(ok["acks"] as? [Int] == [0, 0, 0], "seed \(seed): \(ok)")
        // Every fuzz connection is gone (none hangs open on the server).
        var open = server.app.mqttConnections
        for _ in 0..<100 where open != 0 {
            try await Task.sleep(nanoseconds: 100_000_000)
            open = server.app.mqttConnections
        }
        #expect(open == 0, "connections still open after the fuzz (seed \(seed))")
        await server.stop()
        await svc.stop()
    }
}
