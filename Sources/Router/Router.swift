// Router: route table, lane resolution, balancing, retries and dead letters.
import Logging
import Metrics
import NIOConcurrencyHelpers
public import NIOCore
public import SwitchyardCore

/// Delivers accepted envelopes by the route table of one configuration. A new `Router`
/// is built on each reload; the forwarder, balancer, ledger and dead-letter list are
/// shared, so a message finishes under the snapshot it started with.
public final class Router: Sendable {
    public let table: RouteTable
    public let resolver: LaneResolver
    let directory: any ServiceDirectory
    let forwarder: any Forwarder
    let deadLetters: DeadLetterList
    let ledger: MessageLedger
    let balancer: Balancer
    let logger: Logger
    let timers: [String: Metrics.Timer]
    let circuitRules: [String: SwitchyardConfiguration.CircuitRule]
    /// The circuit breakers of the route targets that have one, found once per configuration.
    let targetBreakers: [TargetKey: TargetBreaker]

    struct TargetKey: Hashable {
        var route: String
        var service: String
    }
    let batchers = NIOLockedValueBox([BatchKey: Batcher]())
    /// When each (service, reason) last had a waiting message logged.
    let waitWarnings = NIOLockedValueBox([String: UInt64]())

    /// How one message ended.
    public enum Outcome: Sendable, Equatable {
        case forwarded(route: String)
        case deadLettered(route: String, reason: String)
        /// Cut off by shutdown before an outcome: still in flight (the journal redelivers it).
        case interrupted(route: String)

        public var isInterrupted: Bool {
            if case .interrupted = self { return true }
            return false
        }
    }

    /// Route label used for messages that match no route.
    public static let unroutedLabel = "(unrouted)"

    public init(
        configuration: SwitchyardConfiguration,
        directory: any ServiceDirectory,
        forwarder: any Forwarder,
        deadLetters: DeadLetterList,
        ledger: MessageLedger,
        balancer: Balancer,
        logger: Logger
    ) throws(KeyPathError) {
        table = try RouteTable(configuration.routes)
        resolver = LaneResolver(lanes: configuration.lanes)
        self.directory = directory
        self.forwarder = forwarder
        self.deadLetters = deadLetters
        self.ledger = ledger
        self.balancer = balancer
        self.logger = logger
        var timers: [String: Metrics.Timer] = [:]
        for route in table.routes {
            timers[route.name] = Metrics.Timer(label: "switchyard_forward_duration_seconds", dimensions: [("route", route.name)])
        }
        self.timers = timers
        circuitRules = configuration.services.mapValues(\.circuit)
        var breakers: [TargetKey: TargetBreaker] = [:]
        for route in table.routes {
            for target in route.targets {
                if let breaker = balancer.targetBreakers.breaker("\(route.name)→\(target.service)", rule: target.breaker) {
                    breakers[TargetKey(route: route.name, service: target.service)] = breaker
                }
            }
        }
        targetBreakers = breakers
    }

    // MARK: - Delivery

    /// Records the number of a message's next attempt (the journal, per message sequence).
    public protocol AttemptRecorder: AnyObject, Sendable {
        func recordAttempt(_ sequence: UInt64, attempt: Int)
    }

    /// Where a message's delivery attempts start, and who hears of each retry (the journal,
    /// so that attempt numbers go on after a restart).
    public struct Attempts: Sendable {
        /// The number of the first attempt (above 1 for a message recovered after a restart).
        public var first: Int
        /// Told the number of an attempt before it is scheduled (retries only), with
        /// `sequence`: the journal, so that after a restart the attempts go on from there.
        /// (A reference and a number, not a closure: nothing to allocate per message.)
        public var recorder: (any AttemptRecorder)?
        public var sequence: UInt64

        public init(first: Int = 1, recorder: (any AttemptRecorder)? = nil, sequence: UInt64 = 0) {
            self.first = first
            self.recorder = recorder
            self.sequence = sequence
        }

        func retrying(_ attempt: Int) { recorder?.recordAttempt(sequence, attempt: attempt) }
    }

    /// Whether a route takes messages on `topic`.
    public func routes(_ topic: String) -> Bool { table.takes(topic) }

