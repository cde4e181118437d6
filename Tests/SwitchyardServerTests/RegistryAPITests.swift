import ConfigCenter
import Foundation
import SwitchyardTesting
import Testing

/// The Nacos v1 API on its own listener: raw HTTP for the wire details (long-poll encoding,
/// the 20404 beat), the real Python client (nacos-sdk-python 2.0.11, Tests/Fixtures/
/// nacos_scenarios.py), auth, and a registered instance receiving routed messages.
@Suite(.serialized) struct RegistryAPITests {
    static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/nacos_scenarios.py").path

    static func nacosPort(_ server: TestServer) async throws -> Int { try await server.app.nacosAddress!.get().port! }

    static func call(
        _ method: String,
        _ port: Int,
        _ path: String,
        form: [(String, String)] = [],
        headers: [(String, String)] = []
    ) async throws -> TestHTTPClient.Response {
        let body = form.map { "\(encode($0.0))=\(encode($0.1))" }.joined(separator: "&")
        var h = headers
        if !form.isEmpty { h.append(("content-type", "application/x-www-form-urlencoded")) }
        return try await TestHTTPClient.request(method, port: port, path: path, headers: h, body: body)
    }

    static func encode(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }

    static func md5(_ s: String) -> String {
        let output =
            (try? Spawn.run("/usr/bin/env", ["python3", "-c", "import hashlib,sys;print(hashlib.md5(sys.argv[1].encode()).hexdigest())", s]))?.1
        return String(decoding: output ?? Data(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs a scenario of the real client; returns its JSON.
    func client(_ args: String...) async throws -> [String: Any] { try await ProcessTests.runScenario(Self.script, args) }

    @Test func realClientRegistersListsSubscribesAndDeregisters() async throws {
        let server = try await TestServer.start("")
        let port = try await Self.nacosPort(server)
        let r = try await client("127.0.0.1:\(port)", "naming", "19001")
        #expect(r["error"] == nil, "\(r)")
        let list = try await Self.call("GET", port, "/nacos/v1/ns/instance/list?serviceName=orders")
        #expect(list.status == 200)
        #expect(list.body.contains(#""hosts":[]"#), "\(list.body)")
    }

    @Test func realClientPublishesReadsWatchesAndDeletesConfig() async throws {
        let server = try await TestServer.start("")
        let port = try await Self.nacosPort(server)
        let r = try await client("127.0.0.1:\(port)", "config")
        #expect(r["error"] == nil, "\(r)")
        let dev = try await client("127.0.0.1:\(port)", "config", "dev")
        #expect(dev["error"] == nil, "\(dev)")
    }

    @Test func longPollWireEncoding() async throws {
        let server = try await TestServer.start("")
        let port = try await Self.nacosPort(server)
        #expect(
            try await Self.call("POST", port, "/nacos/v1/cs/configs", form: [("dataId", "a.yaml"), ("group", "G"), ("content", "x: 1")]).body
                == "true"
        )
        #expect(
            try await Self.call("POST", port, "/nacos/v1/cs/configs", form: [("dataId", "b"), ("group", "G"), ("tenant", "dev"), ("content", "y")])
                .body
                == "true"
        )
        let noHangup = [("Long-Pulling-Timeout", "30000"), ("Long-Pulling-Timeout-No-Hangup", "true")]
        // Empty MD5s: both differ at once. 3-field line (public) and 4-field line (tenant dev).
        let probe = "a.yaml\u{2}G\u{2}\u{1}b\u{2}G\u{2}\u{2}dev\u{1}"
        let both = try await Self.call("POST", port, "/nacos/v1/cs/configs/listener", form: [("Listening-Configs", probe)], headers: noHangup)
        #expect(both.status == 200)
        #expect(both.body == "a.yaml%02G%01b%02G%02dev%01")
        #expect(both.header("cache-control") == "no-cache,no-store")
        // Current MD5s and no-hangup: an empty answer at once.
        let current = "a.yaml\u{2}G\u{2}\(Self.md5("x: 1"))\u{1}"
        let none = try await Self.call("POST", port, "/nacos/v1/cs/configs/listener", form: [("Listening-Configs", current)], headers: noHangup)
        #expect(none.status == 200 && none.body.isEmpty)
        // Held: answered as soon as the key changes.
        let started = Date()
        async let held = Self.call(
            "POST",
            port,
            "/nacos/v1/cs/configs/listener",
            form: [("Listening-Configs", current)],
            headers: [("Long-Pulling-Timeout", "30000")]
        )
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(
            try await Self.call("POST", port, "/nacos/v1/cs/configs", form: [("dataId", "a.yaml"), ("group", "G"), ("content", "x: 2")]).body
                == "true"
        )
        let woken = try await held
        #expect(woken.body == "a.yaml%02G%01")
        #expect(Date().timeIntervalSince(started) < 5)
        // Bad input: too many fields, no probe, a bad timeout.
        let five = try await Self.call(
            "POST",
            port,
            "/nacos/v1/cs/configs/listener",
            form: [("Listening-Configs", "a\u{2}G\u{2}m\u{2}t\u{2}x\u{1}")],
            headers: noHangup
        )
        #expect(five.status == 400 && five.body.contains("5 fields"))
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs/listener", form: [("x", "y")]).status == 400)
        let badTimeout = try await Self.call(
            "POST",
            port,
            "/nacos/v1/cs/configs/listener",
            form: [("Listening-Configs", current)],
            headers: [("Long-Pulling-Timeout", "soon")]
        )
        #expect(badTimeout.status == 400)
    }

    /// 1,000 rapid publishes of one key while 50 listeners long-poll over HTTP as Nacos clients
    /// do (GET for the MD5, long-poll with it, GET again when told): every listener ends at the
    /// final content and MD5, and no long-poll is left hanging.
    @Test func noLostUpdateOverHTTPWith50ListenersAnd1000Publishes() async throws {
        let server = try await TestServer.start("")
        let port = try await Self.nacosPort(server)
        let key = [("dataId", "hot.yaml"), ("group", "G")]
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs", form: key + [("content", "v0")]).body == "true")
        let publishes = 1000
        let final = "v\(publishes)"
        let finalMD5 = Self.md5(final)
        try await withThrowingTaskGroup(of: (String, String).self) { group in
            for _ in 0..<50 {
                group.addTask {
                    var got = try await Self.call("GET", port, "/nacos/v1/cs/configs?dataId=hot.yaml&group=G")
                    let deadline = Date().addingTimeInterval(60)
                    while got.body != final && Date() < deadline {
                        let probe = "hot.yaml\u{2}G\u{2}\(got.header("Content-MD5") ?? "")\u{2}\u{1}"
                        let answer = try await Self.call(
                            "POST",
                            port,
                            "/nacos/v1/cs/configs/listener",
                            form: [("Listening-Configs", probe)],
                            headers: [("Long-Pulling-Timeout", "30000")]
                        )
                        if answer.status != 200 { break }
                        got = try await Self.call("GET", port, "/nacos/v1/cs/configs?dataId=hot.yaml&group=G")
                    }
                    return (got.body, got.header("Content-MD5") ?? "")
                }
            }
            // The publishes go straight to the node's config center (the code past the HTTP
            // layer), so 1,000 come faster than the listeners can follow: the race under test.
            let center = try #require(server.app.configCenter)
            group.addTask {
                for v in 1...publishes {
                    try center.publish(ConfigKey(group: "G", dataId: "hot.yaml"), content: "v\(v)", source: .init(ip: "127.0.0.1"))
                    if v % 100 == 0 { try await Task.sleep(nanoseconds: 1_000_000) }  // let the listeners in now and then
                }
                return ("publisher", "")
            }
            var finals: [(String, String)] = []
            for try await result in group where result.0 != "publisher" { finals.append(result) }
            #expect(finals.count == 50)
            #expect(finals.allSatisfy { $0.0 == final && $0.1 == finalMD5 }, "\(finals.filter { $0.0 != final })")
        }
        #expect(server.app.configCenter?.waitingListeners == 0)
    }

    @Test func configGetHeadersCasAndHistory() async throws {
        let server = try await TestServer.start("")
        let port = try await Self.nacosPort(server)
        let q = "dataId=app.yaml&group=DEFAULT_GROUP"
        #expect(try await Self.call("GET", port, "/nacos/v1/cs/configs?\(q)").status == 404)
        _ = try await Self.call(
            "POST",
            port,
            "/nacos/v1/cs/configs",
            form: [("dataId", "app.yaml"), ("group", "DEFAULT_GROUP"), ("content", "a+b & c"), ("type", "yaml")]
        )
        let got = try await Self.call("GET", port, "/nacos/v1/cs/configs?\(q)")
        #expect(got.body == "a+b & c")
        #expect(got.header("Config-Type") == "yaml")
        #expect(got.header("Content-MD5") == Self.md5("a+b & c"))
        let cas = try await Self.call(
            "POST",
            port,
            "/nacos/v1/cs/configs",
            form: [("dataId", "app.yaml"), ("group", "DEFAULT_GROUP"), ("content", "new")],
            headers: [("casMd5", "0123")]
        )
        #expect(cas.status == 409)
        #expect(try await Self.call("GET", port, "/nacos/v1/cs/configs?\(q)").body == "a+b & c")
        let history = try await Self.call("GET", port, "/nacos/v1/cs/history?search=accurate&\(q)")
        #expect(history.body.contains(#""totalCount":1"#))
        #expect(
            try await Self.call("POST", port, "/nacos/v1/cs/configs", form: [("dataId", "bad id"), ("group", "G"), ("content", "x")]).status == 400
        )
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs", form: [("dataId", "a"), ("group", "G")]).status == 400)
        // A beta for this client's address (loopback), then stopped.
        let beta = try await Self.call(
            "POST",
            port,
            "/nacos/v1/cs/configs",
            form: [("dataId", "app.yaml"), ("group", "DEFAULT_GROUP"), ("content", "beta!")],
            headers: [("betaIps", "127.0.0.1")]
        )
        #expect(beta.body == "true")
        let served = try await Self.call("GET", port, "/nacos/v1/cs/configs?\(q)")
        #expect(served.body == "beta!" && served.header("isBeta") == "true")
        let query = try await Self.call("GET", port, "/nacos/v1/cs/configs?\(q)&beta=true")
        #expect(query.body.contains(#""betaIps":"127.0.0.1""#), "\(query.body)")
        let stop = try await Self.call("DELETE", port, "/nacos/v1/cs/configs?\(q)&beta=true")
        #expect(stop.body.contains(#""data":true"#))
        let main = try await Self.call("GET", port, "/nacos/v1/cs/configs?\(q)")
        #expect(main.body == "a+b & c" && main.header("isBeta") == nil)
    }

