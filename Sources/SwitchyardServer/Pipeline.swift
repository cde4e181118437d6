import Controller
import Journal
import NIOConcurrencyHelpers
import NIOCore
import Router
import SwitchyardCore

/// The `MessageSink` every channel feeds: identity → filters → tags/lane → journal →
/// (per-device order) → router. A sender's acknowledgement waits for the journal commit.
/// Counts each message's outcome in the ledger exactly once.
final class Pipeline: MessageSink {
    private let current: NIOLockedValueBox<PipelineSnapshot>
    let ledger: MessageLedger
    let journal: Journal?
    let dispatcher: OrderedDispatcher
    let maxBacklogBytes: Int

    init(snapshot: PipelineSnapshot, ledger: MessageLedger, journal: Journal?, dispatcher: OrderedDispatcher, maxBacklogBytes: Int) {
        current = NIOLockedValueBox(snapshot)
        self.ledger = ledger
        self.journal = journal
        self.dispatcher = dispatcher
        self.maxBacklogBytes = maxBacklogBytes
    }

    var snapshot: PipelineSnapshot { current.withLockedValue { $0 } }

    func swap(_ snapshot: PipelineSnapshot) {
        current.withLockedValue { $0 = snapshot }
    }

    func submit(_ envelope: Envelope, on loop: any EventLoop) -> EventLoopFuture<SubmitResult> {
        let snapshot = self.snapshot
        var envelope = envelope
        if let rejection = Pipeline.identify(&envelope, controller: snapshot.controller) {
            ledger.receivedAndRejected(channel: envelope.channel, reason: rejection.reason)
            return loop.makeSucceededFuture(.rejected(rejection))
        }
        switch snapshot.controller.admit(&envelope) {
        case .rejected(let rejection):
            ledger.receivedAndRejected(channel: envelope.channel, reason: rejection.reason)
            return loop.makeSucceededFuture(.rejected(rejection))
        case .duplicate:
            ledger.receivedAndRejected(channel: envelope.channel, reason: "duplicate")
            return loop.makeSucceededFuture(.duplicate)
        case .accepted:
            let router = snapshot.router
            guard let journal else {
                ledger.receivedAndAccepted(channel: envelope.channel)
                deliver(envelope, sequence: nil, router: router)
                return loop.makeSucceededFuture(.accepted)
            }
            let backlog = journal.backlogBytes
            if backlog > maxBacklogBytes {
                ledger.receivedAndRejected(channel: envelope.channel, reason: "backpressure")
                return loop.makeSucceededFuture(
                    .rejected(
                        Rejection(
                            filter: "journal",
                            reason: "backpressure",
                            status: 503,
                            message: "\(backlog) bytes wait for delivery (journal.max_bytes \(maxBacklogBytes)); retry later",
                            retryAfterSeconds: 1
                        )
                    )
                )
            }
            ledger.receivedAndAccepted(channel: envelope.channel)
            let accepted = envelope
            return journal.append(envelope, on: loop).map { sequence in
                self.deliver(accepted, sequence: sequence, router: router)
                return SubmitResult.accepted
            }.recover { error in
                self.ledger.acceptedThenRejected(channel: accepted.channel, reason: "journal_unavailable")
                return .rejected(
                    Rejection(
                        filter: "journal",
                        reason: "journal_unavailable",
                        status: 503,
                        message: "the message could not be stored: \(error)",
                        retryAfterSeconds: 5
                    )
                )
            }
        }
    }

    /// Hands an accepted (journaled) message to delivery, behind its device's earlier ones;
    /// settles it in the journal once its outcome is final.
    /// `priorAttempts`: attempts it may have had before (the journal's count after a restart,
    /// the dead letter's on replay); attempt numbers go on from there.
    func deliver(_ envelope: Envelope, sequence: UInt64?, router: Router, priorAttempts: Int = 0) {
        let journal = self.journal
        var attempts = Router.Attempts(first: priorAttempts + 1)
        if let journal, let sequence {
            attempts.retrying = { journal.recordAttempt(sequence, attempt: $0) }
            // A recovered or replayed message: a stop before its next retry must not reuse this number.
            if priorAttempts > 0 { journal.recordAttempt(sequence, attempt: attempts.first) }
        }
        dispatcher.dispatch(envelope) { [attempts] envelope, loop in
            router.route(envelope, attempts: attempts, on: loop).map { outcome in
                // Cut off by shutdown: no outcome yet; the journal redelivers it at the next start.
                if case .interrupted = outcome { return }
                if let sequence { journal?.settle(sequence) }
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