    /// Delivers an accepted envelope to every target of its route and records the outcome
    /// in the ledger (the channel has already counted it as received and in flight).
    @discardableResult
    public func route(_ envelope: Envelope, attempts: Attempts = Attempts(), on loop: any EventLoop) -> EventLoopFuture<Outcome> {
        let promise = loop.makePromise(of: Outcome.self)
        route(envelope, attempts: attempts, on: loop) { promise.succeed($0) }
        return promise.futureResult
    }

    /// `route` with a callback instead of a future (one future less per message):
    /// `completion` gets the outcome once, on the loop the delivery ended on.
    public func route(
        _ envelope: Envelope,
        attempts: Attempts = Attempts(),
        on loop: any EventLoop,
        completion: @escaping @Sendable (Outcome) -> Void
    ) {
        guard let (route, captures) = table.matchForDelivery(envelope.topic) else {
            deadLetter(
                envelope,
                route: Router.unroutedLabel,
                service: nil,
                reason: "unrouted",
                attempts: 0,
                error: "no route matches topic \"\(envelope.topic)\""
            )
            ledger.deadLettered(route: Router.unroutedLabel, reason: "unrouted")
            return completion(.deadLettered(route: Router.unroutedLabel, reason: "unrouted"))
        }
        // Callbacks, not futures: each target reports its result once (failures are results).
        if route.targets.count == 1 {
            deliverToTarget(envelope, route: route, captures: captures, index: 0, attempts: attempts, loop: loop) { result in
                completion(self.outcome(of: CollectionOfOne(result), route: route))
            }
            return
        }
        // Fan-out: the outcome once every target has reported.
        let results = NIOLockedValueBox([TargetResult]())
        for index in route.targets.indices {
            deliverToTarget(envelope, route: route, captures: captures, index: index, attempts: attempts, loop: loop) { result in
                let all = results.withLockedValue { results -> [TargetResult]? in
                    results.append(result)
                    return results.count == route.targets.count ? results : nil
                }
                if let all { completion(self.outcome(of: all, route: route)) }
            }
        }
    }

    /// The message's one outcome from its targets' results, counted in the ledger (an
    /// interrupted message is not counted: it is still in flight, in the journal).
    private func outcome(of results: some Collection<TargetResult>, route: RouteTable.Route) -> Outcome {
        if results.contains(where: \.interrupted) { return .interrupted(route: route.name) }
        if let failure = results.lazy.compactMap(\.failure).first {
            ledger.deadLettered(route: route.name, reason: failure)
            return .deadLettered(route: route.name, reason: failure)
        }
        ledger.forwarded(route: route.name)
        return .forwarded(route: route.name)
    }

    private func deliverToTarget(
        _ envelope: Envelope,
        route: RouteTable.Route,
        captures: [String: String],
        index: Int,
        attempts: Attempts,
        loop: any EventLoop,
        done: @escaping @Sendable (TargetResult) -> Void
    ) {
        if route.targets[index].batch != nil {
            return deliverBatched(envelope, route: route, index: index, attempts: attempts, loop: loop, done: done)
        }
        deliver(
            envelope,
            route: route,
            captures: captures,
            target: route.targets[index],
            attempt: attempts.first,
            attempts: attempts,
            parked: 0,
            loop: loop,
            done: done
        )
    }

    struct Choice {
        var instance: ServiceInstance
        /// Baseline serves a lane that has no instance of the service.
        var fallback: Bool
        /// Every instance that could serve the message (for failover).
        var candidates: [ServiceInstance]
    }

    struct NoInstance: Error {
        var reason: String
        var detail: String
        /// The service is down for now (every circuit open): the message waits instead of ending.
        var waits = false
    }

