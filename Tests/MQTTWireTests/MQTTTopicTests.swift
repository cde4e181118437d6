import Testing

@testable import MQTTWire

@Suite struct MQTTTopicTests {
    @Test func topicNames() {
        #expect(MQTTTopic.problemWithName("devices/p1/d1/telemetry") == nil)
        #expect(MQTTTopic.problemWithName("/leading/and//empty/levels/") == nil)  // allowed in MQTT
        #expect(MQTTTopic.problemWithName("") != nil)
        #expect(MQTTTopic.problemWithName("a/+/b")?.contains("wildcard") == true)
        #expect(MQTTTopic.problemWithName("a/#")?.contains("wildcard") == true)
        #expect(MQTTTopic.problemWithName("a\u{0}b") != nil)
    }

    @Test func topicFilters() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/+", "a//b", "$SYS/#", "$share/g/a/+/#", "sport/tennis/#"] {
            #expect(MQTTTopic.problemWithFilter(ok) == nil, "\(ok)")
        }
        for bad in ["", "a/#/b", "a#", "a/b#", "a+", "a/+b", "$share/g", "$share//a", "$share/g/", "$share/g+/a", "$share/g/a#", "$share"] {
            #expect(MQTTTopic.problemWithFilter(bad) != nil, "\(bad)")
        }
        #expect(MQTTTopic.shared("$share/workers/jobs/#")! == ("workers", "jobs/#"))
        #expect(MQTTTopic.shared("jobs/#") == nil)
    }

    @Test func matching() {
        let cases: [(String, String, Bool)] = [
            ("a/b/c", "a/b/c", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/#", "a", true),  // # matches the parent level too
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),  // an empty level is a level
            ("/+", "/a", true),
            ("a/+", "a/", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("#", "$SYS/broker", false),  // wildcards at the first level never match $ topics
            ("+/broker", "$SYS/broker", false),
            ("$SYS/#", "$SYS/broker", true),
            ("$SYS/+", "$SYS/broker", true),
        ]
        for (filter, topic, expected) in cases {
            #expect(MQTTTopic.matches(filter: filter, topic: topic) == expected, "\(filter) ~ \(topic)")
        }
    }

    @Test func filterCoverage() {
        #expect(MQTTTopic.filter("a/#", covers: "a"))
        #expect(MQTTTopic.filter("a/#", covers: "a/b/+"))
        #expect(MQTTTopic.filter("a/#", covers: "a/#"))
        #expect(MQTTTopic.filter("a/+/c", covers: "a/b/c"))
        #expect(MQTTTopic.filter("a/+/c", covers: "a/+/c"))
        #expect(!MQTTTopic.filter("a/+/c", covers: "a/#"))
        #expect(!MQTTTopic.filter("a/b", covers: "a/+"))
        #expect(!MQTTTopic.filter("a/b", covers: "a/b/c"))
        #expect(!MQTTTopic.filter("a/#", covers: "b"))
        #expect(MQTTTopic.filter("a/b", covers: "a/b"))
    }
}
