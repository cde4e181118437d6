import Logging
import NIOConcurrencyHelpers
import NIOCore
import Router
import SwitchyardCore
import SwitchyardTesting
import Testing

/// Router delivery against the in-memory forwarder: lanes, fallback, retries, dead letters.
struct Harness {
    let router: Router
    let forwarder: InMemoryForwarder
    let deadLetters = DeadLetterList(limit: 100)
    let ledger = MessageLedger()
    let balancer: Balancer

    init(
        lanes: [SwitchyardConfiguration.LaneRule] = [],
        instances: [ServiceInstance],
        retries: Int = 2,
        targets: Int = 1,
        ttlSeconds: Double = 86_400,
        batch: SwitchyardConfiguration.BatchRule? = nil,
        answerDelay: TimeAmount = .zero,
        circuit: SwitchyardConfiguration.CircuitRule = SwitchyardConfiguration.CircuitRule(),
        breakers: CircuitBreakers = CircuitBreakers(),
        targetBreaker: SwitchyardConfiguration.BreakerRule? = nil,
        script: @escaping InMemoryForwarder.Script = { _, _ in .success(200) }
    ) throws {
        var config = SwitchyardConfiguration()
        config.lanes = lanes
        var route = SwitchyardConfiguration.RouteRule(name: "telemetry", match: "^devices/(?<product>[^/]+)/(?<device>[^/]+)/telemetry$")
        route.ttlSeconds = ttlSeconds
        for i in 0..<targets {
            var target = SwitchyardConfiguration.TargetRule(service: i == 0 ? "svc" : "svc\(i)")
            target.path = "/in/{device}"
            target.retries = retries
            target.backoffBaseSeconds = 0.001
            target.backoffMaxSeconds = 0.002
            target.breaker = targetBreaker
            if let batch {
                target.batch = batch
                target.path = "/batch"
            }
            route.targets.append(target)
        }
        config.routes = [route]
        var service = SwitchyardConfiguration.ServiceRule()
        service.circuit = circuit
        config.services = ["svc": service]
        forwarder = InMemoryForwarder(delay: answerDelay, script: script)
        var byService: [String: [ServiceInstance]] = [:]
        for i in instances { byService[i.service, default: []].append(i) }
        balancer = Balancer(breakers: breakers)
        router = try Router(
            configuration: config,
            directory: StaticServiceDirectory(byService),
            forwarder: forwarder,
            deadLetters: deadLetters,
            ledger: ledger,
            balancer: balancer,
            logger: Logger(label: "test")
        )
    }

    func send(device: String = "d1", lane: String? = nil, topic: String? = nil) async throws -> Router.Outcome {
        var e = Envelope(
            id: MessageID.generate(),
            channel: "http",
            topic: topic ?? "devices/p1/\(device)/telemetry",
            product: "p1",
            device: device,
            payload: ByteBuffer(string: "{}"),
            tags: ["kind": "telemetry"],
            lane: lane,
            receivedAt: WallClock.nowNanos(),
            trace: .generate()
        )
        e.lane = lane
        ledger.receivedAndAccepted(channel: "http")
        return try await router.route(e, on: forwarder.anyEventLoop()).get()
    }
}

let baseline = ServiceInstance(service: "svc", host: "127.0.0.1", port: 9001)
let gray = ServiceInstance(service: "svc", host: "127.0.0.1", port: 9002, lane: "gray")

func lane(_ name: String, fallback: SwitchyardConfiguration.LaneFallback = .baseline) -> SwitchyardConfiguration.LaneRule {
    var l = SwitchyardConfiguration.LaneRule(name: name)
    l.fallback = fallback
    l.percentage = 0
    return l
}

