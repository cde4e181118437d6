import Foundation
import SwitchyardTesting
import Synchronization
import Testing

@testable import Gateway
@testable import HTTPIngress
@testable import SwitchyardServer

/// HTTP/2 towards clients — h2c by prior knowledge on the plain listener, h2 by ALPN on the TLS
/// listener — and mutual TLS identities as trusted callers, with curl (nghttp2) as the client.
@Suite struct GatewayHTTP2Tests {
    /// Runs a command to its end off the concurrency pool; returns its status and stdout.
    static func run(_ args: [String]) async throws -> (Int32, String) {
        try await ProcessTests.offloaded {
            let (status, output, _) = try Spawn.run("/usr/bin/env", args)
            return (status, String(decoding: output, as: UTF8.self))
        }
    }

    /// A CA, a server certificate for 127.0.0.1 and client certificates named `orders` (by the
    /// CA) and `rogue` (self-signed), made with the openssl command line.
    static func makePKI(in dir: String) async throws {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        let steps: [[String]] = [
            ["openssl", "req", "-x509"] + ec + ["-days", "1", "-subj", "/CN=test-ca", "-keyout", "\(dir)/ca.key", "-out", "\(dir)/ca.pem"],
            ["openssl", "req", "-x509"] + ec + [
                "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "\(dir)/server.key", "-out",
                "\(dir)/server.pem",
            ],
            ["openssl", "req"] + ec + ["-subj", "/CN=orders", "-keyout", "\(dir)/client.key", "-out", "\(dir)/client.csr"],
            [
                "openssl", "x509", "-req", "-in", "\(dir)/client.csr", "-CA", "\(dir)/ca.pem", "-CAkey", "\(dir)/ca.key", "-CAcreateserial",
                "-days", "1", "-out", "\(dir)/client.pem",
            ],
            ["openssl", "req", "-x509"] + ec + ["-days", "1", "-subj", "/CN=orders", "-keyout", "\(dir)/rogue.key", "-out", "\(dir)/rogue.pem"],
        ]
        for step in steps {
            let (status, _) = try await run(step)
            try #require(status == 0, "openssl failed: \(step.joined(separator: " "))")
        }
    }

    @Test func http2ByPriorKnowledgeAndByALPNAndTrustedClientCertificates() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-h2-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await Self.makePKI(in: dir)
        let base = try await TestHTTPService.start(), gray = try await TestHTTPService.start()
        let events = try await TestHTTPService.start()
        let server = try await TestServer.start(
            """
            lanes:
              - {name: gray, entry: {headers: {x-user: [tester]}}}
            gateway:
              trusted_cidrs: [10.0.0.0/8]
              trusted_identities: [orders]
              routes: [{name: api, path_prefix: /api, service: api}]
            routes:
              - {name: events, match: "^devices/.+$", targets: [{service: events, path: /in}]}
            services:
              api: {instances: [{url: "\(base.url)"}, {url: "\(gray.url)", lane: gray}]}
              events: {instances: [{url: "\(events.url)"}]}
            """,
            listeners: "  https: {host: 127.0.0.1, port: 0, cert: \(dir)/server.pem, key: \(dir)/server.key, client_ca: \(dir)/ca.pem}"
        )
        let tlsPort = try #require(try await server.app.ingestTLSAddress?.get().port)
        let format = ["-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]
        // h2c with prior knowledge: the gateway and the message channel.
        var (status, out) = try await Self.run(["curl", "--http2-prior-knowledge"] + format + ["http://127.0.0.1:\(server.httpPort)/api/x"])
        #expect(status == 0 && out == "2 200", "\(out)")
        (status, out) = try await Self.run(
            ["curl", "--http2-prior-knowledge"] + format + ["-d", "{\"t\":1}", "http://127.0.0.1:\(server.httpPort)/v1/messages/devices/p/d/t"]
        )
        #expect(out == "2 202", "\(out)")
        #expect(await events.waitFor(count: 1).first?.body == "{\"t\":1}")
        // HTTP/1.1 on the same listener still works.
        (status, out) = try await Self.run(["curl", "--http1.1"] + format + ["http://127.0.0.1:\(server.httpPort)/api/y"])
        #expect(out == "1.1 200", "\(out)")
        // TLS: h2 or http/1.1 by ALPN; a request body streams over HTTP/2 too.
        let tls = ["--cacert", "\(dir)/server.pem"]
        (status, out) = try await Self.run(["curl", "--http2"] + tls + format + ["https://127.0.0.1:\(tlsPort)/api/z"])
        #expect(out == "2 200", "\(out)")
        (status, out) = try await Self.run(["curl", "--http1.1"] + tls + format + ["https://127.0.0.1:\(tlsPort)/api/z"])
        #expect(out == "1.1 200", "\(out)")
        let upload = String(repeating: "0123456789", count: 100_000)
        try upload.write(toFile: "\(dir)/upload", atomically: true, encoding: .utf8)
        (status, out) = try await Self.run(
            ["curl", "--http2"] + tls + format + ["--data-binary", "@\(dir)/upload", "https://127.0.0.1:\(tlsPort)/api/upload"]
        )
        #expect(out == "2 200", "\(out)")
        #expect(base.received.contains { $0.uri == "/api/upload" && $0.body == upload })
        // Mutual TLS: the `orders` certificate is a trusted caller (its lane is honoured); no
        // certificate is an outside client (its lane header is stripped); a certificate from
        // another CA does not get through the handshake.
        let carried = ["-H", "x-switchyard-lane: gray"]
        let before = gray.received.count
        (status, out) = try await Self.run(
            ["curl", "--http2"] + tls + ["--cert", "\(dir)/client.pem", "--key", "\(dir)/client.key"] + carried + format
                + ["https://127.0.0.1:\(tlsPort)/api/trusted"]
        )
        #expect(out == "2 200", "\(out)")
        #expect(gray.received.count == before + 1 && gray.received.last?.uri == "/api/trusted")
        (status, out) = try await Self.run(["curl", "--http2"] + tls + carried + format + ["https://127.0.0.1:\(tlsPort)/api/anonymous"])
        #expect(out == "2 200")
        #expect(base.received.last?.uri == "/api/anonymous" && gray.received.count == before + 1)
        (status, out) = try await Self.run(
            ["curl", "--http2"] + tls + ["--cert", "\(dir)/rogue.pem", "--key", "\(dir)/rogue.key"] + format + [
                "https://127.0.0.1:\(tlsPort)/api/rogue"
            ]
        )
        #expect(status != 0 && !base.received.contains { $0.uri == "/api/rogue" })
        // HTTP/2 streams let go of their sessions too, on both listeners.
        for listener in [server.app.ingest, server.app.ingestTLS] {
            let pool = (listener?.streaming as? GatewayResponder)?.pool
            let alive = await GatewayLifetimeTests.settled { pool?.sessionsAlive.load(ordering: .relaxed) ?? -1 }
            #expect(alive == 0, "\(alive) sessions still held")
        }
    }
}
