import Controller
import NIOCore
import SwitchyardCore
import SwitchyardTesting
import Testing

@Suite struct LaneHashingTests {
    func lanes(_ percentage: Double) throws -> Controller {
        var config = SwitchyardConfiguration()
        var gray = SwitchyardConfiguration.LaneRule(name: "gray")
        gray.percentage = percentage
        config.lanes = [gray]
        return try Controller(config: config, clock: ManualClock())
    }

    @Test func fivePercentOfHundredThousandRandomDevices() throws {
        let c = try lanes(5)
        var rng = SystemRandomNumberGenerator()
        let ids = (0..<100_000).map { _ in "dev-\(UInt64.random(in: 0...UInt64.max, using: &rng))" }
        let inLane = ids.filter { c.assignLane(envelope(device: $0)).lane == "gray" }.count
        let share = Double(inLane) / 1000.0
        #expect(share >= 4.5 && share <= 5.5, "share \(share)%")
    }

    @Test func raisingPercentageKeepsEveryDevice() throws {
        let five = try lanes(5)
        let ten = try lanes(10)
        var rng = SystemRandomNumberGenerator()
        var kept = 0
        for _ in 0..<50_000 {
            let id = "d\(UInt64.random(in: 0...UInt64.max, using: &rng))"
            if five.assignLane(envelope(device: id)).lane == "gray" {
                #expect(ten.assignLane(envelope(device: id)).lane == "gray", "\(id) left the lane at 10%")
                kept += 1
            }
        }
        #expect(kept > 1000)
    }

    @Test func sameDeviceAlwaysSameLane() throws {
        let c = try lanes(50)
        for i in 0..<100 {
            let first = c.assignLane(envelope(device: "x\(i)")).lane
            #expect(c.assignLane(envelope(device: "x\(i)")).lane == first)
        }
        #expect(StableHash.basisPoints(namespace: "gray", key: "device-1") == StableHash.basisPoints(namespace: "gray", key: "device-1"))
    }

    @Test func firstMatchingLaneWinsAndExplainsWhy() throws {
        var config = SwitchyardConfiguration()
        var dev = SwitchyardConfiguration.LaneRule(name: "dev")
        dev.devices = ["tester-1"]
        var beta = SwitchyardConfiguration.LaneRule(name: "beta")
        beta.tags = ["user": "beta"]
        beta.products = ["p-beta"]
        var gray = SwitchyardConfiguration.LaneRule(name: "gray")
        gray.percentage = 100
        config.lanes = [dev, beta, gray]
        let c = try Controller(config: config, clock: ManualClock())
        let (lane, why) = c.assignLane(envelope(device: "tester-1", product: "p-beta"))
        #expect(lane == "dev")
        #expect(why.contains("allow-list"))
        var e = envelope(device: "u")
        e.tags = ["user": "beta"]
        #expect(c.assignLane(e).lane == "beta")
        #expect(c.assignLane(envelope(device: "u", product: "p-beta")).lane == "beta")
        #expect(c.assignLane(envelope(device: "anyone")).lane == "gray")
        #expect(try Controller(config: SwitchyardConfiguration(), clock: ManualClock()).assignLane(envelope()).lane == nil)
    }
}

@Suite struct ClassifierTests {
    func classifier(_ rules: [SwitchyardConfiguration.TagRule]) throws -> Controller {
        var config = SwitchyardConfiguration()
        config.tags = rules
        return try Controller(config: config, clock: ManualClock())
    }