@Suite struct DeliveryTests {
    @Test func laneMessageGoesToLaneInstanceWithHeaders() async throws {
        let h = try Harness(lanes: [lane("gray")], instances: [baseline, gray])
        #expect(try await h.send(lane: "gray") == .forwarded(route: "telemetry"))
        #expect(try await h.send(lane: nil) == .forwarded(route: "telemetry"))
        let calls = h.forwarder.recorded
        #expect(calls[0].instance == gray)
        #expect(calls[0].header("x-switchyard-lane") == "gray")
        #expect(calls[0].header("x-switchyard-lane-fallback") == nil)
        #expect(calls[0].header("baggage") == "lane=gray")
        #expect(calls[0].header("x-switchyard-device") == "d1")
        #expect(calls[0].header("x-switchyard-product") == "p1")
        #expect(calls[0].header("x-switchyard-topic") == "devices/p1/d1/telemetry")
        #expect(calls[0].header("x-switchyard-tag-kind") == "telemetry")
        #expect(calls[0].header("traceparent")?.hasPrefix("00-") == true)
        #expect(calls[0].request.path == "/in/d1")
        // Baseline messages never go to lane instances.
        #expect(calls[1].instance == baseline)
        #expect(calls[1].header("x-switchyard-lane") == nil)
    }

    @Test func missingLaneFallsBackToBaselineAndSaysSo() async throws {
        let h = try Harness(lanes: [lane("gray")], instances: [baseline])
        #expect(try await h.send(lane: "gray") == .forwarded(route: "telemetry"))
        let call = try #require(h.forwarder.recorded.first)
        #expect(call.instance == baseline)
        #expect(call.header("x-switchyard-lane-fallback") == "true")
        #expect(call.header("x-switchyard-lane") == "gray")
    }

    @Test func strictLaneDeadLettersWithLaneUnavailable() async throws {
        let h = try Harness(lanes: [lane("dev", fallback: .strict)], instances: [baseline])
        #expect(try await h.send(lane: "dev") == .deadLettered(route: "telemetry", reason: "lane_unavailable"))
        #expect(h.forwarder.recorded.isEmpty)
        let letter = try #require(h.deadLetters.list().first)
        #expect(letter.reason == "lane_unavailable")
        #expect(letter.lastError.contains("strict"))
    }

    @Test func retriesOn503ThenSucceeds() async throws {
        let h = try Harness(instances: [baseline], retries: 3) { _, n in n < 3 ? .success(503) : .success(200) }
        #expect(try await h.send() == .forwarded(route: "telemetry"))
        let calls = h.forwarder.recorded
        #expect(calls.count == 3)
        #expect(calls.map { $0.header("x-switchyard-delivery-attempt") } == ["1", "2", "3"])
        #expect(Set(calls.map { $0.header("x-switchyard-message-id") }).count == 1)
        #expect(h.ledger.snapshot().retried["telemetry"] == 2)
    }

    @Test func retriesWaitWhileTheRetryBudgetIsSpent() async throws {
        let h = try Harness(instances: [baseline], retries: 3) { _, n in n == 1 ? .success(503) : .success(200) }
        h.balancer.retryBudget.configure(percent: 0, minimum: 1)
        #expect(h.balancer.retryBudget.allowRetry("svc"))  // another message's retry holds the one slot
        async let outcome = h.send()
        try await waitUntil { h.forwarder.recorded.count == 1 }  // the first attempt went …
        try await Task.sleep(for: .milliseconds(300))
        #expect(h.forwarder.recorded.count == 1)  // … and its retry waits
        h.balancer.retryBudget.release("svc")
        #expect(try await outcome == .forwarded(route: "telemetry"))
        #expect(h.forwarder.recorded.map { $0.header("x-switchyard-delivery-attempt") } == ["1", "2"])
        #expect(h.balancer.retryBudget.inFlight("svc") == (0, 0))
        #expect(h.balancer.outstanding(baseline) == 0)
    }

    @Test func noRetryOn400() async throws {
        let h = try Harness(instances: [baseline], retries: 3) { _, _ in .success(400) }
        #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "rejected_by_service"))
        #expect(h.forwarder.recorded.count == 1)
        let letter = try #require(h.deadLetters.list().first)
        #expect(letter.attempts == 1)
        #expect(letter.lastError.contains("HTTP 400"))
    }

