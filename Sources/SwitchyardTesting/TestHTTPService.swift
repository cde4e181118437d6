import NIOConcurrencyHelpers
public import NIOCore
public import NIOHTTP1
import NIOPosix

/// A real HTTP/1.1 service on loopback that records requests and answers with a
/// configurable status (default 200) after an optional delay. Stands in for a
/// microservice in integration tests.
public final class TestHTTPService: Sendable {
    public struct Received: Sendable {
        public var method: String
        public var uri: String
        public var headers: HTTPHeaders
        public var body: String
        public func header(_ name: String) -> String? { headers.first(name: name) }
    }

    struct State {
        var received: [Received] = []
        var status: Int
        var delayNanos: Int64 = 0
        var connections = 0
        var concurrent = 0
        var maxConcurrent = 0
        /// Every n-th response of a connection says `Connection: close` and closes it (0: never).
        var closeEvery = 0
        /// Run before answering (a service calling the next hop of a chain).
        var onward: (@Sendable (Received) async -> Void)?
    }

    public let channel: any Channel
    private let state: NIOLockedValueBox<State>
    private let children: NIOLockedValueBox<[ObjectIdentifier: any Channel]>

    public var port: Int { channel.localAddress!.port! }
    public var url: String { "http://127.0.0.1:\(port)" }

    private init(channel: any Channel, state: NIOLockedValueBox<State>, children: NIOLockedValueBox<[ObjectIdentifier: any Channel]>) {
        self.channel = channel
        self.state = state
        self.children = children
    }

    /// Starts on a free port below the kernel's ephemeral range (10000–19999): a test that stops
    /// the service and brings it back on the same port cannot have another test's port-0 listener
    /// take it meanwhile.
    public static func startRestartable(status: Int = 200) async throws -> TestHTTPService {
        var lastError: (any Error)?
        for _ in 0..<50 {
            do { return try await start(status: status, port: Int.random(in: 10_000...19_999)) } catch { lastError = error }
        }
        throw lastError!
    }

    /// Starts on `port` (0: any free port; a given port is how a test brings a stopped service back).
    public static func start(
        status: Int = 200,
        port: Int = 0,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> TestHTTPService {
        let state = NIOLockedValueBox(State(status: status))
        let children = NIOLockedValueBox([ObjectIdentifier: any Channel]())
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                state.withLockedValue { $0.connections += 1 }
                let id = ObjectIdentifier(channel)
                children.withLockedValue { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in children.withLockedValue { _ = $0.removeValue(forKey: id) } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(RecordingHandler(state: state))
                }
            }
            .bind(host: "127.0.0.1", port: port)
            .get()
        return TestHTTPService(channel: channel, state: state, children: children)
    }

    public var received: [Received] { state.withLockedValue { $0.received } }
    public func setStatus(_ status: Int) { state.withLockedValue { $0.status = status } }
    public func setDelay(seconds: Double) { state.withLockedValue { $0.delayNanos = Int64(seconds * 1e9) } }
    /// Before each answer, `hook` runs with the request (e.g. calls the next service of a chain).
    public func setOnward(_ hook: (@Sendable (Received) async -> Void)?) { state.withLockedValue { $0.onward = hook } }
    /// Every `n`-th response of a connection carries `Connection: close` and the connection is
    /// closed after it (1: every response, as a server shutting down answers; 100: a server
    /// that limits requests per connection; 0: never).
    public func setCloseEvery(_ n: Int) { state.withLockedValue { $0.closeEvery = n } }
    /// Connections accepted so far.
    public var connectionsAccepted: Int { state.withLockedValue { $0.connections } }
    /// The most requests it was answering at the same time.
    public var maxConcurrent: Int { state.withLockedValue { $0.maxConcurrent } }

    /// Waits until `count` requests arrived (or the timeout passed) and returns what arrived.
    public func waitFor(count: Int, timeoutSeconds: Double = 10) async -> [Received] {
        let deadline = NIODeadline.now() + .nanoseconds(Int64(timeoutSeconds * 1e9))
        while received.count < count && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        return received
    }

    /// Stops listening; with `closingConnections`, open connections are cut too (a process
    /// that exits), else they keep being served.
    public func stop(closingConnections: Bool = false) async {
        try? await channel.close()
        if closingConnections {
            for child in children.withLockedValue({ Array($0.values) }) { try? await child.close() }
        }
    }
}

final class RecordingHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let state: NIOLockedValueBox<TestHTTPService.State>
    var head: HTTPRequestHead?
    var body = ""
    /// Responses sent on this connection.
    var answered = 0

    init(state: NIOLockedValueBox<TestHTTPService.State>) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = ""
        case .body(var b):
            body += b.readString(length: b.readableBytes) ?? ""
        case .end:
            guard let head else { return }
            let request = TestHTTPService.Received(method: head.method.rawValue, uri: head.uri, headers: head.headers, body: body)
            let (status, delay, onward, closeEvery) = state.withLockedValue {
                $0.received.append(request)
                $0.concurrent += 1
                $0.maxConcurrent = max($0.maxConcurrent, $0.concurrent)
                return ($0.status, $0.delayNanos, $0.onward, $0.closeEvery)
            }
            answered += 1
            let close = closeEvery > 0 && answered % closeEvery == 0
            let reply = { [state] in
                state.withLockedValue { $0.concurrent -= 1 }
                let body = ByteBuffer(string: "status \(status)")
                var headers = HTTPHeaders()
                headers.add(name: "content-length", value: String(body.readableBytes))
                if close { headers.add(name: "connection", value: "close") }
                context.write(
                    NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers))),
                    promise: nil
                )
                context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil)
                let sent = context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
                if close { sent.whenComplete { _ in context.close(promise: nil) } }
            }
            if let onward {
                let bound = NIOLoopBound(reply, eventLoop: context.eventLoop)
                let loop = context.eventLoop
                Task {
                    await onward(request)
                    loop.execute { bound.value() }
                }
            } else if delay > 0 {
                context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay)) { reply() }
            } else {
                reply()
            }
        }
    }
}
