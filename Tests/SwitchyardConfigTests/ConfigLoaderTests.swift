import SwitchyardConfig
import SwitchyardCore
import Testing

@Suite struct ConfigLoaderTests {
    func errors(_ yaml: String) -> [String] {
        do {
            _ = try ConfigLoader.parse(yaml: yaml)
            return []
        } catch {
            return error.issues.map { "\($0.path): \($0.message)" }
        }
    }

    @Test func emptyDocumentIsTheEmbeddedDefaults() throws {
        let c = try ConfigLoader.parse(yaml: "")
        #expect(c == SwitchyardConfiguration())
        #expect(c.listeners.http.port == 8080)
        #expect(c.listeners.admin.port == 8090)
        #expect(c.node.dataDir == "./switchyard-data")
    }

    @Test func exampleConfigIsValid() throws {
        let c = try ConfigLoader.load(path: "examples/switchyard.yaml")
        #expect(c.routes.map(\.name) == ["telemetry", "events", "alarms"])
        #expect(c.routes[1].targets.count == 2)
        #expect(c.routes[2].targets[0].group == "IOT")  // found in the registry
        #expect(c.registry.authEnabled(listenerHost: c.listeners.nacos.host) == false)
        #expect(c.registry.healthCheckIntervalSeconds == 5)
        #expect(c.lanes.first?.fallback == .strict)
        #expect(c.filters.count == 7)
        #expect(c.channels.http.maxBodyBytes == 1 << 20)
        #expect(c.routes[0].targets[0].timeoutSeconds == 2)
        #expect(c.routes[0].targets[0].backoffBaseSeconds == 0.05)
    }

    @Test func unbalancedRegexNamesKeyPathAndOffset() {
        let yaml = """
            services: {s: {instances: [{url: "http://127.0.0.1:1"}]}}
            routes:
              - {name: a, match: "^a$", targets: [{service: s}]}
              - {name: b, match: "^b$", targets: [{service: s}]}
              - {name: c, match: "^devices/(?<d>x", targets: [{service: s}]}
            """
        #expect(errors(yaml) == [#"routes[2].match: unbalanced "(" at offset 9"#])
    }

    @Test func percentageOutOfRange() {
        let errs = errors("lanes: [{name: gray, entry: {percentage: 101}}]")
        #expect(errs == ["lanes[0].entry.percentage: must be between 0 and 100, got 101"])
    }

    @Test func unknownKeysAreErrorsWithSuggestions() {
        let errs = errors("listeners: {http: {prot: 80}}\nroutez: []")
        #expect(errs.count == 2)
        #expect(errs.contains { $0.hasPrefix("listeners.http.prot: unknown key; did you mean \"port\"?") })
        #expect(errs.contains { $0.hasPrefix("routez: unknown key; did you mean \"routes\"?") })
    }

    @Test func everyErrorIsReportedAtOnce() {
        let yaml = """
            filters:
              - rate_limit: {scope: planet, rate: -1}
              - max_payload: lots
              - nonsense: {}
            routes:
              - {name: r, match: "^x/(?<id2>[^/]+)$", targets: [{service: missing, path: "noslash/{nope}", timeout: 5 parsecs}]}
            services:
              s: {instances: [{url: "ftp://x", lane: ghost}]}
            telemetry: {log_level: loud}
            registry: {enabled: false}
            """
        let errs = errors(yaml)
        for expected in [
            "filters[0].rate_limit.scope: must be one of device, product, channel, global",
            "filters[0].rate_limit.rate: must be between",
            "filters[1].max_payload: expected a size",
            "filters[2].nonsense: unknown key",
            "routes[0].targets[0].timeout: expected a duration",
            "routes[0].targets[0].service: unknown service \"missing\"",
            "routes[0].targets[0].path: must start with \"/\"",
            "routes[0].targets[0].path: {nope} is neither a named capture",
            "services.s.instances[0].url: \"ftp://x\" is not a URL",
            "services.s.instances[0].lane: lane \"ghost\" is not declared",
            "telemetry.log_level: must be one of",
        ] {
            #expect(errs.contains { $0.hasPrefix(expected) }, "missing: \(expected)\nin: \(errs)")
        }
    }

    @Test func gatewayRoutesAreValidated() {
        let yaml = """
            registry: {enabled: false}
            listeners: {https: {cert: /nonexistent.pem, client_auth: always}}
            lanes:
              - {name: gray, entry: {headers: {X-User: tester}}}
              - {name: beta, entry: {claims: {sub: [a]}, params: {u: {regex: "("}}}}
            gateway:
              trusted_cidrs: [10.0.0.0/33]
              jwt: {keys: [{alg: none}, {alg: HS256}, {alg: RS256}]}
              routes:
                - {name: a, path_prefix: api, service: nowhere, methods: ["GE T"]}
                - {name: a, service: s, url: "http://x:1", cors: {origins: ["*"], credentials: true}}
                - {name: b, url: "ftp://x", path_regex: "[", jwt: maybe, rate_limits: [{per: user, rate: 1}]}
                - {name: c, service: s, fault: {lanes: [nope]}, request_headers: {set: {"bad header": x}}, prefix_rewrite: v2}
                - {name: d, service: s, path_prefix: /v1/messages/devices}
            services:
              s: {instances: [{url: "http://127.0.0.1:1"}]}
            """
        let errs = errors(yaml)
        for expected in [
            "gateway.trusted_cidrs[0]:", "gateway.routes[0].path_prefix: must start with \"/\"",
            "gateway.routes[0].service: unknown service \"nowhere\"", "gateway.routes[0].methods[0]:",
            "gateway.routes[1].name: route \"a\" is declared twice",
            "lanes[1].entry.params.u.regex:", "gateway.jwt.keys[0].alg: must be one of", "gateway.jwt.keys[1].secret_file:",
            "gateway.jwt.keys[2].pem_file:", "gateway.routes[1].service: give one of service", "gateway.routes[1].cors.credentials:",
            "gateway.routes[2].url:", "gateway.routes[2].path_regex:", "gateway.routes[2].jwt: must be required, optional or off",
            "gateway.routes[2].rate_limits[0].per:", "gateway.routes[3].fault.lanes[0]: lane \"nope\"",
            "gateway.routes[3].request_headers.bad header:", "gateway.routes[3].prefix_rewrite: must start",
            "gateway.routes[4].path_prefix: /v1/messages/devices is the message channel's",
            "listeners.https.cert: cannot read /nonexistent.pem", "listeners.https: needs both cert",
            "listeners.https.client_auth: must be optional or required",
        ] {
            #expect(errs.contains { $0.hasPrefix(expected) }, "missing: \(expected)\nin: \(errs)")
        }
        let ok = try? ConfigLoader.parse(
            yaml: "lanes: [{name: gray, entry: {headers: {X-User: [a, b]}}}]\ngateway: {routes: [{name: r, service: x}]}"
        )
        #expect(ok?.lanes.first?.headers == ["x-user": .init(values: ["a", "b"])])
        #expect(ok?.gateway.routes.first?.pathPrefix == "/")
    }

