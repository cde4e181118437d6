import NIOCore
import NIOPosix
import SwitchyardCore

/// What one exchange on a connection produced.
struct Exchange {
    var response: ForwardResponse
    /// The instance allows another request on this connection.
    var reusable: Bool
}

/// One keep-alive HTTP/1.1 connection to an instance; one request at a time. Confined
/// to its event loop, like the pool that owns it. Requests are written as one buffer and
/// responses parsed by `HTTP1ResponseParser`, with no per-part pipeline traffic.
final class HTTPClientConnection {
    let channel: any Channel
    private let handler: ResponseHandler

    private init(channel: any Channel, handler: ResponseHandler) {
        self.channel = channel
        self.handler = handler
    }

    static func connect(to instance: ServiceInstance, on loop: any EventLoop, timeout: TimeAmount) -> EventLoopFuture<HTTPClientConnection> {
        ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ResponseHandler())
                }
            }
            .connect(host: instance.host, port: instance.port)
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: ResponseHandler.self)
                return NIOLoopBound(HTTPClientConnection(channel: channel, handler: handler), eventLoop: loop)
            }
            .map { $0.value }
    }

    var isActive: Bool { channel.isActive }
    var id: ObjectIdentifier { ObjectIdentifier(self) }

    /// Sends the request; `done` is called once, on the loop, with the exchange or a `ForwardError`.
    func execute(
        _ request: ForwardRequest,
        host: String,
        deadline: NIODeadline,
        done: @escaping (Result<Exchange, ForwardError>) -> Void
    ) {
        handler.start(deadline: deadline, done: done)
        guard channel.isActive else {
            handler.fail(ForwardError(.connectionFailed, "connection closed before the request was sent"), channel: channel)
            return
        }
        let copyBody = request.body.readableBytes <= HTTP1RequestEncoder.copiedBodyLimit
        var buffer = channel.allocator.buffer(capacity: HTTP1RequestEncoder.size(of: request, host: host, withBody: copyBody))
        if let error = HTTP1RequestEncoder.encode(request, host: host, withBody: copyBody, into: &buffer) {
            handler.fail(error, channel: channel)
            return
        }
        if copyBody {
            channel.writeAndFlush(buffer, promise: nil)
        } else {
            channel.write(buffer, promise: nil)
            channel.writeAndFlush(request.body, promise: nil)
        }
    }

    /// Fails the request in progress when its deadline has passed (called by the loop's sweeper).
    func expireIfOverdue(now: NIODeadline) {
        handler.expireIfOverdue(now: now, channel: channel)
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Parses responses and reports each to the current request's callback.
final class ResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private var parser = HTTP1ResponseParser()
    /// Responses this connection has carried.
    private var answered = 0
    private var done: ((Result<Exchange, ForwardError>) -> Void)?
    private var deadline = NIODeadline.distantFuture
    private var started = NIODeadline.now()

    func start(deadline: NIODeadline, done: @escaping (Result<Exchange, ForwardError>) -> Void) {
        self.done = done
        self.deadline = deadline
        started = .now()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        for event in parser.feed(&buffer) {
            switch event {
            case .response(let r):
                guard let done else {
                    fail(ForwardError(.connectionFailed, "response without a request"), channel: context.channel)
                    return
                }
                self.done = nil
                if !r.keepAlive { context.close(promise: nil) }
                let closing = r.closeHeader && answered > 0
                answered += 1
                let response = ForwardResponse(status: r.status, bodySnippet: r.snippet, draining: r.draining, closing: closing)
                done(.success(Exchange(response: response, reusable: r.keepAlive)))
            case .error(let message):
                fail(ForwardError(.connectionFailed, message), channel: context.channel)
                return
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch parser.connectionClosed() {
        case .response(let r)?:
            if let done {
                self.done = nil
                done(.success(Exchange(response: ForwardResponse(status: r.status, bodySnippet: r.snippet, draining: r.draining), reusable: false)))
            }
        case .error(let message)?:
            fail(ForwardError(.connectionFailed, message), channel: context.channel)
        case nil:
            fail(ForwardError(.connectionFailed, "connection closed by the instance before a complete response"), channel: context.channel)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(ForwardError(.connectionFailed, "\(error)"), channel: context.channel)
    }

    func expireIfOverdue(now: NIODeadline, channel: any Channel) {
        guard done != nil, now >= deadline else { return }
        let waitedMillis = (now - started).nanoseconds / 1_000_000
        fail(ForwardError(.timeout, "no complete response within \(waitedMillis) ms"), channel: channel)
    }

    func fail(_ error: ForwardError, channel: any Channel) {
        guard let done else {
            channel.close(promise: nil)
            return
        }
        self.done = nil
        channel.close(promise: nil)
        done(.failure(error))
    }
}
