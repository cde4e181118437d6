import Controller
import Journal
import NIOConcurrencyHelpers
import NIOCore
import Router
import SwitchyardCore
import Synchronization

/// The `MessageSink` every channel feeds: identity → filters → tags/lane → journal →
/// (per-device order) → router. A sender's acknowledgement waits for the journal commit.
/// Counts each message's outcome in the ledger exactly once.
final class Pipeline: MessageSink {
    private let current: NIOLockedValueBox<PipelineSnapshot>
    let ledger: MessageLedger
    let journal: Journal?
    let dispatcher: OrderedDispatcher
    let maxBacklogBytes: Int
    /// With the journal off: what the accepted messages not yet delivered hold in memory (see
    /// `memoryCost`), bounded by `maxBacklogBytes` as the journal's backlog is.
    private let memoryBacklog = Atomic<Int>(0)
    /// Channels with their own subscribers (MQTT): a message no route takes goes only to them
    /// (outcome `broker_only`, not journaled) instead of the dead letters.
    let brokerOnlyChannels: Set<String>

    init(
        snapshot: PipelineSnapshot,
        ledger: MessageLedger,
        journal: Journal?,
        dispatcher: OrderedDispatcher,
        maxBacklogBytes: Int,
        brokerOnlyChannels: Set<String> = []
    ) {
        self.brokerOnlyChannels = brokerOnlyChannels
        current = NIOLockedValueBox(snapshot)
        self.ledger = ledger
        self.journal = journal
        self.dispatcher = dispatcher
        self.maxBacklogBytes = maxBacklogBytes
    }

    var snapshot: PipelineSnapshot { current.withLockedValue { $0 } }

    /// Bytes the accepted messages waiting for delivery hold in memory (journal off; 0 with it on).
    var memoryBacklogBytes: Int { memoryBacklog.load(ordering: .relaxed) }

    /// What a message waiting in memory is counted as: its payload and topic, and 1.25 KiB for
    /// what holds it (its envelope, its place in its device's queue, its delivery's state):
    /// the node's memory grew by ~1.2 KiB per waiting message with 14-byte payloads (README).
    static func memoryCost(_ envelope: Envelope) -> Int {
        envelope.payload.readableBytes + envelope.topic.utf8.count + 1280
    }

    func swap(_ snapshot: PipelineSnapshot) {
        current.withLockedValue { $0 = snapshot }
    }

    func submit(_ envelope: consuming Envelope, on loop: any EventLoop) -> EventLoopFuture<SubmitResult> {
        switch submitting(envelope, on: loop) {
        case .now(let result): loop.makeSucceededFuture(result)
        case .later(let future): future
        }
    }

    func submitting(_ envelope: consuming Envelope, on loop: any EventLoop) -> Submission {
        let snapshot = self.snapshot
        var envelope = envelope
        if let refused = admit(&envelope, snapshot: snapshot) { return .now(refused) }
        let router = snapshot.router
        if goesToSubscribersOnly(channel: envelope.channel, topic: envelope.topic, router: router) {
            ledger.receivedBrokerOnly(channel: envelope.channel)
            return .now(.accepted)
        }
        if envelope.trace.isPending { envelope.trace = .generate(baggage: envelope.trace.baggage) }  // going further: it needs one
        guard let journal else {
            if let rejection = backpressure(memoryBacklogBytes, inMemory: true) {
                ledger.receivedAndRejected(channel: envelope.channel, reason: rejection.reason)
                return .now(.rejected(rejection))
            }
            ledger.receivedAndAccepted(channel: envelope.channel)
            deliver(envelope, sequence: nil, router: router)
            return .now(.accepted)
        }
        if let rejection = backpressure(journal.backlogBytes, inMemory: false) {
            ledger.receivedAndRejected(channel: envelope.channel, reason: rejection.reason)
            return .now(.rejected(rejection))
        }
        ledger.receivedAndAccepted(channel: envelope.channel)
        let accepted = envelope
        // One promise and one callback (not a map and a recover: two futures per message).
        let answer = loop.makePromise(of: SubmitResult.self)
        journal.append(envelope, on: loop).whenComplete { result in
            switch result {
            case .success(let sequence):
                self.deliver(accepted, sequence: sequence, router: router)
                answer.succeed(.accepted)
            case .failure(let error):
                self.ledger.acceptedThenRejected(channel: accepted.channel, reason: "journal_unavailable")
                answer.succeed(.rejected(Pipeline.journalUnavailable(error)))
            }
        }
        return .later(answer.futureResult)
    }