    @Test func lineNumbersAreReported() throws {
        do {
            _ = try ConfigLoader.parse(yaml: "node:\n  name: x\n  colour: blue\n")
            Issue.record("expected an error")
        } catch {
            #expect(error.issues.first?.line == 3)
            #expect(error.description.contains("node.colour"))
        }
    }

    @Test func invalidYAMLIsAnError() {
        #expect(errors("routes: [unclosed").first?.contains("not valid YAML") == true)
    }

    @Test func durationsAndSizes() throws {
        let c = try ConfigLoader.parse(
            yaml: """
                channels: {http: {max_body_bytes: 64KiB}}
                filters: [{dedup: {window: 5m}}, {max_payload: 1_000}]
                """
        )
        #expect(c.channels.http.maxBodyBytes == 65536)
        #expect(c.filters == [.dedup(windowSeconds: 300, maxEntries: 1_000_000), .maxPayload(bytes: 1000)])
    }

    @Test func batchedTargets() throws {
        let c = try ConfigLoader.parse(
            yaml: """
                services: {s: {instances: [{url: "http://127.0.0.1:1"}]}}
                routes: [{name: r, match: "^x$", ttl: 10m, targets: [{service: s, path: /b, batch: {max: 50, linger: 10ms, format: ndjson}}]}]
                """
        )
        #expect(c.routes[0].ttlSeconds == 600)
        #expect(c.routes[0].targets[0].batch?.max == 50)
        #expect(c.routes[0].targets[0].batch?.format == .ndjson)
        let errs = errors(
            """
            services: {s: {instances: [{url: "http://127.0.0.1:1"}]}}
            routes: [{name: r, match: "^(?<d>x)$", targets: [{service: s, path: "/b/{d}", batch: {max: 0, format: xml}}]}]
            """
        )
        #expect(errs.contains { $0.hasPrefix("routes[0].targets[0].batch.max: must be between 1 and 10000") })
        #expect(errs.contains { $0.hasPrefix("routes[0].targets[0].batch.format: must be json or ndjson") })
        #expect(errs.contains { $0.hasPrefix("routes[0].targets[0].path: a batched target's path cannot use placeholders") })
    }

    @Test func circuitBreakers() throws {
        let c = try ConfigLoader.parse(yaml: "services: {s: {circuit: {failures: 3, open_for: 2s, max_open_for: 1m}}}")
        #expect(c.services["s"]?.circuit.failures == 3)
        #expect(c.services["s"]?.circuit.openSeconds == 2)
        #expect(c.services["s"]?.circuit.maxOpenSeconds == 60)
        #expect(try ConfigLoader.parse(yaml: "services: {s: {}}").services["s"]?.circuit == SwitchyardConfiguration.CircuitRule())
        let errs = errors("services: {s: {circuit: {failures: -1, open_for: 10s, max_open_for: 1s, open: 1}}}")
        #expect(errs.contains { $0.hasPrefix("services.s.circuit.failures: must be between 0 and 10000") })
        #expect(errs.contains { $0.hasPrefix("services.s.circuit.max_open_for: must not be below open_for") })
        #expect(errs.contains { $0.hasPrefix("services.s.circuit.open:") && $0.contains("open_for") })
    }

    @Test func mqttDenyRules() throws {
        let c = try ConfigLoader.parse(yaml: "channels: {mqtt: {deny_subscribe: [test/nosubscribe], deny_publish: ['secret/#']}}")
        #expect(c.channels.mqtt.denySubscribe == ["test/nosubscribe"])
        #expect(c.channels.mqtt.denyPublish == ["secret/#"])
        #expect(errors("channels: {mqtt: {deny_publish: ['']}}").first?.hasPrefix("channels.mqtt.deny_publish[0]") == true)
    }

    @Test func laneNamesAreChecked() {
        #expect(errors("lanes: [{name: baseline, entry: {percentage: 1}}]").first?.contains("implicit") == true)
        #expect(errors("lanes: [{name: a, entry: {percentage: 1}}, {name: a, entry: {percentage: 2}}]").first?.contains("twice") == true)
        #expect(errors("lanes: [{name: a}]").first?.hasPrefix("lanes[0].entry: no entry rule") == true)
    }
}
