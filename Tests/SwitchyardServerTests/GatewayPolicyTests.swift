import Crypto
import Foundation
import SwitchyardCore
import SwitchyardTesting
import Testing
import _CryptoExtras

@testable import Gateway

/// Per-route policies of the gateway against real upstreams: API keys, rate limits, CORS,
/// body limits, path regex and header matches, rewrites, fault drills, retries, JWT, access log.
@Suite struct GatewayPolicyTests {
    @Test func policiesAnswerWithTheirStatusBeforeTheUpstreamSeesAnything() async throws {
        let up = try await TestHTTPService.start()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-test-\(UUID().uuidString)").path
        let jwt = try TestJWT.config(dir: dir)
        let log = "\(dir)/access.log"
        let server = try await TestServer.start(
            """
            lanes:
              - {name: gray, entry: {headers: {x-user: {regex: "^tester-[0-9]+$"}}}}
            gateway:
              \(jwt)
              access_log: "\(log)"
              routes:
                - name: keyed
                  path_prefix: /keyed
                  service: up
                  api_keys: {keys: {shop: k-123, app: k-456}}
                  rate_limits: [{per: consumer, rate: 0.01, burst: 2}]
                - name: web
                  path_prefix: /web
                  service: up
                  methods: [GET]
                  cors: {origins: ["https://app.test"], expose_headers: [x-total]}
                - {name: small, path_prefix: /small, service: up, max_body_bytes: 10}
                - name: versioned
                  path_regex: "^/v[0-9]+/items"
                  headers: {x-api-version: ["2"]}
                  service: up
                  request_headers: {set: {x-from: gateway}, remove: [x-secret]}
                  response_headers: {add: {x-served-by: switchyard}}
                - {name: drill, path_prefix: /drill, service: up, fault: {abort_status: 418, abort_percent: 100, lanes: [gray]}}
                - {name: slow, path_prefix: /slow, service: up, fault: {delay: 300ms}}
                - {name: legacy, path_prefix: /old, url: "\(up.url)/base", prefix_rewrite: /new}
                - {name: private, path_prefix: /private, service: up, jwt: required}
            services:
              up: {instances: [{url: "\(up.url)"}]}
            """,
            dir: dir
        )
        let port = server.httpPort
        func get(_ path: String, _ headers: [(String, String)] = [], method: String = "GET", body: String = "") async throws
            -> TestHTTPClient.Response
        {
            try await TestHTTPClient.request(method, port: port, path: path, headers: headers, body: body)
        }
        // API keys, then a per-consumer limit: two in the burst, the third waits.
        #expect(try await get("/keyed/a").status == 401)
        #expect(try await get("/keyed/a", [("x-api-key", "wrong")]).body.contains("api_key_invalid"))
        #expect(try await get("/keyed/a", [("x-api-key", "k-123")]).status == 200)
        #expect(try await get("/keyed/a", [("x-api-key", "k-123")]).status == 200)
        let limited = try await get("/keyed/a", [("x-api-key", "k-123")])
        #expect(limited.status == 429 && limited.header("retry-after") != nil && limited.body.contains("rate_limited"))
        #expect(try await get("/keyed/a", [("x-api-key", "k-456")]).status == 200)  // another consumer, its own bucket
        #expect(up.received.count == 3)
        // CORS: a preflight is answered here; a real request gets the allow header.
        let preflight = try await get("/web/x", [("origin", "https://app.test"), ("access-control-request-method", "POST")], method: "OPTIONS")
        #expect(preflight.status == 204 && preflight.header("access-control-allow-origin") == "https://app.test")
        #expect(preflight.header("access-control-allow-methods")?.contains("POST") == true)
        let denied = try await get("/web/x", [("origin", "https://evil.test"), ("access-control-request-method", "GET")], method: "OPTIONS")
        #expect(denied.status == 403)
        let cors = try await get("/web/x", [("origin", "https://app.test")])
        #expect(cors.status == 200 && cors.header("access-control-allow-origin") == "https://app.test")
        #expect(cors.header("access-control-expose-headers") == "x-total")
        // Body limits: by Content-Length at once, by counting a chunked body.
        #expect(try await get("/small", method: "POST", body: String(repeating: "x", count: 20)).status == 413)
        let chunked = "POST /small HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
        let answer = String(decoding: try await TestHTTPClient.raw(Array(chunked.utf8), port: port), as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 413"), "\(answer)")
        #expect(try await get("/small", method: "POST", body: "tiny").status == 200)
        // Path regex and a header match; request and response headers rewritten.
        let before = up.received.count
        #expect(try await get("/v2/items/9", [("x-api-version", "1")]).status == 404)  // no route: the message channel's 404
        let versioned = try await get("/v2/items/9", [("x-api-version", "2"), ("x-secret", "s"), ("x-from", "client")])
        #expect(versioned.status == 200 && versioned.header("x-served-by") == "switchyard")
        let seen = await up.waitFor(count: before + 1).last
        #expect(seen?.uri == "/v2/items/9" && seen?.header("x-from") == "gateway" && seen?.header("x-secret") == nil)
        // A fault drill for the gray lane only.
        let drilled = try await get("/drill/x", [("x-user", "tester-7")])
        #expect(drilled.status == 418 && drilled.body.contains("fault_injected"))
        #expect(try await get("/drill/x", [("x-user", "someone")]).status == 200)
        let start = Date()
        #expect(try await get("/slow").status == 200)
        #expect(Date().timeIntervalSince(start) >= 0.29)
        // A plain URL upstream with its base path; the prefix replaced.
        #expect(try await get("/old/thing?q=1").status == 200)
        #expect(up.received.last?.uri == "/base/new/thing?q=1")
        // A route that needs a token.
        let noToken = try await get("/private")
        #expect(noToken.status == 401 && noToken.header("www-authenticate") == "Bearer" && noToken.body.contains("token_required"))
        let expired = TestJWT.hs256(["sub": "x", "iss": "https://id.test", "exp": Date().timeIntervalSince1970 - 3600], secret: TestJWT.secret)
        #expect(try await get("/private", [("authorization", "Bearer \(expired)")]).body.contains("token expired"))
        let good = TestJWT.hs256(["sub": "x", "iss": "https://id.test"], secret: TestJWT.secret)
        #expect(try await get("/private", [("authorization", "Bearer \(good)")]).status == 200)
        // The access log: one JSON line per request, with route, lane, status and trace id.
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        let parsed = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(parsed.count == lines.count && parsed.count >= 20)
        #expect(parsed.contains { $0["route"] as? String == "drill" && $0["lane"] as? String == "gray" && $0["status"] as? Int == 418 })
        #expect(parsed.contains { $0["route"] as? String == "keyed" && $0["consumer"] as? String == "shop" && $0["status"] as? Int == 200 })
        #expect(parsed.allSatisfy { ($0["trace_id"] as? String)?.count == 32 })
    }

    /// `POST /admin/explain` with a request description: route, each policy's verdict, the lane
    /// and why, the candidates — without taking a rate-limit token or rolling a fault drill.
    @Test func explainShowsTheDecisionsForARequest() async throws {
        let base = try await TestHTTPService.start(), gray = try await TestHTTPService.start()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-test-\(UUID().uuidString)").path
        let jwt = try TestJWT.config(dir: dir)
        let server = try await TestServer.start(
            """
            lanes:
              - {name: gray, entry: {claims: {sub: [alice]}}}
            gateway:
              \(jwt)
              routes:
                - {name: api, path_prefix: /api, service: s, strip_prefix: true, rate_limits: [{per: ip, rate: 0.01, burst: 1}],
                   fault: {abort_percent: 100, lanes: [gray]}}
            services:
              s: {instances: [{url: "\(base.url)"}, {url: "\(gray.url)", lane: gray}]}
            """,
            dir: dir
        )
        let token = TestJWT.hs256(["sub": "alice", "iss": "https://id.test"], secret: TestJWT.secret)
        let body =
            #"{"request": {"method": "GET", "uri": "/api/x?y=1", "host": "shop.test", "headers": {"Authorization": "Bearer \#(token)"}, "client": "203.0.113.9"}}"#
        for _ in 0..<3 {  // a dry run takes no token: the burst of 1 is never used up
            let answer = try await server.admin("POST", "/admin/explain", body: body)
            #expect(answer.status == 200, "\(answer.body)")
            let json = try JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any]
            #expect(json?["route"] as? String == "api" && json?["lane"] as? String == "gray" && json?["outcome"] as? String == "forwarded")
            #expect((json?["lane_reason"] as? String)?.contains("token claim sub") == true)
            #expect(json?["upstream_uri"] as? String == "/x?y=1")
            let candidates = json?["candidates"] as? [[String: Any]]
            #expect(candidates?.count == 1 && candidates?.first?["lane"] as? String == "gray")
            #expect((json?["steps"] as? [String])?.contains { $0.hasPrefix("fault drill") } == true)
        }
        let refused = try await server.admin(
            "POST",
            "/admin/explain",
            body: #"{"request": {"uri": "/api/x", "headers": {"authorization": "Bearer x.y.z"}}}"#
        )
        #expect(refused.body.contains(#""outcome" : "401 invalid_token""#), "\(refused.body)")
        let none = try await server.admin("POST", "/admin/explain", body: #"{"request": {"uri": "/elsewhere"}}"#)
        #expect(none.body.contains(#""gateway" : false"#))
        #expect(try await server.admin("POST", "/admin/explain", body: #"{"request": {"uri": "nope"}}"#).status == 400)
        #expect(try await server.admin("POST", "/admin/explain", body: #"{"request": {"uri": "/api"}}"#, token: nil).status == 401)
        // The real request still has its one token.
        #expect(try await TestHTTPClient.request("GET", port: server.httpPort, path: "/api/x", body: "").status == 200)
    }

    /// An unreachable instance is replaced by another; a 503 is retried for an idempotent
    /// request, not for a POST; the retries are counted.
    @Test func retriesGoToAnotherInstance() async throws {
        let live = try await TestHTTPService.start()
        let failing = try await TestHTTPService.start()
        failing.setStatus(503)
        let dead = try await TestHTTPService.startRestartable()
        let deadURL = dead.url
        await dead.stop()
        let server = try await TestServer.start(
            """
            gateway:
              routes:
                - {name: flaky, path_prefix: /flaky, service: flaky, retries: 1}
                - {name: down, path_prefix: /down, service: down, retries: 2}
            services:
              flaky: {instances: [{url: "\(live.url)"}, {url: "\(failing.url)"}], circuit: {failures: 0}}
              down: {instances: [{url: "\(deadURL)"}, {url: "\(live.url)"}]}
            """
        )
        let port = server.httpPort
        for _ in 0..<10 {
            #expect(try await TestHTTPClient.request("GET", port: port, path: "/flaky", body: "").status == 200)
            #expect(try await TestHTTPClient.request("POST", port: port, path: "/down", body: "{}").status == 200)
        }
        // A POST that met the failing instance is not repeated: its 503 comes through.
        var posts: [Int] = []
        for _ in 0..<20 { posts.append(try await TestHTTPClient.request("POST", port: port, path: "/flaky", body: "x").status) }
        #expect(posts.contains(503) && posts.contains(200))
        #expect(failing.received.contains { $0.method == "POST" })
        let metrics = try await server.admin("GET", "/metrics", token: nil).body.split(separator: "\n")
        #expect(metrics.contains { $0.hasPrefix("switchyard_gateway_retries_total") && $0.contains(#"route="flaky""#) })
        #expect(metrics.contains { $0.hasPrefix("switchyard_gateway_upstream_errors_total") && $0.contains(#"kind="connect""#) })
    }

    /// The gateway shares the router's balancer: an instance drained through the admin API gets
    /// no new requests (in-flight ones finish) until undrained; one that keeps answering 5xx is
    /// ejected by its circuit; `GET /admin/services` shows both.
    @Test func drainAndEjectionThroughTheSharedBalancer() async throws {
        let a = try await TestHTTPService.start(), b = try await TestHTTPService.start(), bad = try await TestHTTPService.start()
        bad.setStatus(500)
        let server = try await TestServer.start(
            """
            resilience: {warmup: {duration: 0s}}
            gateway:
              routes:
                - {name: api, path_prefix: /api, service: api}
                - {name: flaky, path_prefix: /flaky, service: flaky, retries: 0}
            services:
              api: {instances: [{url: "\(a.url)"}, {url: "\(b.url)"}]}
              flaky: {instances: [{url: "\(a.url)"}, {url: "\(bad.url)"}], circuit: {failures: 2, open_for: 60s}}
            """
        )
        let port = server.httpPort
        let id = "api@127.0.0.1:\(a.port)"
        let drained = try await server.admin("POST", "/admin/instances/\(id)/drain")
        #expect(drained.status == 200 && drained.body.contains(#""draining":"admin""#), "\(drained.body)")
        for _ in 0..<20 { #expect(try await TestHTTPClient.request("GET", port: port, path: "/api/x", body: "").status == 200) }
        #expect(a.received.isEmpty && b.received.count == 20)
        let services = try await server.admin("GET", "/admin/services").body
        #expect(services.contains(#""draining" : "admin""#), "\(services)")
        #expect(try await server.admin("POST", "/admin/instances/nope@1.2.3.4:5/drain").status == 404)
        #expect(try await server.admin("POST", "/admin/instances/\(id)/undrain").status == 200)
        for _ in 0..<40 { _ = try await TestHTTPClient.request("GET", port: port, path: "/api/y", body: "") }
        #expect(a.received.count > 5)
        // Outlier ejection: after two 500s in a row the bad instance's circuit opens (cap 50 %).
        var statuses: [Int] = []
        for _ in 0..<30 { statuses.append(try await TestHTTPClient.request("GET", port: port, path: "/flaky/z", body: "").status) }
        // Once open (after the second 500, wherever the balancer's random choices put it), only 200s.
        let failures = statuses.indices.filter { statuses[$0] == 500 }
        #expect(failures.count == 2, "\(statuses)")
        if let opened = failures.last {
            #expect(opened < 25 && statuses[(opened + 1)...].allSatisfy { $0 == 200 }, "\(statuses)")
        }
        let after = try await server.admin("GET", "/admin/services").body
        #expect(after.contains(#""circuit" : "open""#), "\(after)")
    }

    /// A route's circuit breaker: once most answers fail, requests get 503 `circuit_open` at
    /// once, without reaching the service; a message target's breaker makes messages wait in
    /// the journal instead of being dead-lettered, and they arrive once it closes.
    @Test func routeAndTargetBreakersFailFastAndMessagesWait() async throws {
        let svc = try await TestHTTPService.start(status: 500)
        let server = try await TestServer.start(
            """
            gateway:
              routes:
                - {name: api, path_prefix: /api, service: s, retries: 0, breaker: {min_requests: 5, error_ratio: 0.5, open_for: 8s, half_open_probes: 1, close_after: 1}}
                - {name: limited, path_prefix: /limited, service: slow, max_concurrency: 1}
            routes:
              - {name: m, match: "^devices/.+$", targets: [{service: s, path: /in, retries: 0, breaker: {min_requests: 3, error_ratio: 0.5, open_for: 8s, half_open_probes: 1, close_after: 1}}]}
            services:
              s: {instances: [{url: "\(svc.url)"}], circuit: {failures: 0}}
              slow: {instances: [{url: "\(svc.url)"}]}
            """
        )
        let port = server.httpPort
        var statuses: [Int] = []
        for _ in 0..<10 { statuses.append(try await TestHTTPClient.request("GET", port: port, path: "/api/x", body: "").status) }
        #expect(statuses.prefix(5).allSatisfy { $0 == 500 } && statuses.suffix(5).allSatisfy { $0 == 503 }, "\(statuses)")
        let fast = try await TestHTTPClient.request("GET", port: port, path: "/api/x", body: "")
        #expect(fast.body.contains("circuit_open"))
        #expect(svc.received.filter { $0.uri.hasPrefix("/api") }.count == 5)  // the open circuit sent nothing
        // The service recovers: after open_for a probe goes through and closes the circuit.
        svc.setStatus(200)
        var recovered = false
        for _ in 0..<200 where !recovered {
            recovered = try await TestHTTPClient.request("GET", port: port, path: "/api/x", body: "").status == 200
            if !recovered { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        #expect(recovered)
        #expect(try await TestHTTPClient.request("GET", port: port, path: "/api/x", body: "").status == 200)
        // Messages: three 500s dead-letter (retries 0) and open the target's circuit; the next
        // ones wait, and arrive once the service answers again.
        svc.setStatus(500)
        for i in 0..<3 { #expect(try await server.post("devices/d/t", body: "bad-\(i)").status == 202) }
        try await Task.sleep(nanoseconds: 300_000_000)
        for i in 0..<3 { #expect(try await server.post("devices/d/t", body: "wait-\(i)").status == 202) }
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(!svc.received.contains { $0.body.hasPrefix("wait-") })
        svc.setStatus(200)
        var arrived = 0
        for _ in 0..<600 {
            arrived = svc.received.filter { $0.body.hasPrefix("wait-") && $0.uri == "/in" }.count
            if arrived >= 3 { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(arrived >= 3)
        let letters = try await server.admin("GET", "/admin/dead-letters").body
        #expect(!letters.contains("wait-"), "\(letters)")
        // A route's concurrency limit.
        svc.setDelay(seconds: 3)
        async let first = TestHTTPClient.request("GET", port: port, path: "/limited/a", body: "")
        // Only once the first is in flight at the service (a loaded machine may take a while).
        for _ in 0..<100 where !svc.received.contains(where: { $0.uri == "/limited/a" }) { try await Task.sleep(nanoseconds: 20_000_000) }
        let second = try await TestHTTPClient.request("GET", port: port, path: "/limited/b", body: "")
        #expect(second.status == 503 && second.body.contains("concurrency_limit"))
        #expect(try await first.status == 200)
    }

    /// Tokens signed by each supported family, from a JWKS file; what must be refused is.
    @Test func jwtVerification() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-jwt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let ec = P256.Signing.PrivateKey()
        let rsa = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let primitives = try rsa.publicKey.getKeyPrimitives()
        let jwks: [String: Any] = [
            "keys": [
                TestJWT.jwk(ec.publicKey, kid: "ec1"),
                [
                    "kty": "RSA", "kid": "rsa1", "alg": "RS256", "n": Base64URL.encode(primitives.modulus),
                    "e": Base64URL.encode(primitives.publicExponent),
                ],
                ["kty": "oct", "kid": "hs1", "k": Base64URL.encode(Data(TestJWT.secret.utf8))],
            ]
        ]
        try JSONSerialization.data(withJSONObject: jwks).write(to: URL(fileURLWithPath: "\(dir)/jwks.json"))
        var settings = SwitchyardConfiguration.JWTSettings()
        settings.jwksFile = "\(dir)/jwks.json"
        settings.audiences = ["shop"]
        let verifier = try JWTVerifier(settings: settings)
        let now = Date().timeIntervalSince1970
        let claims: [String: Any] = ["sub": "alice", "aud": ["shop", "other"], "exp": now + 60, "roles": ["beta", "admin"], "uid": 42]
        let es = TestJWT.es256(claims, key: ec, kid: "ec1")
        let verified = try verifier.verify(es)
        #expect(verified["sub"] == ["alice"] && verified["roles"] == ["beta", "admin"] && verified["uid"] == ["42"])
        // RS256.
        let input = TestJWT.token(claims, header: ["alg": "RS256", "kid": "rsa1"]).input
        let rs = input + "." + Base64URL.encode(try rsa.signature(for: Data(input.utf8), padding: .insecurePKCS1v1_5).rawRepresentation)
        #expect(try verifier.verify(rs)["sub"] == ["alice"])
        #expect(try verifier.verify(TestJWT.hs256(claims, secret: TestJWT.secret, kid: "hs1"))["sub"] == ["alice"])
        func refused(_ token: String, now at: Double = now) -> String {
            do {
                _ = try verifier.verify(token, now: at)
                return "accepted"
            } catch { return error.description }
        }
        #expect(refused(es, now: now + 3600).contains("expired"))
        #expect(refused(TestJWT.es256(["sub": "a", "aud": "elsewhere"], key: ec, kid: "ec1")).contains("audience"))
        #expect(refused(TestJWT.es256(claims, key: P256.Signing.PrivateKey(), kid: "ec1")).contains("signature"))
        #expect(refused(TestJWT.es256(claims, key: ec, kid: "unknown")).contains("no key"))
        // alg none, and an HMAC token "signed" with the RSA key's public bytes (algorithm confusion).
        let none = TestJWT.token(claims, header: ["alg": "none"]).input + "."
        #expect(refused(none).contains("no key"))
        let confused = TestJWT.token(claims, header: ["alg": "HS256", "kid": "rsa1"]).input
        let mac = HMAC<SHA256>.authenticationCode(for: Data(confused.utf8), using: SymmetricKey(data: primitives.modulus))
        #expect(refused(confused + "." + Base64URL.encode(Data(mac))).contains("no key"))
        #expect(refused("not.a.token!").contains("malformed"))
        #expect(refused("onlyone").contains("malformed"))
        // A bad JWKS file names its key path.
        settings.jwksFile = "\(dir)/missing.json"
        #expect(throws: KeyPathError.self) { try JWTVerifier(settings: settings) }
    }
}