    /// The instance for a message of `lane`: lane resolution, circuit breakers, then the
    /// balancer, skipping instances that refused it just now until every one has.
    func choose(service: String, lane: String?, refused: Set<String>) -> Result<Choice, NoInstance> {
        let candidates: [ServiceInstance]
        let fallback: Bool
        switch resolver.resolve(lane: lane, instances: directory.instances(of: service)) {
        case .lane(let list): (candidates, fallback) = (list, false)
        case .fallback(let list): (candidates, fallback) = (list, true)
        case .laneUnavailable:
            return .failure(
                NoInstance(
                    reason: "lane_unavailable",
                    detail: "lane \"\(lane ?? "baseline")\" has no instance of service \"\(service)\" and its fallback is strict"
                )
            )
        case .noInstances:
            // None registered, or every one drained: the service is down for now (as during a
            // restart of its only instance); the message waits until one is back or its TTL ends.
            return .failure(
                NoInstance(
                    reason: "no_instances",
                    detail: "service \"\(service)\" has no instance for lane \"\(lane ?? "baseline")\"",
                    waits: true
                )
            )
        }
        let admitted = balancer.breakers.admitted(candidates)
        let allOpen = NoInstance(
            reason: "circuit_open",
            detail: "every instance of service \"\(service)\" has an open circuit (too many failures in a row)",
            waits: true
        )
        if admitted.isEmpty { return .failure(allOpen) }
        let untried = refused.isEmpty ? admitted : admitted.filter { !refused.contains($0.key) }
        var pool = untried.isEmpty ? admitted : untried
        while true {
            guard let instance = balancer.pick(from: pool) else {
                return .failure(NoInstance(reason: "no_instances", detail: "every instance of service \"\(service)\" has weight 0", waits: true))
            }
            if balancer.breakers.claim(instance) {
                return .success(Choice(instance: instance, fallback: fallback, candidates: admitted))
            }
            pool.removeAll { $0.key == instance.key }  // its probe went out meanwhile
            if pool.isEmpty { return .failure(allOpen) }
        }
    }

    /// Instances with failures counted or a circuit not closed (`GET /admin/circuits`).
    public var circuits: [CircuitBreakers.Status] { balancer.breakers.status() }

    /// An instance that answered `x-switchyard-draining: true` gets nothing new for a while;
    /// one that closed a kept-alive connection gets nothing new while a probe checks it.
    func noteDraining(_ result: Result<ForwardResponse, any Error>, instance: ServiceInstance) {
        guard case .success(let response) = result else { return }
        if response.draining {
            balancer.health.drain(instance.key, source: .response)
        } else if response.closing {
            balancer.health.closing(instance)
        }
    }

    /// Feeds an attempt's verdict to the instance's circuit breaker.
    func recordCircuit(_ verdict: RetryPolicy.Verdict, instance: ServiceInstance) {
        let rule = circuitRules[instance.service] ?? SwitchyardConfiguration.CircuitRule()
        switch verdict {
        case .delivered, .rejected: balancer.breakers.record(instance, failed: false, rule: rule)
        case .failed, .unreachable: balancer.breakers.record(instance, failed: true, rule: rule)
        case .interrupted: balancer.breakers.abandon(instance)
        }
    }

    /// One attempt at an instance with its bookkeeping: the instance's outstanding count (drains
    /// wait for it to reach 0), the service's retry budget, the instance's and the target's circuit
    /// breakers, drain signals and the route's timer. Completes on `loop` with the verdict.
    func attempt(
        _ request: ForwardRequest,
        to instance: ServiceInstance,
        target: SwitchyardConfiguration.TargetRule,
        route: String,
        breaker: TargetBreaker?,
        retry: Bool,
        loop: any EventLoop,
        done: @escaping @Sendable (RetryPolicy.Verdict) -> Void
    ) {
        let started = SystemMonotonicClock().nowNanos()
        balancer.started(instance, now: started)
        let timer = timers[route]
        forwarder.forward(request, to: instance, timeout: .nanoseconds(Int64(target.timeoutSeconds * 1e9)), on: loop)
            .hop(to: loop)
            .whenComplete { result in
                self.balancer.finished(instance, retry: retry)
                let nanos = SystemMonotonicClock().nowNanos() - started
                timer?.recordNanoseconds(Int64(nanos))
                let verdict = RetryPolicy.verdict(result, instance: instance)
                self.recordCircuit(verdict, instance: instance)
                self.noteDraining(result, instance: instance)
                // Refused: it may be shutting down; probed, it stays out until it accepts again.
                if case .unreachable = verdict { self.balancer.health.closing(instance) }
                switch verdict {
                case .delivered, .rejected: breaker?.record(failed: false, seconds: Double(nanos) / 1e9)
                case .failed, .unreachable: breaker?.record(failed: true, seconds: Double(nanos) / 1e9)
                case .interrupted: breaker?.abandon()
                }
                done(verdict)
            }
    }

    /// The circuit breaker of a route's target, if it has one.
    func breaker(route: String, service: String) -> TargetBreaker? {
        targetBreakers.isEmpty ? nil : targetBreakers[TargetKey(route: route, service: service)]
    }

