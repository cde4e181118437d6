import Foundation
import Logging
import SwitchyardCore
import SwitchyardTesting
import Testing

@testable import Router

/// Warm-up, drains, the ejection cap and the retry budget, on an injected clock.
@Suite struct ResilienceTests {
    static func instance(_ port: Int, weight: Int = 100) -> ServiceInstance {
        ServiceInstance(service: "s", host: "127.0.0.1", port: port, weight: weight)
    }

    @Test func theWarmUpCurve() {
        let curve = WarmUp(windowSeconds: 60, aggression: 0.5, minPercent: 10)
        #expect(abs(curve.factor(elapsed: 30) - 0.25) < 1e-9)  // (1/2)^(1/0.5)
        #expect(curve.factor(elapsed: 0) == 0.1)  // never below minPercent
        #expect(curve.factor(elapsed: 60) == 1 && curve.factor(elapsed: 600) == 1)
        #expect(abs(WarmUp(windowSeconds: 60, aggression: 1, minPercent: 0).factor(elapsed: 15) - 0.25) < 1e-9)  // linear
        #expect(abs(WarmUp(windowSeconds: 60, aggression: 2, minPercent: 0).factor(elapsed: 15) - 0.5) < 1e-9)  // fast at first
        #expect(WarmUp(windowSeconds: 0).factor(elapsed: 0) == 1)  // off
    }

    @Test func weightsRampOnTheRoutersClockAndRearmAfterAFlap() {
        let clock = ManualClock()
        let health = InstanceHealth(clock: clock)
        health.setWarmUp(WarmUp(windowSeconds: 60, aggression: 0.5, minPercent: 10))
        let a = Self.instance(1), b = Self.instance(2)
        health.observe(service: "s", instances: [a])  // the first list: serving already, warm
        #expect(health.apply([a]).first?.weight == 100)
        clock.advance(seconds: 120)
        // b is new: it warms up; a, seen two minutes ago, is warm. Seeing the same list again
        // restarts nothing (whatever the provider's clock says: it is never asked).
        health.observe(service: "s", instances: [a, b])
        clock.advance(seconds: 30)
        health.observe(service: "s", instances: [a, b])
        var weights = Dictionary(uniqueKeysWithValues: health.apply([a, b]).map { ($0.port, $0.weight) })
        #expect(weights == [1: 100, 2: 25])  // t = T/2, aggression 0.5: 25 % of W
        #expect(health.status(of: b.key).warmUpPercent == 25)
        clock.advance(seconds: 30)
        #expect(health.apply([a, b]).map(\.weight) == [100, 100])
        // A health flap: b leaves the healthy list and comes back: it warms up again.
        health.observe(service: "s", instances: [a])
        clock.advance(seconds: 5)
        health.observe(service: "s", instances: [a, b])
        weights = Dictionary(uniqueKeysWithValues: health.apply([a, b]).map { ($0.port, $0.weight) })
        #expect(weights == [1: 100, 2: 10])
    }

    /// A service's list is compared with its own instances only: another service's change
    /// neither forgets nor re-warms them (each list costs its own size, not the registry's).
    @Test func eachServiceListTouchesOnlyItsOwnInstances() {
        let clock = ManualClock()
        let health = InstanceHealth(clock: clock)
        health.setWarmUp(WarmUp(windowSeconds: 60, aggression: 1, minPercent: 10))
        let a = Self.instance(1)
        let x = ServiceInstance(service: "t", host: "127.0.0.1", port: 9, weight: 100)
        health.observe(service: "s", instances: [a])
        health.observe(service: "t", instances: [x])  // both first lists: warm
        health.observe(service: "t", instances: [])  // t's instance leaves; s's stays warm
        health.observe(service: "s", instances: [a])
        #expect(health.apply([a]).first?.weight == 100)
        #expect(health.status(of: a.key).warmUpPercent == 100)
        health.observe(service: "t", instances: [x])  // it comes back: new, it warms up
        #expect(health.status(of: x.key).warmUpPercent == 10)
        #expect(health.status(of: a.key).warmUpPercent == 100)
    }