    /// Without an envelope: a message of a broker-only channel that no route takes, when no
    /// filter is configured and the sender's identity agrees with the topic (what `admit` would
    /// check), ends as `broker_only` whatever its envelope would say (tags and lane matter only
    /// to delivery).
    func takesBrokerOnly(channel: String, topic: String, product: String?, device: String?) -> Bool {
        let snapshot = self.snapshot
        guard snapshot.controller.refusesNothing, goesToSubscribersOnly(channel: channel, topic: topic, router: snapshot.router) else {
            return false
        }
        if product != nil || device != nil {  // a conflict with the topic is refused by the full path
            let fromTopic = snapshot.controller.identify(topic: topic)
            guard Pipeline.conflict("device", header: device, topic: fromTopic.device) == nil,
                Pipeline.conflict("product", header: product, topic: fromTopic.product) == nil
            else { return false }
        }
        ledger.receivedBrokerOnly(channel: channel)
        return true
    }

    /// A message of a channel with its own subscribers that no route takes.
    private func goesToSubscribersOnly(channel: String, topic: String, router: Router) -> Bool {
        !brokerOnlyChannels.isEmpty && brokerOnlyChannels.contains(channel) && !router.routes(topic)
    }

    /// Each envelope is admitted on its own; the accepted ones are journaled as one group and
    /// acknowledged together (or, when the journal cannot take them, refused together).
    func submit(batch: consuming [Envelope], on loop: any EventLoop) -> EventLoopFuture<[SubmitResult]> {
        let snapshot = self.snapshot
        // Each envelope is taken out of the batch (the only reference to it), so admitting it
        // (identity, tags, lane) changes it in place instead of copying it.
        var remaining = batch
        remaining.reverse()
        var results = [SubmitResult](repeating: .accepted, count: remaining.count)
        var accepted: [(index: Int, envelope: Envelope)] = []
        accepted.reserveCapacity(remaining.count)
        var index = 0
        while var envelope = remaining.popLast() {
            if let refused = admit(&envelope, snapshot: snapshot) {
                results[index] = refused
            } else {
                accepted.append((index, envelope))
            }
            index += 1
        }
        let router = snapshot.router
        guard !accepted.isEmpty else { return loop.makeSucceededFuture(results) }
        let backlog = journal?.backlogBytes ?? memoryBacklogBytes
        if let rejection = backpressure(backlog, inMemory: journal == nil) {
            for (index, envelope) in accepted {
                ledger.receivedAndRejected(channel: envelope.channel, reason: rejection.reason)
                results[index] = .rejected(rejection)
            }
            return loop.makeSucceededFuture(results)
        }
        guard let journal else {
            for (_, envelope) in accepted {
                ledger.receivedAndAccepted(channel: envelope.channel)
                deliver(envelope, sequence: nil, router: router)
            }
            return loop.makeSucceededFuture(results)
        }
        for (_, envelope) in accepted { ledger.receivedAndAccepted(channel: envelope.channel) }
        let taken = accepted
        let admitted = results
        return journal.append(contentsOf: taken.map(\.envelope), on: loop).map { sequences in
            for (item, sequence) in zip(taken, sequences) { self.deliver(item.envelope, sequence: sequence, router: router) }
            return admitted
        }.recover { error in
            var results = admitted
            for (index, envelope) in taken {
                self.ledger.acceptedThenRejected(channel: envelope.channel, reason: "journal_unavailable")
                results[index] = .rejected(Pipeline.journalUnavailable(error))
            }
            return results
        }
    }

