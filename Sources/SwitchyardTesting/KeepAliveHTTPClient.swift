import NIOConcurrencyHelpers
public import NIOCore
public import NIOHTTP1
import NIOPosix

/// A keep-alive HTTP/1.1 client for load in tests: one connection, one request at a time,
/// reconnecting after any failure. Use one per simulated sender.
public final class KeepAliveHTTPClient: @unchecked Sendable {
    // @unchecked: used by one task at a time (a simulated sender), never concurrently.
    let host: String
    let port: Int
    let group: any EventLoopGroup
    private var channel: (any Channel)?
    private var handler: NIOLoopBound<ClientResponseHandler>?

    public init(host: String = "127.0.0.1", port: Int, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.host = host
        self.port = port
        self.group = group
    }

    /// Sends one request; returns the status, or throws when the connection fails (it is then dropped).
    public func post(_ path: String, headers: [(String, String)] = [], body: String, timeoutSeconds: Int64 = 10) async throws -> Int {
        try await request(.POST, path, headers: headers, body: body, timeoutSeconds: timeoutSeconds)
    }

    /// Sends one request; returns the status, or throws when the connection fails (it is then dropped).
    public func request(
        _ method: HTTPMethod,
        _ path: String,
        headers: [(String, String)] = [],
        body: String = "",
        timeoutSeconds: Int64 = 10
    ) async throws -> Int {
        if channel == nil || channel?.isActive != true {
            try await connect()
        }
        guard let channel, let handler else { throw TestClientError(message: "not connected") }
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: Int.self)
        loop.execute {
            // Closed since the check above (a server shutting down): its close was reported to
            // no request, so this one fails now rather than waiting for its timeout.
            guard channel.isActive else { return promise.fail(TestClientError(message: "connection closed")) }
            handler.value.pending = promise
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
            head.headers.add(name: "host", value: self.host)
            head.headers.add(name: "content-length", value: String(body.utf8.count))
            for (n, v) in headers { head.headers.add(name: n, value: v) }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        let timeout = loop.scheduleTask(in: .seconds(timeoutSeconds)) {
            promise.fail(TestClientError(message: "no response within \(timeoutSeconds) s"))
            channel.close(promise: nil)
        }
        defer { timeout.cancel() }
        do {
            return try await promise.futureResult.get()
        } catch {
            try? await channel.close()
            self.channel = nil
            throw error
        }
    }

    private func connect() async throws {
        let loop = group.next()
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(2))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ClientResponseHandler())
                }
            }
            .connect(host: host, port: port).get()
        handler = try await loop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ClientResponseHandler.self), eventLoop: loop)
        }.get()
        self.channel = channel
    }

    public func close() async {
        try? await channel?.close()
        channel = nil
    }
}

final class ClientResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    var pending: EventLoopPromise<Int>?
    var status = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): status = Int(h.status.code)
        case .body: break
        case .end:
            let p = pending
            pending = nil
            p?.succeed(status)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        pending?.fail(TestClientError(message: "connection closed"))
        pending = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        pending?.fail(error)
        pending = nil
        context.close(promise: nil)
    }
}