    @Test func tagsByTopicProductDeviceAndJSONField() throws {
        var byTopic = SwitchyardConfiguration.TagRule()
        byTopic.topic = "^devices/[^/]+/[^/]+/event$"
        byTopic.set = ["kind": "event"]
        var byField = SwitchyardConfiguration.TagRule()
        byField.field = .init(name: "level", equals: "alarm")
        byField.set = ["severity": "high"]
        var byProduct = SwitchyardConfiguration.TagRule()
        byProduct.products = ["lock"]
        byProduct.devices = ["d9"]
        byProduct.set = ["family": "security"]
        let c = try classifier([byTopic, byField, byProduct])

        var e = envelope(topic: "devices/lock/d9/event", device: "d9", product: "lock", payload: #"{"a":{"level":"x"},"level":"alarm"}"#)
        #expect(c.admit(&e) == .accepted)
        #expect(e.tags == ["kind": "event", "severity": "high", "family": "security"])

        e = envelope(topic: "devices/p/d/telemetry", payload: #"{"level":"info"}"#)
        #expect(c.admit(&e) == .accepted)
        #expect(e.tags.isEmpty)
    }

    @Test func jsonFieldReader() {
        func v(_ json: String, _ field: String) -> String? { JSONField.value(of: field, in: Array(json.utf8)) }
        #expect(v(#"{"a":1,"b":"x\"y"}"#, "b") == "x\"y")
        #expect(v(#"{"a":{"b":2},"b":true}"#, "b") == "true")
        #expect(v(#" { "n" : -1.5e3 } "#, "n") == "-1.5e3")
        #expect(v(#"{"a":[1,{"b":2}]}"#, "b") == nil)
        #expect(v("not json", "a") == nil)
        #expect(v(#"{"a":"\u00e9"}"#, "a") == "é")
        #expect(v(#"{"a":"#, "a") == nil)
    }

    @Test func tenThousandDeepJSONDoesNotCrash() throws {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        let json = #"{"x":"# + deep + #","level":"alarm"}"#
        #expect(JSONField.value(of: "level", in: Array(json.utf8)) == "alarm")
        let unterminated = #"{"x":"# + String(repeating: "{\"a\":", count: 10_000)
        #expect(JSONField.value(of: "level", in: Array(unterminated.utf8)) == nil)
    }
}

@Suite struct TopicPatternTests {
    @Test func extractsProductAndDevice() throws {
        let p = try TopicPattern("devices/{product}/{device}/#")
        #expect(p.match("devices/p1/d1/telemetry") == ["product": "p1", "device": "d1"])
        #expect(p.match("devices/p1/d1") == ["product": "p1", "device": "d1"])
        #expect(p.match("devices/p1") == nil)
        #expect(p.match("other/p1/d1/x") == nil)
        let q = try TopicPattern("+/{device}")
        #expect(q.match("a/b") == ["device": "b"])
        #expect(q.match("a/b/c") == nil)
    }

    /// `identity` gives what `match` names product and device, and nothing else; levels are
    /// split at every `/` and compared byte for byte (no Unicode normalisation, as MQTT).
    @Test func identityAndEdges() throws {
        let p = try TopicPattern("devices/{product}/{device}/#")
        #expect(p.identity("devices/p1/d1/telemetry")! == ("p1", "d1"))
        #expect(p.identity("devices/p1/d1")! == ("p1", "d1"))
        #expect(p.identity("devices//d1") == nil)  // an empty named level does not match
        #expect(p.identity("devices/p1/") == nil)
        #expect(p.identity("devices/p1") == nil)
        #expect(p.identity("") == nil)
        let q = try TopicPattern("x/{device}/+")
        #expect(q.identity("x/dé/y")! == (nil, "dé"))
        #expect(q.identity("x/d/") != nil)  // `+` matches an empty level
        #expect(q.identity("x/d") == nil)
        let literal = try TopicPattern("caf\u{E9}/{device}")  // precomposed é
        #expect(literal.identity("caf\u{E9}/d") != nil)
        #expect(literal.identity("cafe\u{301}/d") == nil)  // e + combining accent: other bytes
        #expect(literal.identity("caf\u{E9}/\u{301}d")! == (nil, "\u{301}d"))  // a combining mark after `/` still splits
    }

    @Test func invalidPatterns() {
        #expect(throws: ControllerConfigError.self) { try TopicPattern("a/#/b") }
        #expect(throws: ControllerConfigError.self) { try TopicPattern("a/x{device}") }
    }

    @Test func explainIsADryRun() throws {
        let clock = ManualClock()
        let c = try controller([.rateLimit(scope: .device, rate: 1, burst: 1, maxKeys: 100)], clock: clock)
        for _ in 0..<5 { #expect(c.explain(envelope()).admission == "accepted") }
        #expect(rejection(c, envelope()) == nil)
        let x = c.explain(envelope())
        #expect(x.admission == "rejected")
        #expect(x.filters.first?.reason == "rate_limited")
    }
}