    @Test func drainedInstancesGetNothingNew() {
        let clock = ManualClock()
        let health = InstanceHealth(clock: clock, headerDrainSeconds: 30)
        health.setWarmUp(WarmUp(windowSeconds: 0))
        let a = Self.instance(1), b = Self.instance(2)
        health.observe(service: "s", instances: [a, b])
        #expect(health.apply([a, b]).count == 2)
        health.drain(a.key, source: .admin)
        #expect(health.apply([a, b]) == [b])
        clock.advance(seconds: 3600)
        #expect(health.apply([a, b]) == [b])  // an operator's drain lasts until undrained
        #expect(health.undrain(a.key) && !health.undrain(a.key))
        #expect(health.apply([a, b]).count == 2)
        // A response's x-switchyard-draining: true keeps it out for a while.
        health.drain(b.key, source: .response)
        #expect(health.apply([a, b]) == [a] && health.status(of: b.key).draining == .response)
        clock.advance(seconds: 31)
        #expect(health.apply([a, b]).count == 2)
    }

    @Test func circuitsNeverEjectMoreThanTheCap() {
        let clock = ManualClock()
        let breakers = CircuitBreakers(clock: clock)
        var rule = SwitchyardConfiguration.CircuitRule()
        rule.failures = 2
        rule.openSeconds = 10
        let all = (1...4).map { Self.instance($0) }
        for instance in all.prefix(3) {
            for _ in 0..<2 { breakers.record(instance, failed: true, rule: rule) }
        }
        // Three of four open, but at most half may be out: one of them may probe again.
        #expect(breakers.admitted(all).count == 2)
        breakers.setMaxEjectionPercent(100)
        #expect(breakers.admitted(all).count == 2)  // the re-admitted one is due for its probe now
        let fresh = CircuitBreakers(clock: clock)
        fresh.setMaxEjectionPercent(100)
        for instance in all.prefix(3) {
            for _ in 0..<2 { fresh.record(instance, failed: true, rule: rule) }
        }
        #expect(fresh.admitted(all).map(\.port) == [4])
        clock.advance(seconds: 11)
        #expect(fresh.admitted(all).count == 4)  // probing time
    }

    @Test func aRouteTargetBreakerOpensOnRatiosAndClosesAfterProbes() {
        let clock = ManualClock()
        var rule = SwitchyardConfiguration.BreakerRule()
        rule.windowSeconds = 10
        rule.minRequests = 10
        rule.errorRatio = 0.5
        rule.openSeconds = 5
        rule.halfOpenProbes = 3
        rule.closeAfter = 2
        let breaker = TargetBreaker(name: "r→s", rule: rule, clock: clock, logger: Logger(label: "t"))
        // Below the minimum count nothing trips, whatever the ratio.
        for _ in 0..<9 { breaker.record(failed: true, seconds: 0.01) }
        #expect(breaker.state == .closed)
        // Old failures leave the window.
        clock.advance(seconds: 11)
        for i in 0..<10 { breaker.record(failed: i < 4, seconds: 0.01) }
        #expect(breaker.state == .closed)  // 40 % < 50 %
        breaker.record(failed: true, seconds: 0.01)
        breaker.record(failed: true, seconds: 0.01)  // 6 of 12: 50 %
        #expect(breaker.state == .open && !breaker.allow())
        clock.advance(seconds: 5)
        // Half open: three probes at most, two successes close it.
        #expect(breaker.allow() && breaker.state == .halfOpen)
        #expect(breaker.allow() && breaker.allow() && !breaker.allow())
        breaker.record(failed: false, seconds: 0.01)
        #expect(breaker.state == .halfOpen)
        breaker.record(failed: false, seconds: 0.01)
        #expect(breaker.state == .closed && breaker.allow())
        // A failed probe opens it again.
        for _ in 0..<10 { breaker.record(failed: true, seconds: 0.01) }
        clock.advance(seconds: 5)
        #expect(breaker.allow())
        breaker.record(failed: true, seconds: 0.01)
        #expect(breaker.state == .open)
    }