    /// A message starts waiting (in the journal, its attempts not used up): counted by route and
    /// reason, and logged as a warning at most every 30 s per service and reason, so that a
    /// service that is down or has no instance is not silent.
    func noteWaiting(route: String, service: String, reason: String, why: String) {
        Counter(label: "switchyard_message_waits_total", dimensions: [("route", route), ("reason", reason)]).increment()
        let now = SystemMonotonicClock().nowNanos()
        let key = "\(service)|\(reason)"
        let warn = waitWarnings.withLockedValue { last -> Bool in
            if let at = last[key], now &- at < 30_000_000_000 { return false }
            last[key] = now
            return true
        }
        if warn {
            logger.warning(
                "messages wait for a service; they are delivered when it is back, or expire after the route's ttl",
                metadata: ["route": "\(route)", "service": "\(service)", "reason": "\(reason)", "detail": "\(why)"]
            )
        }
    }

    /// How long an attempt held back by a cold fleet's ramp waits before it asks again.
    static func admissionWait() -> Double {
        var rng = FastRandom()
        return Double.random(in: 0.01...0.03, using: &rng)
    }

    /// Whether a retry may go now. When the service's retry budget is spent it waits (the
    /// message stays in the journal; its attempts are not used up); a slot taken here is given
    /// back by the attempt, or by `abandonRetry` when no attempt follows.
    func mayRetry(_ service: String) -> Bool {
        balancer.retryBudget.allowRetry(service)
    }

    func abandonRetry(_ service: String) {
        balancer.retryBudget.release(service)
    }

    struct TargetResult: Sendable {
        /// Dead-letter reason, nil when delivered.
        var failure: String?
        /// Cut off by shutdown: neither delivered nor dead-lettered.
        var interrupted = false

        static let interruptedByShutdown = TargetResult(failure: nil, interrupted: true)
    }