    @Test func exhaustedRetriesDeadLetterWithLastError() async throws {
        let h = try Harness(instances: [baseline], retries: 2) { _, _ in .success(503) }
        #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "service_error"))
        #expect(h.forwarder.recorded.count == 3)
        let letter = try #require(h.deadLetters.list().first)
        #expect(letter.attempts == 3)
        #expect(letter.reason == "service_error")

        let t = try Harness(instances: [baseline], retries: 1) { _, _ in .failure(ForwardError(.timeout, "slow")) }
        #expect(try await t.send() == .deadLettered(route: "telemetry", reason: "timeout"))
        #expect(t.forwarder.recorded.count == 2)
    }

    @Test func unreachableServiceWaitsWithoutUsingRetries() async throws {
        let h = try Harness(instances: [baseline], retries: 0) { _, n in
            n <= 3 ? .failure(ForwardError(.connectFailed, "refused")) : .success(200)
        }
        #expect(try await h.send() == .forwarded(route: "telemetry"))
        let calls = h.forwarder.recorded
        #expect(calls.count == 4)
        #expect(calls.allSatisfy { $0.header("x-switchyard-delivery-attempt") == "1" })  // the service saw one attempt
        #expect(h.ledger.snapshot().retried.isEmpty)
    }

    @Test func aRefusingInstanceFailsOverAtOnce() async throws {
        let other = ServiceInstance(service: "svc", host: "127.0.0.1", port: 9003)
        let h = try Harness(instances: [baseline, other], retries: 0) { call, _ in
            call.instance == baseline ? .failure(ForwardError(.connectFailed, "refused")) : .success(200)
        }
        for _ in 0..<20 { #expect(try await h.send() == .forwarded(route: "telemetry")) }
        let calls = h.forwarder.recorded
        #expect(calls.filter { $0.instance == other }.count == 20)
        // Each refusal is followed at once by the other instance, never by the refusing one again.
        for (i, call) in calls.enumerated() where call.instance == baseline {
            #expect(i + 1 < calls.count && calls[i + 1].instance == other)
        }
    }

    @Test func messagesOlderThanTheRouteTTLExpire() async throws {
        let h = try Harness(instances: [baseline], retries: 0, ttlSeconds: 0.3) { _, _ in .failure(ForwardError(.connectFailed, "refused")) }
        #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "expired"))
        #expect(h.deadLetters.list().first?.lastError.contains("keeps messages") == true)
    }

    @Test func unroutedIsDeadLetteredAndCounted() async throws {
        let h = try Harness(instances: [baseline])
        #expect(try await h.send(topic: "nothing/matches") == .deadLettered(route: Router.unroutedLabel, reason: "unrouted"))
        #expect(h.deadLetters.list(reason: "unrouted").count == 1)
        let s = h.ledger.snapshot()
        #expect(s.deadLettered[MessageLedger.Pair(Router.unroutedLabel, "unrouted")] == 1)
        #expect(s.balances)
    }

    @Test func fanOutSucceedsOnlyWhenEveryTargetDoes() async throws {
        let other = ServiceInstance(service: "svc1", host: "127.0.0.1", port: 9100)
        let h = try Harness(instances: [baseline, other], retries: 0, targets: 2) { call, _ in
            call.instance.service == "svc1" ? .success(500) : .success(200)
        }
        #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "service_error"))
        #expect(h.forwarder.recorded.count == 2)
        #expect(h.deadLetters.list().map(\.service) == ["svc1"])
        #expect(h.ledger.snapshot().balances)
    }

    /// A service without instances (none registered yet, or every one drained for a restart)
    /// is down, not an error of the message: it waits until the route's TTL, then expires.
    @Test func noInstancesWaitsUntilTheTTL() async throws {
        let h = try Harness(instances: [], ttlSeconds: 0.5)
        let started = ContinuousClock.now
        #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "expired"))
        #expect(ContinuousClock.now - started >= .milliseconds(450))
        #expect(h.forwarder.recorded.isEmpty)
    }
}

@Suite struct CircuitTests {
    func rule(failures: Int, open: Double = 5, max: Double = 60) -> SwitchyardConfiguration.CircuitRule {
        var r = SwitchyardConfiguration.CircuitRule()
        r.failures = failures
        r.openSeconds = open
        r.maxOpenSeconds = max
        return r
    }

