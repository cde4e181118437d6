import Metrics
import NIOConcurrencyHelpers
import NIOCore
import SwitchyardCore

/// Batched delivery: messages for one target, lane and event loop are gathered up to
/// `batch.max` or `batch.linger` — or until a batch sent earlier by the same batcher returns —
/// sent as one request (a JSON array or NDJSON), and settled and retried as a whole.
///
/// Why a returning batch sends the next: a device's messages go one at a time (per-device
/// order), so a device with a backlog has its next message in the batch that gathers while its
/// previous one is out. Waiting out the linger then would hold such a device to one message per
/// linger (200 a second at 5 ms) while the service sits idle.
extension Router {
    /// (The route by identity: a route is an object of this router's table; hashing its name
    /// per message cost more.)
    struct BatchKey: Hashable {
        var route: ObjectIdentifier
        var target: Int
        var lane: String?
        var loop: ObjectIdentifier
    }

    struct BatchItem: Sendable {
        var envelope: Envelope
        /// Told the message's result at this target, once (a callback, not a promise: one
        /// future less per message).
        var done: @Sendable (TargetResult) -> Void
        var attempts: Attempts
    }

    /// Gathers one batch at a time. `@unchecked Sendable`: every method runs on `loop`.
    final class Batcher: @unchecked Sendable {
        let loop: any EventLoop
        let rule: SwitchyardConfiguration.BatchRule
        var items: [BatchItem] = []
        var timer: Scheduled<Void>?
        let send: ([BatchItem], Batcher) -> Void

        init(loop: any EventLoop, rule: SwitchyardConfiguration.BatchRule, send: @escaping ([BatchItem], Batcher) -> Void) {
            self.loop = loop
            self.rule = rule
            self.send = send
        }

        func add(_ item: BatchItem) {
            items.append(item)
            if items.count >= rule.max {
                flush()
            } else if timer == nil {
                timer = loop.scheduleTask(in: .nanoseconds(Int64(rule.lingerSeconds * 1e9))) { self.flush() }
            }
        }

        func flush() {
            timer?.cancel()
            timer = nil
            guard !items.isEmpty else { return }
            let batch = items
            items = []
            send(batch, self)
        }

        /// A batch sent earlier ended (its messages' outcomes given, so their devices' next
        /// messages are gathering now): what gathered goes without waiting out the linger.
        func ended() {
            if !items.isEmpty { flush() }
        }
    }

    /// Adds the message to its batch; `done` gets its result at the target once.
    func deliverBatched(
        _ envelope: Envelope,
        route: RouteTable.Route,
        index: Int,
        attempts: Attempts,
        loop: any EventLoop,
        done: @escaping @Sendable (TargetResult) -> Void
    ) {
        let target = route.targets[index]
        let key = BatchKey(route: ObjectIdentifier(route), target: index, lane: envelope.lane, loop: ObjectIdentifier(loop))
        let batcher = batchers.withLockedValue { batchers in
            if let existing = batchers[key] { return existing }
            let created = Batcher(loop: loop, rule: target.batch!) { [self] batch, batcher in
                // A batch goes on from its most-tried message (recovered ones start above 1).
                let first = batch.map(\.attempts.first).max() ?? 1
                sendBatch(batch, by: batcher, route: route, target: target, lane: envelope.lane, attempt: first, parked: 0, loop: loop)
            }
            batchers[key] = created
            return created
        }
        let item = BatchItem(envelope: envelope, done: done, attempts: attempts)
        if loop.inEventLoop { batcher.add(item) } else { loop.execute { batcher.add(item) } }
    }

