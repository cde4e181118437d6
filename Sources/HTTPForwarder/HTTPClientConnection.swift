import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchyardCore

/// One keep-alive HTTP/1.1 connection to an instance; runs one request at a time.
final class HTTPClientConnection: Sendable {
    let channel: any Channel
    private let handler: NIOLoopBound<ResponseHandler>

    private init(channel: any Channel, handler: ResponseHandler) {
        self.channel = channel
        self.handler = NIOLoopBound(handler, eventLoop: channel.eventLoop)
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
                return HTTPClientConnection(channel: channel, handler: handler)
            }
    }

    var isActive: Bool { channel.isActive }

    /// Sends the request; the future carries the response and whether the connection can be reused.
    func execute(_ request: ForwardRequest, host: String, timeout: TimeAmount) -> EventLoopFuture<(ForwardResponse, Bool)> {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: (ForwardResponse, Bool).self)
        loop.execute { [handler, channel] in
            handler.value.start(promise: promise, channel: channel, timeout: timeout)
            var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: request.method), uri: request.path)
            head.headers.reserveCapacity(request.headers.count + 3)
            head.headers.add(name: "host", value: host)
            head.headers.add(name: "content-length", value: String(request.body.readableBytes))
            for (name, value) in request.headers { head.headers.add(name: name, value: value) }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if request.body.readableBytes > 0 {
                channel.write(HTTPClientRequestPart.body(.byteBuffer(request.body)), promise: nil)
            }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil)).whenFailure { error in
                handler.value.fail(ForwardError(.connectionFailed, "write failed: \(error)"), channel: channel)
            }
        }
        return promise.futureResult
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Collects one response at a time and completes the current request's promise.
final class ResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var promise: EventLoopPromise<(ForwardResponse, Bool)>?
    private var status = 0
    private var keepAlive = true
    private var snippet = ""
    private var timeoutTask: Scheduled<Void>?

    func start(promise: EventLoopPromise<(ForwardResponse, Bool)>, channel: any Channel, timeout: TimeAmount) {
        self.promise = promise
        status = 0
        keepAlive = true
        snippet = ""
        timeoutTask = channel.eventLoop.scheduleTask(in: timeout) { [weak self] in
            self?.fail(ForwardError(.timeout, "no complete response within \(timeout.seconds)"), channel: channel)
        }
        if !channel.isActive {
            fail(ForwardError(.connectionFailed, "connection closed before the request was sent"), channel: channel)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            keepAlive = head.isKeepAlive
        case .body(var buffer):
            if snippet.utf8.count < 256, let text = buffer.readString(length: min(buffer.readableBytes, 256 - snippet.utf8.count)) {
                snippet += text
            }
        case .end:
            timeoutTask?.cancel()
            timeoutTask = nil
            let response = ForwardResponse(status: status, bodySnippet: snippet)
            let reusable = keepAlive
            let p = promise
            promise = nil
            if !reusable { context.close(promise: nil) }
            p?.succeed((response, reusable))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(ForwardError(.connectionFailed, "connection closed by the instance before a complete response"), channel: context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(ForwardError(.connectionFailed, "\(error)"), channel: context.channel)
    }

    func fail(_ error: ForwardError, channel: any Channel) {
        timeoutTask?.cancel()
        timeoutTask = nil
        guard let p = promise else { return }
        promise = nil
        channel.close(promise: nil)
        p.fail(error)
    }
}

extension TimeAmount {
    var seconds: String {
        let s = Double(nanoseconds) / 1e9
        return s == s.rounded() ? "\(Int(s))s" : "\(s)s"
    }
}
