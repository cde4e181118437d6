import NIOConcurrencyHelpers
public import NIOCore
public import NIOHTTP1
import NIOPosix

/// A real HTTP/1.1 service on loopback that records requests and answers with a
/// configurable status (default 200). Stands in for a microservice in integration tests.
public final class TestHTTPService: Sendable {
    public struct Received: Sendable {
        public var method: String
        public var uri: String
        public var headers: HTTPHeaders
        public var body: String
        public func header(_ name: String) -> String? { headers.first(name: name) }
    }

    public let channel: any Channel
    private let state: NIOLockedValueBox<(received: [Received], status: Int)>

    public var port: Int { channel.localAddress!.port! }
    public var url: String { "http://127.0.0.1:\(port)" }

    private init(channel: any Channel, state: NIOLockedValueBox<(received: [Received], status: Int)>) {
        self.channel = channel
        self.state = state
    }

    public static func start(status: Int = 200, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> TestHTTPService {
        let state = NIOLockedValueBox<(received: [Received], status: Int)>(([], status))
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(RecordingHandler(state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return TestHTTPService(channel: channel, state: state)
    }

    public var received: [Received] { state.withLockedValue { $0.received } }
    public func setStatus(_ status: Int) { state.withLockedValue { $0.status = status } }

    /// Waits until `count` requests arrived (or the timeout passed) and returns what arrived.
    public func waitFor(count: Int, timeoutSeconds: Double = 10) async -> [Received] {
        let deadline = NIODeadline.now() + .nanoseconds(Int64(timeoutSeconds * 1e9))
        while received.count < count && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        return received
    }

    public func stop() async {
        try? await channel.close()
    }
}

final class RecordingHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let state: NIOLockedValueBox<(received: [TestHTTPService.Received], status: Int)>
    var head: HTTPRequestHead?
    var body = ""

    init(state: NIOLockedValueBox<(received: [TestHTTPService.Received], status: Int)>) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = ""
        case .body(var b):
            body += b.readString(length: b.readableBytes) ?? ""
        case .end:
            guard let head else { return }
            let status = state.withLockedValue {
                $0.received.append(.init(method: head.method.rawValue, uri: head.uri, headers: head.headers, body: body))
                return $0.status
            }
            let reply = ByteBuffer(string: "status \(status)")
            var headers = HTTPHeaders()
            headers.add(name: "content-length", value: String(reply.readableBytes))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(reply))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
