import Controller
import NIOConcurrencyHelpers
import NIOCore
import Router
import SwitchyardCore

/// The `MessageSink` every channel feeds: identity → filters → tags/lane → router.
/// Counts each message's outcome in the ledger exactly once.
final class Pipeline: MessageSink {
    private let current: NIOLockedValueBox<PipelineSnapshot>
    let ledger: MessageLedger

    init(snapshot: PipelineSnapshot, ledger: MessageLedger) {
        current = NIOLockedValueBox(snapshot)
        self.ledger = ledger
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
            ledger.receivedAndAccepted(channel: envelope.channel)
            snapshot.router.route(envelope, on: loop)
            return loop.makeSucceededFuture(.accepted)
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
            filter: "identity", reason: "identity_conflict", status: 400,
            message: "\(what) \"\(header)\" from the header contradicts \(what) \"\(topic)\" in the topic"
        )
    }
}