    /// One attempt of a batch, and what follows from it (as for a single message): the whole
    /// batch goes to another instance, waits, is retried within the retry budget, or ends.
    private func sendBatch(
        _ batch: [BatchItem],
        by batcher: Batcher,
        route: RouteTable.Route,
        target: SwitchyardConfiguration.TargetRule,
        lane: String?,
        attempt: Int,
        parked: Int,
        refused: Set<String> = [],
        retry: Bool = false,
        loop: any EventLoop
    ) {
        // The batch again (after `delay`, or at once), as the next step of its delivery.
        @Sendable func resend(_ items: [BatchItem], attempt: Int, parked: Int, refused: Set<String> = [], retry: Bool, after delay: Double?) {
            let send = {
                self.sendBatch(
                    items,
                    by: batcher,
                    route: route,
                    target: target,
                    lane: lane,
                    attempt: attempt,
                    parked: parked,
                    refused: refused,
                    retry: retry,
                    loop: loop
                )
            }
            if let delay { loop.scheduleTask(in: .nanoseconds(Int64(delay * 1e9))) { send() } } else { send() }
        }
        // Each message ends alone when it cannot go: expired, or nowhere to send it.
        @Sendable func failAll(_ items: [BatchItem], _ reason: String, _ error: String, attempts: Int) {
            for item in items {
                deadLetter(item.envelope, route: route.name, service: target.service, reason: reason, attempts: attempts, error: error)
                item.done(TargetResult(failure: reason))
            }
        }
        let now = WallClock.nowNanos()
        let expired = batch.filter { Double(now &- $0.envelope.receivedAt) / 1e9 > route.ttlSeconds }
        failAll(expired, "expired", "older than the route's TTL of \(Int(route.ttlSeconds)) s", attempts: attempt - 1)
        let live = batch.filter { Double(now &- $0.envelope.receivedAt) / 1e9 <= route.ttlSeconds }
        // Every way the batch ends (not when it waits or goes again) tells its batcher.
        @Sendable func ended() {
            if loop.inEventLoop { batcher.ended() } else { loop.execute { batcher.ended() } }
        }
        guard !live.isEmpty else { return ended() }

        // The service or the target's circuit is down, or the retry budget spent: the batch waits.
        @Sendable func park(_ reason: String, _ why: String) {
            if parked == 0 { noteWaiting(route: route.name, service: target.service, reason: reason, why: why) }
            let wait = RetryPolicy.parkDelay(afterWaits: parked)
            resend(live, attempt: attempt, parked: parked + 1, retry: retry, after: wait)
        }
        if !balancer.admits(target.service) {
            resend(live, attempt: attempt, parked: parked, retry: retry, after: Router.admissionWait())
            return
        }
        if retry, !mayRetry(target.service) { return park("retry_budget", "the retry budget of service \(target.service) is spent") }
        let breaker = breaker(route: route.name, service: target.service)
        if let breaker, !breaker.allow() {
            if retry { abandonRetry(target.service) }
            return park("target_circuit_open", "the circuit of route \(route.name)'s target \(target.service) is open")
        }
        let choice: Choice
        switch choose(service: target.service, lane: lane, refused: refused) {
        case .success(let c): choice = c
        case .failure(let none):
            breaker?.abandon()
            if retry { abandonRetry(target.service) }
            if none.waits {
                park(none.reason, none.detail)
            } else {
                failAll(live, none.reason, none.detail, attempts: attempt - 1)
                ended()
            }
            return
        }
        let (instance, fallback, candidates) = (choice.instance, choice.fallback, choice.candidates)
        let rule = target.batch!
        var body = ByteBuffer()
        BatchBody.encode(live.map(\.envelope), format: rule.format, into: &body)
        var headers = [
            HeaderField("x-switchyard-batch-size", String(live.count)),
            HeaderField("x-switchyard-delivery-attempt", String(attempt)),
            HeaderField("traceparent", TraceContext.generate().traceparent),
            HeaderField("content-type", rule.format == .json ? "application/json" : "application/x-ndjson"),
        ]
        if let lane { headers.append(HeaderField("x-switchyard-lane", lane)) }
        if fallback { headers.append(HeaderField("x-switchyard-lane-fallback", "true")) }
        let request = ForwardRequest(method: target.method, path: instance.basePath + target.path, headers: headers, body: body)
        let policy = RetryPolicy(target)
        self.attempt(request, to: instance, target: target, route: route.name, breaker: breaker, retry: retry, loop: loop) {
            [self] verdict in
            let reason: String
            let detail: String
            switch verdict {
            case .delivered:
                for item in live { item.done(TargetResult(failure: nil)) }
                return ended()
            case .rejected(let why):
                failAll(live, "rejected_by_service", why, attempts: attempt)
                return ended()
            case .interrupted:
                for item in live { item.done(.interruptedByShutdown) }
                return ended()
            case .failed(let r, let why):
                (reason, detail) = (r, why)
            case .unreachable:
                let nowRefused = refused.union([instance.key])
                if candidates.contains(where: { !nowRefused.contains($0.key) }) {
                    resend(live, attempt: attempt, parked: parked, refused: nowRefused, retry: retry, after: nil)
                    return
                }
                park("unreachable", "no instance of service \(target.service) can be reached")
                return
            }
            guard attempt <= policy.retries else {
                failAll(live, reason, detail, attempts: attempt)
                return ended()
            }
            for item in live {
                ledger.retried(route: route.name)
                item.attempts.retrying(attempt + 1)
            }
            resend(live, attempt: attempt + 1, parked: parked, retry: true, after: policy.backoff(afterAttempt: attempt))
        }
    }
}