    @Test func consecutiveFailuresOpenTheCircuitAndTrafficGoesElsewhere() async throws {
        let other = ServiceInstance(service: "svc", host: "127.0.0.1", port: 9003)
        let clock = ManualClock()
        let h = try Harness(
            instances: [baseline, other],
            retries: 5,
            circuit: rule(failures: 3),
            breakers: CircuitBreakers(clock: clock)
        ) { call, _ in call.instance == baseline ? .success(500) : .success(200) }
        for _ in 0..<30 { #expect(try await h.send() == .forwarded(route: "telemetry")) }
        let toBaseline = h.forwarder.recorded.filter { $0.instance == baseline }.count
        #expect(toBaseline == 3)  // three failures in a row, then nothing more
        let status = try #require(h.router.circuits.first)
        #expect(status.instance == baseline.key && status.state == .open && status.consecutiveFailures == 3)
        #expect(status.retryInSeconds > 4.9)

        // Time up: one probe; it fails, so the circuit opens for twice as long.
        clock.advance(seconds: 5.1)
        for _ in 0..<30 { #expect(try await h.send() == .forwarded(route: "telemetry")) }
        #expect(h.forwarder.recorded.filter { $0.instance == baseline }.count == 4)
        #expect(try #require(h.router.circuits.first).retryInSeconds > 9.9)
    }

    @Test func aSuccessfulProbeClosesTheCircuit() async throws {
        let clock = ManualClock()
        let healthy = NIOLockedValueBox(false)
        let h = try Harness(
            instances: [baseline],
            retries: 10,
            circuit: rule(failures: 2, open: 0.2),
            breakers: CircuitBreakers(clock: clock)
        ) { _, _ in healthy.withLockedValue { $0 } ? .success(200) : .success(503) }
        // Two failures open it; the retry then waits for the circuit instead of failing on.
        let pending = Task { try await h.send() }
        // The circuit opens with the second failure; the retry counted after it comes a moment later.
        // (A generous bound: under the whole suite this test's loop may wait its turn for seconds.)
        try await waitUntil(timeout: .seconds(30)) {
            h.router.circuits.first?.state == .open && h.ledger.snapshot().retried["telemetry"] == 2
        }
        #expect(h.forwarder.recorded.count == 2)
        #expect(h.ledger.snapshot().retried["telemetry"] == 2)  // the second retry waits for the circuit
        try await Task.sleep(for: .milliseconds(300))
        #expect(h.forwarder.recorded.count == 2)  // open: nothing sent while it waits
        healthy.withLockedValue { $0 = true }
        clock.advance(seconds: 0.25)
        #expect(try await pending.value == .forwarded(route: "telemetry"))
        #expect(h.forwarder.recorded.count == 3)
        #expect(h.forwarder.recorded.last?.header("x-switchyard-delivery-attempt") == "3")
        #expect(h.router.circuits.isEmpty)  // closed and forgotten
    }

    @Test func allCircuitsOpenMessagesWaitUntilTheTTL() async throws {
        let clock = ManualClock()
        let h = try Harness(
            instances: [baseline],
            retries: 0,
            ttlSeconds: 0.4,
            circuit: rule(failures: 1, open: 60),
            breakers: CircuitBreakers(clock: clock)
        ) { _, _ in .failure(ForwardError(.timeout, "slow")) }
        #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "timeout"))  // retries: 0
        #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "expired"))  // waited, never sent
        #expect(h.forwarder.recorded.count == 1)
        #expect(h.ledger.snapshot().balances)
    }

    @Test func zeroFailuresTurnsTheBreakerOff() async throws {
        let h = try Harness(instances: [baseline], retries: 0, circuit: rule(failures: 0)) { _, _ in .success(500) }
        for _ in 0..<10 { #expect(try await h.send() == .deadLettered(route: "telemetry", reason: "service_error")) }
        #expect(h.forwarder.recorded.count == 10)
        #expect(h.router.circuits.isEmpty)
    }

    @Test func answersFromTheServiceResetTheCount() async throws {
        let h = try Harness(instances: [baseline], retries: 0, circuit: rule(failures: 3)) { _, n in n % 3 == 0 ? .success(404) : .success(500) }
        for _ in 0..<12 { _ = try await h.send() }
        #expect(h.forwarder.recorded.count == 12)  // 500, 500, 404 (an answer): never three failures in a row
        #expect(h.router.circuits.allSatisfy { $0.state == .closed })
    }
}

func waitUntil(timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now > deadline { throw CancellationError() }
        try await Task.sleep(for: .milliseconds(5))
    }
}

@Suite struct BatchTests {
    func rule(max: Int, linger: Double = 0.02, format: SwitchyardConfiguration.BatchFormat = .json) -> SwitchyardConfiguration.BatchRule {
        var r = SwitchyardConfiguration.BatchRule()
        r.max = max
        r.lingerSeconds = linger
        r.format = format
        return r
    }

    @Test func messagesGoInBatchesOfMaxThenOnLinger() async throws {
        let h = try Harness(instances: [baseline], batch: rule(max: 3))
        let outcomes = try await withThrowingTaskGroup(of: Router.Outcome.self) { group in
            for i in 0..<5 { group.addTask { try await h.send(device: "d\(i)") } }
            var all: [Router.Outcome] = []
            for try await o in group { all.append(o) }
            return all
        }
        #expect(outcomes.allSatisfy { $0 == .forwarded(route: "telemetry") })
        let calls = h.forwarder.recorded
        #expect(calls.map { $0.header("x-switchyard-batch-size") ?? "" }.sorted() == ["2", "3"])
        #expect(calls.allSatisfy { $0.request.path == "/batch" && $0.header("content-type") == "application/json" })
        let bodies = calls.map { String(buffer: $0.request.body) }.joined()
        for i in 0..<5 { #expect(bodies.contains("\"device\":\"d\(i)\"")) }
        #expect(bodies.hasPrefix("[{\"id\":"))
        #expect(h.ledger.snapshot().balances)
    }

    /// What gathers while a batch is out goes when it returns, not after the linger: a device
    /// with a backlog (one message at a time) is not held to one message per linger.
    @Test func aReturningBatchSendsWhatGatheredMeanwhile() async throws {
        // (Seconds, not milliseconds: with the whole suite running, the test's tasks have been held
        // up for over 3 s, and the third message must join while the first batch is out.)
        let h = try Harness(instances: [baseline], batch: rule(max: 2, linger: 40), answerDelay: .seconds(6))
        // A full batch goes out (its answer takes 6 s); a third message gathers meanwhile.
        async let first = h.send(device: "d0")
        async let second = h.send(device: "d1")
        try await waitUntil { h.forwarder.recorded.count == 1 }
        let start = ContinuousClock.now
        #expect(try await h.send(device: "d2") == .forwarded(route: "telemetry"))
        // ~12 s: the first batch's answer, then its own; waiting out the linger would take 46 s.
        #expect(ContinuousClock.now - start < .seconds(30), "the third message waited out the 40 s linger")
        #expect(try await [first, second] == [.forwarded(route: "telemetry"), .forwarded(route: "telemetry")])
        #expect(h.forwarder.recorded.map { $0.header("x-switchyard-batch-size") ?? "" } == ["2", "1"])
    }

    @Test func anOpenTargetCircuitHoldsBatchesBack() async throws {
        var breaker = SwitchyardConfiguration.BreakerRule()
        breaker.minRequests = 2
        breaker.errorRatio = 0.5
        breaker.openSeconds = 1
        breaker.halfOpenProbes = 1
        breaker.closeAfter = 1
        let calls = NIOLockedValueBox([ContinuousClock.Instant]())
        let h = try Harness(instances: [baseline], retries: 0, batch: rule(max: 1), targetBreaker: breaker) { _, n in
            calls.withLockedValue { $0.append(.now) }
            return n <= 2 ? .success(503) : .success(200)
        }
        // Two failed batches open the target's circuit (no retries: they are dead-lettered).
        #expect(try await h.send(device: "d1") == .deadLettered(route: "telemetry", reason: "service_error"))
        #expect(try await h.send(device: "d2") == .deadLettered(route: "telemetry", reason: "service_error"))
        // The next one waits while the circuit is open (it opened after the second call was
        // answered), then goes as the half-open probe.
        #expect(try await h.send(device: "d3") == .forwarded(route: "telemetry"))
        let times = calls.withLockedValue { $0 }
        #expect(times.count == 3 && h.deadLetters.count == 2)
        #expect(times[2] - times[1] >= .seconds(1), "the batch went while the circuit was open")
    }

    @Test func aBatchIsRetriedAndDeadLetteredAsAWhole() async throws {
        let h = try Harness(instances: [baseline], retries: 1, batch: rule(max: 2, format: .ndjson)) { _, _ in .success(503) }
        let outcomes = try await withThrowingTaskGroup(of: Router.Outcome.self) { group in
            for i in 0..<2 { group.addTask { try await h.send(device: "d\(i)") } }
            var all: [Router.Outcome] = []
            for try await o in group { all.append(o) }
            return all
        }
        #expect(outcomes.allSatisfy { $0 == .deadLettered(route: "telemetry", reason: "service_error") })
        #expect(h.forwarder.recorded.count == 2)  // the first attempt and one retry, each carrying both
        #expect(
            h.forwarder.recorded.allSatisfy { $0.header("content-type") == "application/x-ndjson" && $0.header("x-switchyard-batch-size") == "2" }
        )
        #expect(h.deadLetters.count == 2)
    }
}

@Suite struct BalancerTests {
    @Test func weightsShapeTheDistribution() {
        let b = Balancer()
        let heavy = ServiceInstance(service: "s", host: "127.0.0.1", port: 1, weight: 300)
        let light = ServiceInstance(service: "s", host: "127.0.0.1", port: 2, weight: 100)
        var counts = [Int: Int]()
        for _ in 0..<20_000 {
            let pick = b.pick(from: [heavy, light])!
            counts[pick.port, default: 0] += 1
            b.started(pick, now: 0)  // outstanding grows like a slow service
        }
        let share = Double(counts[1]!) / 20_000
        #expect(share > 0.7 && share < 0.8, "heavy share \(share)")
    }

    @Test func prefersTheLessLoadedInstance() {
        let b = Balancer()
        let a = ServiceInstance(service: "s", host: "127.0.0.1", port: 1)
        let c = ServiceInstance(service: "s", host: "127.0.0.1", port: 2)
        for _ in 0..<50 { b.started(a, now: 0) }
        for _ in 0..<100 { #expect(b.pick(from: [a, c]) == c) }
        #expect(b.pick(from: [ServiceInstance(service: "s", host: "h", port: 3, weight: 0)]) == nil)
    }

    @Test func backoffGrowsAndIsCapped() {
        let p = RetryPolicy(retries: 5, baseSeconds: 0.1, maxSeconds: 1)
        for attempt in 1...6 {
            let d = p.backoff(afterAttempt: attempt)
            let cap = min(1, 0.1 * Double(1 << (attempt - 1)))
            #expect(d >= cap / 2 && d <= cap)
        }
        #expect(RetryPolicy.isRetryable(status: 503))
        #expect(!RetryPolicy.isRetryable(status: 429))
    }
}