    /// One attempt of `envelope` at `target`, and what follows from it: another instance at
    /// once when this one could not be reached, a wait while the service is down (every circuit
    /// open, or the target's), a retry after backoff within the retry budget, or the message's end.
    private func deliver(
        _ envelope: Envelope,
        route: RouteTable.Route,
        captures: [String: String],
        target: SwitchyardConfiguration.TargetRule,
        attempt: Int,
        attempts: Attempts,
        parked: Int,
        refused: Set<String> = [],
        retry: Bool = false,
        loop: any EventLoop,
        done: @escaping @Sendable (TargetResult) -> Void
    ) {
        // (Local functions rather than closure values: no context is built for them on the
        // common path; an escaping closure that calls one captures what it needs.)
        // `sent`: whether this attempt reached the forwarder (it counts as an attempt then).
        @Sendable func fail(_ reason: String, _ error: String, _ sent: Bool) {
            self.deadLetter(
                envelope,
                route: route.name,
                service: target.service,
                reason: reason,
                attempts: sent ? attempt : attempt - 1,
                error: error
            )
            done(TargetResult(failure: reason))
        }
        let ageSeconds = Double(WallClock.nowNanos() &- envelope.receivedAt) / 1e9
        if ageSeconds > route.ttlSeconds {
            return fail(
                "expired",
                "the message is \(Int(ageSeconds)) s old; route \"\(route.name)\" keeps messages \(Int(route.ttlSeconds)) s",
                false
            )
        }
        // The delivery's next step: another attempt (after `delay`, or at once).
        @Sendable func redeliver(attempt: Int, parked: Int, refused: Set<String> = [], retry: Bool, after delay: Double?) {
            let next = {
                self.deliver(
                    envelope,
                    route: route,
                    captures: captures,
                    target: target,
                    attempt: attempt,
                    attempts: attempts,
                    parked: parked,
                    refused: refused,
                    retry: retry,
                    loop: loop,
                    done: done
                )
            }
            if let delay { loop.scheduleTask(in: .nanoseconds(Int64(delay * 1e9))) { next() } } else { next() }
        }
        // The same attempt again after `delay`, without using up a retry.
        @Sendable func again(_ delay: Double, _ parked: Int) { redeliver(attempt: attempt, parked: parked, retry: retry, after: delay) }
        // The service is down (or its retry budget spent): the message waits, in the journal,
        // without using up its retries, until the service is back or the route's TTL runs out.
        @Sendable func park(_ reason: String, _ why: String) {
            if parked == 0 { self.noteWaiting(route: route.name, service: target.service, reason: reason, why: why) }
            self.logger.debug("waiting", metadata: ["id": "\(envelope.id)", "why": "\(why)"])
            again(RetryPolicy.parkDelay(afterWaits: parked), parked + 1)
        }
        // A cold fleet takes part of the service's usual concurrency: the message waits its turn.
        if !balancer.admits(target.service) { return again(Router.admissionWait(), parked) }
        if retry, !mayRetry(target.service) { return park("retry_budget", "the retry budget of service \(target.service) is spent") }
        // The target's own circuit open: the message waits, as for a service that is down.
        let breaker = breaker(route: route.name, service: target.service)
        if let breaker, !breaker.allow() {
            if retry { abandonRetry(target.service) }
            return park("target_circuit_open", "the circuit of route \(route.name)'s target \(target.service) is open")
        }
        let choice: Choice
        switch choose(service: target.service, lane: envelope.lane, refused: refused) {
        case .success(let c): choice = c
        case .failure(let none):
            breaker?.abandon()
            if retry { abandonRetry(target.service) }
            return none.waits ? park(none.reason, none.detail) : fail(none.reason, none.detail, false)
        }
        let request = Router.request(
            for: envelope,
            target: target,
            captures: captures,
            instance: choice.instance,
            fallback: choice.fallback,
            attempt: attempt
        )
        let policy = RetryPolicy(target)
        self.attempt(request, to: choice.instance, target: target, route: route.name, breaker: breaker, retry: retry, loop: loop) {
            verdict in
            let reason: String
            let detail: String
            switch verdict {
            case .delivered:
                return done(TargetResult(failure: nil))
            case .rejected(let why):
                return fail("rejected_by_service", why, true)
            case .interrupted:
                return done(.interruptedByShutdown)
            case .failed(let r, let why):
                (reason, detail) = (r, why)
            case .unreachable(let why):
                // Another instance may take it at once.
                let nowRefused = refused.union([choice.instance.key])
                if choice.candidates.contains(where: { !nowRefused.contains($0.key) }) {
                    return redeliver(attempt: attempt, parked: parked, refused: nowRefused, retry: retry, after: nil)
                }
                return park("unreachable", why)
            }
            guard attempt <= policy.retries else {
                return fail(reason, detail, true)
            }
            self.ledger.retried(route: route.name)
            attempts.retrying(attempt + 1)
            let delay = policy.backoff(afterAttempt: attempt)
            self.logger.debug(
                "retrying",
                metadata: ["id": "\(envelope.id)", "route": "\(route.name)", "attempt": "\(attempt)", "error": "\(detail)"]
            )
            redeliver(attempt: attempt + 1, parked: parked, retry: true, after: delay)
        }
    }

    func deadLetter(_ envelope: Envelope, route: String, service: String?, reason: String, attempts: Int, error: String) {
        // Per message: debug only (a failing service would flood the log); the count is in
        // the metrics and every entry in `GET /admin/dead-letters`.
        logger.debug(
            "dead-lettered",
            metadata: ["id": "\(envelope.id)", "route": "\(route)", "reason": "\(reason)", "error": "\(error)"]
        )
        deadLetters.append(
            DeadLetter(
                id: envelope.id,
                route: route,
                service: service,
                reason: reason,
                attempts: attempts,
                lastError: error,
                at: WallClock.nowNanos(),
                envelope: envelope
            )
        )
    }

    // MARK: - Request rendering