    @Test func aLightBeatForAnUnknownInstanceAnswers20404AndAFullBeatRegisters() async throws {
        let server = try await TestServer.start("")
        let port = try await Self.nacosPort(server)
        let light = try await Self.call("PUT", port, "/nacos/v1/ns/instance/beat?serviceName=orders&ip=10.0.0.9&port=8080")
        #expect(light.status == 200)
        #expect(light.body.contains(#""code":20404"#), "\(light.body)")
        let beat = #"{"ip":"10.0.0.9","port":8080,"serviceName":"DEFAULT_GROUP@@orders","metadata":{"lane":"gray"},"weight":1.0}"#
        let full = try await Self.call("PUT", port, "/nacos/v1/ns/instance/beat?serviceName=DEFAULT_GROUP@@orders&beat=\(Self.encode(beat))")
        #expect(full.body == #"{"clientBeatInterval":5000,"code":10200,"lightBeatEnabled":true}"#)
        let list = try await Self.call("GET", port, "/nacos/v1/ns/instance/list?serviceName=orders")
        #expect(list.body.contains(#""ip":"10.0.0.9","port":8080"#) && list.body.contains(#""metadata":{"lane":"gray"}"#), "\(list.body)")
        let again = try await Self.call("PUT", port, "/nacos/v1/ns/instance/beat?serviceName=orders&ip=10.0.0.9&port=8080")
        #expect(again.body.contains(#""code":10200"#))
        // Bad input gets a status and a reason.
        let noPort = try await Self.call("POST", port, "/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.1")
        #expect(noPort.status == 400 && noPort.body.contains("port"))
        let badMeta = try await Self.call("POST", port, "/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.1&port=1&metadata=%7Bnope")
        #expect(badMeta.status == 400)
        #expect(try await Self.call("GET", port, "/nacos/v1/ns/nothing").status == 404)
        let hugePage = try await Self.call("GET", port, "/nacos/v1/ns/service/list?pageNo=9223372036854775807&pageSize=10000")
        #expect(hugePage.status == 200 && hugePage.body.contains(#""doms":[]"#), "\(hugePage.body)")
        let typeChange = try await Self.call("POST", port, "/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.9&port=8080&ephemeral=false")
        #expect(typeChange.status == 400 && typeChange.body.contains("type cannot change"), "\(typeChange.body)")
        let injected = Self.encode(#"{"health.check":"http","health.path":"/\r\nFLUSHALL"}"#)
        let crlf = try await Self.call(
            "POST",
            port,
            "/nacos/v1/ns/instance?serviceName=db&ip=127.0.0.1&port=6379&ephemeral=false&metadata=\(injected)"
        )
        #expect(crlf.status == 400 && crlf.body.contains("health.path"), "\(crlf.body)")
        let tagged = try await Self.call(
            "POST",
            port,
            "/nacos/v1/cs/configs",
            form: [("dataId", "a"), ("group", "G"), ("content", "x"), ("tag", "t1")]
        )
        #expect(tagged.status == 400 && tagged.body.contains("tag"))
    }

    @Test func withAuthEveryEndpointNeedsATokenAndNamespacesAreIsolated() async throws {
        let server = try await TestServer.start("registry: {auth: \"on\", config: {data_id: switchyard.yaml}}")
        let port = try await Self.nacosPort(server)
        for (method, path) in [
            ("GET", "/nacos/v1/console/namespaces"), ("GET", "/nacos/v1/ns/instance/list?serviceName=x"),
            ("POST", "/nacos/v1/ns/instance?serviceName=x&ip=1.1.1.1&port=1"), ("PUT", "/nacos/v1/ns/instance/beat?serviceName=x&ip=1.1.1.1&port=1"),
            ("GET", "/nacos/v1/ns/service/list"), ("GET", "/nacos/v1/cs/configs?dataId=a&group=G"), ("POST", "/nacos/v1/cs/configs/listener"),
            ("GET", "/nacos/v1/cs/history?search=accurate&dataId=a&group=G"), ("GET", "/nacos/v1/auth/users"),
        ] {
            let r = try await Self.call(method, port, path)
            #expect(r.status == 403, "\(method) \(path) answered \(r.status) without a token")
        }
        let forged = try await Self.call("GET", port, "/nacos/v1/console/namespaces?accessToken=eyJhbGciOiJIUzI1NiJ9.e30.x")
        #expect(forged.status == 403)
        let password = try String(contentsOfFile: "\(server.dir)/data/registry-admin-password", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let wrong = try await Self.call("POST", port, "/nacos/v1/auth/login", form: [("username", "nacos"), ("password", "nacos")])
        #expect(wrong.status == 403)  // there is no default password
        let adminToken = try await Self.login(port, "nacos", password)
        for ns in ["team-a", "team-b"] {
            #expect(
                try await Self.call(
                    "POST",
                    port,
                    "/nacos/v1/console/namespaces?accessToken=\(adminToken)",
                    form: [("customNamespaceId", ns), ("namespaceName", ns)]
                ).body == "true"
            )
        }
        #expect(
            try await Self.call(
                "POST",
                port,
                "/nacos/v1/auth/users?accessToken=\(adminToken)",
                form: [("username", "alice"), ("password", "alice-secret-1")]
            )
            .status == 200
        )
        #expect(
            try await Self.call(
                "POST",
                port,
                "/nacos/v1/auth/permissions?accessToken=\(adminToken)",
                form: [("username", "alice"), ("namespace", "team-a"), ("action", "rw")]
            ).status == 200
        )
        let alice = try await Self.login(port, "alice", "alice-secret-1")
        let inA = [("dataId", "app"), ("group", "G"), ("tenant", "team-a"), ("content", "a")]
        let inB = [("dataId", "app"), ("group", "G"), ("tenant", "team-b"), ("content", "b")]
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs?accessToken=\(alice)", form: inA).body == "true")
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs?accessToken=\(alice)", form: inB).status == 403)
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs?accessToken=\(adminToken)", form: inB).body == "true")
        #expect(try await Self.call("GET", port, "/nacos/v1/cs/configs?dataId=app&group=G&tenant=team-b&accessToken=\(alice)").status == 403)
        #expect(try await Self.call("GET", port, "/nacos/v1/cs/configs?dataId=app&group=G&tenant=team-a&accessToken=\(alice)").body == "a")
        #expect(
            try await Self.call("POST", port, "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=1&namespaceId=team-b&accessToken=\(alice)").status
                == 403
        )
        // Switchyard's own config (registry.config) is for administrators only, even in a namespace one may write.
        try #require(
            try await Self.call(
                "POST",
                port,
                "/nacos/v1/auth/permissions?accessToken=\(adminToken)",
                form: [("username", "alice"), ("namespace", "public"), ("action", "rw")]
            ).status == 200
        )
        let own = [("dataId", "switchyard.yaml"), ("group", "SWITCHYARD"), ("content", "routes: []")]
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs?accessToken=\(alice)", form: own).status == 403)
        #expect(
            try await Self.call("POST", port, "/nacos/v1/cs/configs?accessToken=\(alice)", form: [("dataId", "x"), ("group", "G"), ("content", "y")])
                .body == "true"
        )
        let visible = try await Self.call("GET", port, "/nacos/v1/console/namespaces?accessToken=\(alice)")
        #expect(visible.body.contains("team-a") && !visible.body.contains("team-b"))
        // The real client with credentials: allowed in its namespace, refused in the other.
        let ok = try await client("127.0.0.1:\(port)", "login", "alice", "alice-secret-1", "team-a")
        #expect(ok["error"] == nil, "\(ok)")
        let refused = try await client("127.0.0.1:\(port)", "denied", "alice", "alice-secret-1", "team-b")
        #expect(refused["error"] == nil, "\(refused)")
    }

    static func login(_ port: Int, _ user: String, _ password: String) async throws -> String {
        let r = try await call("POST", port, "/nacos/v1/auth/login", form: [("username", user), ("password", password)])
        try #require(r.status == 200, "login \(user): \(r.status) \(r.body)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any])
        #expect(json["tokenTtl"] as? Int == 18000)
        return try #require(json["accessToken"] as? String)
    }

    /// Persistent instances are checked by the server: TCP connect, or HTTP with metadata
    /// `health.check: http`; a failing one turns unhealthy, and healthy again when it recovers.
    @Test func persistentInstancesAreHealthCheckedByTCPAndHTTP() async throws {
        let up = try await TestHTTPService.start()
        let failing = try await TestHTTPService.start(status: 500)
        let closedPort = ProcessTests.freePort()
        let server = try await TestServer.start("registry: {health_check_interval: 1s}")
        let port = try await Self.nacosPort(server)
        let http = Self.encode(#"{"health.check":"http","health.path":"/healthz"}"#)
        for (p, meta) in [(up.port, http), (failing.port, http), (closedPort, ""), (up.port + 0, "")] {
            let cluster = meta.isEmpty ? "tcp" : "http"
            let r = try await Self.call(
                "POST",
                port,
                "/nacos/v1/ns/instance?serviceName=db&ip=127.0.0.1&port=\(p)&ephemeral=false&clusterName=\(cluster)&metadata=\(meta)"
            )
            #expect(r.body == "ok")
        }
        var healthy: Set<String> = []
        // (Registered instances start healthy: the failing two may be marked down before the
        // check of the good one has reached it, so both are waited for.)
        let checked = { up.received.contains { $0.uri == "/healthz" && $0.header("user-agent") == "switchyard-health" } }
        for _ in 0..<60 {
            let list = try await Self.call("GET", port, "/nacos/v1/ns/instance/list?serviceName=db&healthyOnly=true")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(list.body.utf8)) as? [String: Any])
            let hosts = json["hosts"] as? [[String: Any]] ?? []
            healthy = Set(hosts.map { "\($0["clusterName"] ?? "")/\($0["port"] ?? "")" })
            if healthy.count == 2 && checked() { break }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        #expect(healthy == ["http/\(up.port)", "tcp/\(up.port)"])
        #expect(checked())
        failing.setStatus(200)
        var recovered = false
        for _ in 0..<60 where !recovered {
            let list = try await Self.call("GET", port, "/nacos/v1/ns/instance/list?serviceName=db&healthyOnly=true&clusters=http")
            recovered = list.body.contains("\"port\":\(failing.port)")
            if !recovered { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        #expect(recovered)
    }

    /// Switchyard's own routes in the config center: a publish reroutes at once, a bad one is
    /// refused with the key path (the old routes keep serving), a delete restores the file's.
    @Test func routesFromTheConfigCenterHotReloadWithTheSameValidation() async throws {
        let a = try await TestHTTPService.start()
        let b = try await TestHTTPService.start()
        let server = try await TestServer.start(
            """
            registry: {config: {data_id: switchyard.yaml}}
            routes:
              - {name: r, match: "^devices/(?<device>[^/]+)$", targets: [{service: a, path: "/a/{device}"}]}
            services:
              a: {instances: [{url: "\(a.url)"}]}
              b: {instances: [{url: "\(b.url)"}]}
            """
        )
        let port = try await Self.nacosPort(server)
        let key = [("dataId", "switchyard.yaml"), ("group", "SWITCHYARD")]
        #expect(try await server.post("devices/d1").status == 202)
        #expect(await a.waitFor(count: 1).count == 1)
        let toB = #"routes: [{name: r, match: "^devices/(?<device>[^/]+)$", targets: [{service: b, path: "/b/{device}"}]}]"#
        #expect(try await Self.call("POST", port, "/nacos/v1/cs/configs", form: key + [("content", toB)]).body == "true")
        #expect(try await server.post("devices/d2").status == 202)
        #expect(await b.waitFor(count: 1).first?.uri == "/b/d2")
        let bad = #"routes: [{name: r, match: "^devices/(unclosed", targets: [{service: b}]}]"#
        let refused = try await Self.call("POST", port, "/nacos/v1/cs/configs", form: key + [("content", bad)])
        #expect(refused.status == 400)
        #expect(refused.body.contains("routes[0].match: unbalanced"), "\(refused.body)")
        let notHere = try await Self.call("POST", port, "/nacos/v1/cs/configs", form: key + [("content", "journal: {enabled: false}")])
        #expect(notHere.status == 400 && notHere.body.contains("journal"), "\(notHere.body)")
        #expect(try await server.post("devices/d3").status == 202)
        #expect(await b.waitFor(count: 2).last?.uri == "/b/d3")
        #expect(try await Self.call("DELETE", port, "/nacos/v1/cs/configs?dataId=switchyard.yaml&group=SWITCHYARD").body == "true")
        #expect(try await server.post("devices/d4").status == 202)
        #expect(await a.waitFor(count: 2).last?.uri == "/a/d4")
    }

    /// A service registers itself with `lane=gray`; a gray device's message reaches it; when
    /// it deregisters, the next message falls back to the baseline instance.
    @Test func aRegisteredGrayInstanceGetsGrayMessagesUntilItLeaves() async throws {
        let baseline = try await TestHTTPService.start()
        let gray = try await TestHTTPService.start()
        let server = try await TestServer.start(
            """
            lanes:
              - {name: gray, entry: {devices: [d-gray]}}
            routes:
              - name: telemetry
                match: "^devices/(?<product>[^/]+)/(?<device>[^/]+)/telemetry$"
                targets: [{service: orders, path: "/in/{device}"}]
            """
        )
        let port = try await Self.nacosPort(server)
        #expect(try await Self.call("POST", port, "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(baseline.port)").body == "ok")
        let meta = Self.encode(#"{"lane":"gray"}"#)
        #expect(
            try await Self.call("POST", port, "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(gray.port)&metadata=\(meta)").body == "ok"
        )
        #expect(try await server.post("devices/p/d-gray/telemetry").status == 202)
        #expect(try await server.post("devices/p/d-base/telemetry").status == 202)
        let toGray = await gray.waitFor(count: 1)
        #expect(toGray.first?.uri == "/in/d-gray")
        #expect(toGray.first?.header("x-switchyard-lane") == "gray")
        let toBase = await baseline.waitFor(count: 1)
        #expect(toBase.first?.uri == "/in/d-base")
        #expect(try await Self.call("DELETE", port, "/nacos/v1/ns/instance?serviceName=orders&ip=127.0.0.1&port=\(gray.port)").body == "ok")
        #expect(try await server.post("devices/p/d-gray/telemetry").status == 202)
        let fallback = await baseline.waitFor(count: 2)
        #expect(fallback.last?.uri == "/in/d-gray")
        #expect(fallback.last?.header("x-switchyard-lane-fallback") == "true")
        #expect(gray.received.count == 1)
        // A resync re-reads the store; the ephemeral baseline instance stays.
        #expect(try await server.admin("POST", "/admin/registry/resync").status == 200)
        #expect(try await server.post("devices/p/d-base/telemetry").status == 202)
        #expect(await baseline.waitFor(count: 3).count == 3)
    }
}