    /// Identity, filters, tags and lane; the answer when the message goes no further (counted).
    private func admit(_ envelope: inout Envelope, snapshot: PipelineSnapshot) -> SubmitResult? {
        if let rejection = Pipeline.identify(&envelope, controller: snapshot.controller) {
            ledger.receivedAndRejected(channel: envelope.channel, reason: rejection.reason)
            return .rejected(rejection)
        }
        switch snapshot.controller.admit(&envelope) {
        case .rejected(let rejection):
            ledger.receivedAndRejected(channel: envelope.channel, reason: rejection.reason)
            return .rejected(rejection)
        case .duplicate:
            ledger.receivedAndRejected(channel: envelope.channel, reason: "duplicate")
            return .duplicate
        case .accepted:
            return nil
        }
    }

    /// 503 while the messages waiting for delivery (in the journal, or in memory with it
    /// off) are past `journal.max_bytes`.
    private func backpressure(_ backlog: Int, inMemory: Bool) -> Rejection? {
        guard backlog > maxBacklogBytes else { return nil }
        let held = inMemory ? "bytes of messages wait for delivery in memory (the journal is off)" : "bytes wait for delivery"
        return Rejection(
            filter: "journal",
            reason: "backpressure",
            status: 503,
            message: "\(backlog) \(held); the limit is journal.max_bytes, \(maxBacklogBytes); retry later",
            retryAfterSeconds: 1
        )
    }

    private static func journalUnavailable(_ error: any Error) -> Rejection {
        Rejection(
            filter: "journal",
            reason: "journal_unavailable",
            status: 503,
            message: "the message could not be stored: \(error)",
            retryAfterSeconds: 5
        )
    }

    /// Hands an accepted (journaled) message to delivery, behind its device's earlier ones;
    /// settles it in the journal once its outcome is final.
    /// `priorAttempts`: attempts it may have had before (the journal's count after a restart,
    /// the dead letter's on replay); attempt numbers go on from there. With the journal off,
    /// the message counts in the in-memory backlog until its delivery ends.
    func deliver(_ envelope: Envelope, sequence: UInt64?, router: Router, priorAttempts: Int = 0) {
        let journal = self.journal
        let memoryCost = journal == nil ? Self.memoryCost(envelope) : 0
        if memoryCost > 0 { memoryBacklog.add(memoryCost, ordering: .relaxed) }
        var attempts = Router.Attempts(first: priorAttempts + 1)
        if let journal, let sequence {
            attempts.recorder = journal
            attempts.sequence = sequence
            // A recovered or replayed message: a stop before its next retry must not reuse this number.
            if priorAttempts > 0 { journal.recordAttempt(sequence, attempt: attempts.first) }
        }
        dispatcher.dispatch(envelope) { [attempts] envelope, loop, done in
            router.route(envelope, attempts: attempts, on: loop) { outcome in
                // Cut off by shutdown: no outcome yet; the journal redelivers it at the next start.
                if !outcome.isInterrupted, let sequence { journal?.settle(sequence) }
                if memoryCost > 0 { self.memoryBacklog.subtract(memoryCost, ordering: .relaxed) }
                done()
            }
        }
    }

    /// Fills product and device from the topic patterns; a header that contradicts the topic is an error.
    static func identify(_ envelope: inout Envelope, controller: Controller) -> Rejection? {
        let (product, device) = controller.identify(topic: envelope.topic)
        if let conflict = conflict("device", header: envelope.device, topic: device) { return conflict }
        if let conflict = conflict("product", header: envelope.product, topic: product) { return conflict }
        if let device { envelope.device = device }
        if let product { envelope.product = product }
        return nil
    }

    private static func conflict(_ what: String, header: String?, topic: String?) -> Rejection? {
        guard let header, let topic, header != topic else { return nil }
        return Rejection(
            filter: "identity",
            reason: "identity_conflict",
            status: 400,
            message: "\(what) \"\(header)\" from the header contradicts \(what) \"\(topic)\" in the topic"
        )
    }
}

/// The journal records each retry's number, so attempts go on from there after a restart.
extension Journal: Router.AttemptRecorder {}