/// The body of a batch: each message as `{id, topic, device, product, lane, tags,
/// received_at, payload}` (`payload_base64` instead when the payload is not UTF-8).
enum BatchBody {
    static func encode(_ envelopes: [Envelope], format: SwitchyardConfiguration.BatchFormat, into buffer: inout ByteBuffer) {
        buffer.reserveCapacity(envelopes.reduce(0) { $0 + $1.payload.readableBytes + 160 })
        if format == .json { buffer.writeStaticString("[") }
        for (i, e) in envelopes.enumerated() {
            if i > 0 { buffer.writeStaticString(format == .json ? "," : "\n") }
            buffer.writeStaticString("{\"id\":")
            JSONText.writeQuoted(e.id, into: &buffer)
            buffer.writeStaticString(",\"topic\":")
            JSONText.writeQuoted(e.topic, into: &buffer)
            if let d = e.device {
                buffer.writeStaticString(",\"device\":")
                JSONText.writeQuoted(d, into: &buffer)
            }
            if let p = e.product {
                buffer.writeStaticString(",\"product\":")
                JSONText.writeQuoted(p, into: &buffer)
            }
            if let l = e.lane {
                buffer.writeStaticString(",\"lane\":")
                JSONText.writeQuoted(l, into: &buffer)
            }
            if !e.tags.isEmpty {
                var separator: StaticString = ",\"tags\":{"
                e.forEachTagInKeyOrder { name, value in
                    buffer.writeStaticString(separator)
                    separator = ","
                    JSONText.writeQuoted(name, into: &buffer)
                    buffer.writeStaticString(":")
                    JSONText.writeQuoted(value, into: &buffer)
                }
                buffer.writeStaticString("}")
            }
            buffer.writeStaticString(",\"received_at\":")
            JSONText.writeDecimal(e.receivedAt, into: &buffer)
            let payload = e.payload
            let written = payload.withUnsafeReadableBytes { bytes in
                guard UTF8Validation.isValid(bytes) else { return false }
                buffer.writeStaticString(",\"payload\":")
                JSONText.writeQuoted(utf8: bytes, into: &buffer)
                buffer.writeStaticString("}")
                return true
            }
            if !written {
                buffer.writeString(",\"payload_base64\":\"\(Base64.encode(Array(payload.readableBytesView)))\"}")
            }
        }
        buffer.writeStaticString(format == .json ? "]" : "\n")
    }
}

/// Standard base64 (no line breaks).
enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 2 < bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], UInt8(ascii: "="), UInt8(ascii: "=")]
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], UInt8(ascii: "=")]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