    /// The request sent to `instance`, with the contract's headers.
    public static func request(
        for envelope: Envelope,
        target: SwitchyardConfiguration.TargetRule,
        captures: [String: String],
        instance: ServiceInstance,
        fallback: Bool,
        attempt: Int
    ) -> ForwardRequest {
        var headers: [HeaderField] = []
        headers.reserveCapacity(11 + envelope.tags.count)
        headers.append(HeaderField("x-switchyard-message-id", envelope.id))
        headers.append(HeaderField("x-switchyard-delivery-attempt", String(attempt)))
        headers.append(HeaderField("x-switchyard-topic", headerSafe(envelope.topic)))
        headers.append(HeaderField("x-switchyard-channel", envelope.channel))
        headers.append(HeaderField("traceparent", envelope.trace.childTraceparent()))
        headers.append(HeaderField("content-type", envelope.header("content-type") ?? "application/octet-stream"))
        if let lane = envelope.lane { headers.append(HeaderField("x-switchyard-lane", lane)) }
        if fallback { headers.append(HeaderField("x-switchyard-lane-fallback", "true")) }
        if let device = envelope.device { headers.append(HeaderField("x-switchyard-device", headerSafe(device))) }
        if let product = envelope.product { headers.append(HeaderField("x-switchyard-product", headerSafe(product))) }
        envelope.forEachTagInKeyOrder { name, value in
            headers.append(HeaderField("x-switchyard-tag-" + headerSafe(name), headerSafe(value)))
        }
        if let baggage = envelope.trace.outgoingBaggage(lane: envelope.lane) { headers.append(HeaderField("baggage", baggage)) }
        let rendered = PathTemplate.render(target.path, captures: captures, envelope: envelope)
        let path = instance.basePath.isEmpty ? rendered : instance.basePath + rendered
        return ForwardRequest(method: target.method, path: path, headers: headers, body: envelope.payload)
    }

    /// Header values must be visible ASCII: anything else is percent-encoded.
    static func headerSafe(_ value: String) -> String {
        if value.withUTF8Bytes({ $0.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "%") } }) { return value }
        return PathTemplate.percentEncode(value, keepSlash: true)
    }

    // MARK: - Explain

    public struct TargetExplanation: Sendable, Encodable {
        public var service: String
        public var method: String
        public var path: String
        public var resolution: String
        public var fallbackTaken: Bool
        public var candidates: [String]
        public var detail: String
    }

    public struct Explanation: Sendable, Encodable {
        public var route: String?
        public var captures: [String: String]
        public var targets: [TargetExplanation]
        public var outcome: String
    }

    /// What `route` would do with this (classified, laned) envelope, without sending anything.
    public func explain(_ envelope: Envelope) -> Explanation {
        guard let (route, captures) = table.match(envelope.topic) else {
            return Explanation(
                route: nil,
                captures: [:],
                targets: [],
                outcome: "dead-lettered: unrouted (no route matches \"\(envelope.topic)\")"
            )
        }
        let targets = route.targets.map { target -> TargetExplanation in
            let path = PathTemplate.render(target.path, captures: captures, envelope: envelope)
            let lane = envelope.lane ?? "baseline"
            switch resolver.resolve(lane: envelope.lane, instances: directory.instances(of: target.service)) {
            case .lane(let list):
                return TargetExplanation(
                    service: target.service,
                    method: target.method,
                    path: path,
                    resolution: "lane",
                    fallbackTaken: false,
                    candidates: list.map(\.url),
                    detail: "\(list.count) instance(s) in lane \"\(lane)\""
                )
            case .fallback(let list):
                return TargetExplanation(
                    service: target.service,
                    method: target.method,
                    path: path,
                    resolution: "fallback",
                    fallbackTaken: true,
                    candidates: list.map(\.url),
                    detail: "lane \"\(lane)\" has no instance of \"\(target.service)\"; baseline serves it (x-switchyard-lane-fallback: true)"
                )
            case .laneUnavailable:
                return TargetExplanation(
                    service: target.service,
                    method: target.method,
                    path: path,
                    resolution: "lane_unavailable",
                    fallbackTaken: false,
                    candidates: [],
                    detail: "lane \"\(lane)\" has no instance of \"\(target.service)\" and its fallback is strict: dead-letter"
                )
            case .noInstances:
                return TargetExplanation(
                    service: target.service,
                    method: target.method,
                    path: path,
                    resolution: "no_instances",
                    fallbackTaken: false,
                    candidates: [],
                    detail: "service \"\(target.service)\" has no usable instance: the message waits until one is back (or its TTL ends)"
                )
            }
        }
        let ok = targets.allSatisfy { $0.resolution == "lane" || $0.resolution == "fallback" }
        let strict = targets.contains { $0.resolution == "lane_unavailable" }
        return Explanation(
            route: route.name,
            captures: captures,
            targets: targets,
            outcome: ok
                ? "forward to \(targets.count) target(s)" : strict ? "dead-letter (see targets)" : "wait for an instance (see targets)"
        )
    }
}
