import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import SwitchyardCore

/// A `Forwarder` that answers from a script instead of the network, recording every call.
public final class InMemoryForwarder: Forwarder {
    public struct Call: Sendable {
        public var request: ForwardRequest
        public var instance: ServiceInstance
        public func header(_ name: String) -> String? { request.headers.first { $0.name == name }?.value }
    }

    /// Decides the outcome of each call: a status, or a `ForwardError`.
    public typealias Script = @Sendable (Call, Int) -> Result<Int, ForwardError>

    private let loop: any EventLoop
    private let calls = NIOLockedValueBox([Call]())
    private let script: Script
    /// How long each answer takes (0: the future is complete when `forward` returns).
    private let delay: TimeAmount

    public init(
        loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next(),
        delay: TimeAmount = .zero,
        script: @escaping Script = { _, _ in .success(200) }
    ) {
        self.loop = loop
        self.delay = delay
        self.script = script
    }

    public func anyEventLoop() -> any EventLoop { loop }

    public func forward(
        _ request: ForwardRequest,
        to instance: ServiceInstance,
        timeout: TimeAmount,
        on loop: any EventLoop
    ) -> EventLoopFuture<ForwardResponse> {
        let call = Call(request: request, instance: instance)
        let index = calls.withLockedValue {
            $0.append(call)
            return $0.count
        }
        let result = script(call, index).map { ForwardResponse(status: $0, bodySnippet: "scripted") }
        guard delay > .zero else { return loop.makeCompletedFuture(result.mapError { $0 as any Error }) }
        return loop.scheduleTask(in: delay) { try result.get() }.futureResult
    }

    public var recorded: [Call] { calls.withLockedValue { $0 } }
}