    @Test func slowCallsAndErrorCountsTripToo() {
        let clock = ManualClock()
        var slow = SwitchyardConfiguration.BreakerRule()
        slow.minRequests = 4
        slow.errorRatio = 0
        slow.slowRatio = 0.5
        slow.slowCallSeconds = 1
        let b1 = TargetBreaker(name: "slow", rule: slow, clock: clock, logger: Logger(label: "t"))
        for seconds in [0.1, 2, 0.1, 1.5] { b1.record(failed: false, seconds: seconds) }
        #expect(b1.state == .open)
        var count = SwitchyardConfiguration.BreakerRule()
        count.minRequests = 1
        count.errorRatio = 0
        count.errorCount = 3
        let b2 = TargetBreaker(name: "count", rule: count, clock: clock, logger: Logger(label: "t"))
        for _ in 0..<100 { b2.record(failed: false, seconds: 0.1) }
        b2.record(failed: true, seconds: 0.1)
        b2.record(failed: true, seconds: 0.1)
        #expect(b2.state == .closed)
        b2.record(failed: true, seconds: 0.1)
        #expect(b2.state == .open)
    }

    @Test func aColdFleetTakesAThirdOfItsPeakThenRamps() {
        let clock = ManualClock()
        let health = InstanceHealth(clock: clock)
        health.setWarmUp(WarmUp(windowSeconds: 60, aggression: 1, minPercent: 10))
        let balancer = Balancer(health: health)
        let (a, b, c, d) = (Self.instance(1), Self.instance(2), Self.instance(3), Self.instance(4))
        health.observe(service: "s", instances: [a, b])  // serving before: warm
        // The usual load: 30 attempts at once.
        for _ in 0..<30 { balancer.retryBudget.begin("s") }
        for _ in 0..<30 { balancer.retryBudget.end("s", retry: false) }
        #expect(balancer.admits("s") && balancer.coldLimit("s") == nil)
        // A full redeploy: new instances join, the old ones leave.
        health.observe(service: "s", instances: [a, b, c, d])
        #expect(balancer.coldLimit("s") == nil)  // a and b still serve: not cold
        clock.advance(seconds: 1)
        health.observe(service: "s", instances: [c, d])
        func admitted() -> Int {
            var n = 0
            while balancer.admits("s") && n < 100 {
                balancer.retryBudget.begin("s")
                n += 1
            }
            for _ in 0..<n { balancer.retryBudget.end("s", retry: false) }
            return n
        }
        #expect(admitted() == 10)  // a third of 30
        #expect(balancer.coldLimit("s") == 10)
        clock.advance(seconds: 29)  // t = T/2 from the first new instance: half
        #expect(admitted() == 15)
        clock.advance(seconds: 30)
        #expect(admitted() == 100 && balancer.coldLimit("s") == nil)  // warm: no limit
        // A service never seen busy has nothing to hold back; other services are not affected.
        #expect(balancer.admits("other"))
    }

    @Test func retriesStayWithinTheBudget() {
        let budget = RetryBudget()
        for _ in 0..<10 { budget.begin("s") }
        // 20 % of 10 active is 2, but at least 3 may retry.
        #expect((0..<4).map { _ in budget.allowRetry("s") } == [true, true, true, false])
        budget.begin("s")
        budget.end("s", retry: true)  // a retry finished: room for one more
        #expect(budget.allowRetry("s"))
        for _ in 0..<40 { budget.begin("s") }
        #expect(budget.inFlight("s").active == 50)
        // 20 % of 50 is 10: seven more (three are out).
        #expect((0..<8).map { _ in budget.allowRetry("s") }.filter { $0 }.count == 7)
        #expect(budget.allowRetry("other"))  // per service
    }
}
