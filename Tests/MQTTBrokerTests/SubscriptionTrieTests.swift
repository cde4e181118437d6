import MQTTWire
import Testing

@testable import MQTTBroker

@Suite struct SubscriptionTrieTests {
    @Test func wildcardsLevelsAndDollarTopics() {
        var t = SubscriptionTrie()
        t.subscribe("a", filter: "devices/+/d1/#", entry: .init(qos: .atLeastOnce))
        t.subscribe("b", filter: "#", entry: .init(qos: .atMostOnce))
        t.subscribe("c", filter: "devices/p1/d1", entry: .init(qos: .exactlyOnce))
        t.subscribe("d", filter: "$SYS/#", entry: .init(qos: .atMostOnce))
        #expect(Set(t.matches("devices/p1/d1").keys) == ["a", "b", "c"])  // `#` also matches the parent
        #expect(Set(t.matches("devices/p1/d1/telemetry/x").keys) == ["a", "b"])
        #expect(Set(t.matches("devices/p1/d2").keys) == ["b"])
        #expect(Set(t.matches("$SYS/uptime").keys) == ["d"])  // `#` at the first level skips `$` topics
        #expect(t.count == 4)
    }

    @Test func oneDeliveryPerClientAtItsHighestQoSWithEveryIdentifier() {
        var t = SubscriptionTrie()
        t.subscribe("a", filter: "x/+", entry: .init(qos: .atMostOnce, identifier: 1))
        t.subscribe("a", filter: "x/#", entry: .init(qos: .exactlyOnce, identifier: 2))
        let m = t.matches("x/y")["a"]
        #expect(m?.qos == .exactlyOnce)
        #expect(Set(m?.identifiers ?? []) == [1, 2])
    }

    @Test func resubscribingReplacesAndUnsubscribingPrunes() {
        var t = SubscriptionTrie()
        let added = t.subscribe("a", filter: "x/y", entry: .init(qos: .atMostOnce))
        let again = t.subscribe("a", filter: "x/y", entry: .init(qos: .atLeastOnce))
        #expect(added && !again)  // the second is not new: it replaced the first
        #expect(t.matches("x/y")["a"]?.qos == .atLeastOnce)
        let removed = t.unsubscribe("a", filter: "x/y")
        let removedAgain = t.unsubscribe("a", filter: "x/y")
        #expect(removed && !removedAgain)
        #expect(t.count == 0)
        #expect(t.root.isEmpty)  // no empty branches left behind
    }

    @Test func sharedSubscriptionsAreGroupedPerGroupAndFilter() {
        var t = SubscriptionTrie()
        t.subscribe("a", filter: "$share/g/x/+", entry: .init(qos: .atLeastOnce))
        t.subscribe("b", filter: "$share/g/x/+", entry: .init(qos: .atMostOnce))
        t.subscribe("c", filter: "$share/h/x/#", entry: .init(qos: .atMostOnce))
        t.subscribe("d", filter: "x/y", entry: .init(qos: .atMostOnce))
        let (direct, shared) = t.lookup("x/y")
        #expect(Set(direct.keys) == ["d"])
        #expect(Set(shared.map(\.filter)) == ["$share/g/x/+", "$share/h/x/#"])
        #expect(shared.first { $0.filter == "$share/g/x/+" }?.members.map(\.clientID) == ["a", "b"])
        #expect(t.sharedSet("$share/g/x/+")?.members.count == 2)
        #expect(t.count == 4)
        let removed = t.unsubscribe("a", filter: "$share/g/x/+")
        let again = t.unsubscribe("a", filter: "$share/g/x/+")
        #expect(removed && !again)
        #expect(t.sharedSet("$share/g/x/+")?.members.map(\.clientID) == ["b"])
        t.unsubscribe("b", filter: "$share/g/x/+")
        #expect(t.sharedSet("$share/g/x/+") == nil)
        #expect(t.count == 2)
    }

    @Test func cachedLookupsFollowSubscriptionChanges() {
        var t = SubscriptionTrie()
        t.subscribe("a", filter: "x/+", entry: .init(qos: .atMostOnce))
        #expect(Set(t.cachedLookup("x/y").direct.keys) == ["a"])
        t.subscribe("b", filter: "x/#", entry: .init(qos: .atMostOnce))
        #expect(Set(t.cachedLookup("x/y").direct.keys) == ["a", "b"])
        t.unsubscribe("a", filter: "x/+")
        #expect(Set(t.cachedLookup("x/y").direct.keys) == ["b"])
        for i in 0..<(SubscriptionTrie.cacheLimit + 10) { _ = t.cachedLookup("x/\(i)") }
        #expect(t.cache.count <= SubscriptionTrie.cacheLimit)
    }
}
