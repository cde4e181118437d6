import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchyardCore

/// What one exchange on a connection produced.
struct Exchange {
    var response: ForwardResponse
    /// The instance allows another request on this connection.
    var reusable: Bool
}

/// One keep-alive HTTP/1.1 connection to an instance; one request at a time. Confined
/// to its event loop, like the pool that owns it.
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
                    // Header values are made visible ASCII by the router; skip NIO's per-byte re-check.
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
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
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: request.method), uri: request.path)
        head.headers.reserveCapacity(request.headers.count + 2)
        head.headers.add(name: "host", value: host)
        head.headers.add(name: "content-length", value: String(request.body.readableBytes))
        for (name, value) in request.headers { head.headers.add(name: name, value: value) }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if request.body.readableBytes > 0 {
            channel.write(HTTPClientRequestPart.body(.byteBuffer(request.body)), promise: nil)
        }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    /// Fails the request in progress when its deadline has passed (called by the loop's sweeper).
    func expireIfOverdue(now: NIODeadline) {
        handler.expireIfOverdue(now: now, channel: channel)
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Collects one response at a time and reports it to the current request's callback.
final class ResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var done: ((Result<Exchange, ForwardError>) -> Void)?
    private var deadline = NIODeadline.distantFuture
    private var started = NIODeadline.now()
    private var status = 0
    private var keepAlive = true
    private var snippet = ""

    func start(deadline: NIODeadline, done: @escaping (Result<Exchange, ForwardError>) -> Void) {
        self.done = done
        self.deadline = deadline
        started = .now()
        status = 0
        keepAlive = true
        snippet = ""
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            keepAlive = head.isKeepAlive
        case .body(var buffer):
            if status >= 300, snippet.utf8.count < 256,
                let text = buffer.readString(length: min(buffer.readableBytes, 256 - snippet.utf8.count))
            {
                snippet += text
            }
        case .end:
            guard let done else { return }
            self.done = nil
            if !keepAlive { context.close(promise: nil) }
            done(.success(Exchange(response: ForwardResponse(status: status, bodySnippet: snippet), reusable: keepAlive)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(ForwardError(.connectionFailed, "connection closed by the instance before a complete response"), channel: context.channel)
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
        guard let done else { return }
        self.done = nil
        channel.close(promise: nil)
        done(.failure(error))
    }
}
