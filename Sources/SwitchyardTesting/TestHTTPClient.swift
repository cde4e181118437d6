import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A deliberately simple HTTP/1.1 client for tests: one connection per request
/// (`connection: close`), raw bytes in, the whole response out. It can send bytes no
/// well-behaved client would (invalid UTF-8 in headers), which is the point.
public enum TestHTTPClient {
    public struct Response: Sendable {
        public var status: Int
        public var headers: [(String, String)]
        public var body: String
        public func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }
    }

    public static func request(
        _ method: String,
        port: Int,
        path: String,
        headers: [(String, String)] = [],
        body: [UInt8] = [],
        host: String = "127.0.0.1",
        from source: String? = nil
    ) async throws -> Response {
        var bytes = Array("\(method) \(path) HTTP/1.1\r\nhost: \(host)\r\nconnection: close\r\ncontent-length: \(body.count)\r\n".utf8)
        for (name, value) in headers { bytes += Array("\(name): \(value)\r\n".utf8) }
        bytes += Array("\r\n".utf8) + body
        return try parse(try await raw(bytes, port: port, host: host, from: source))
    }

    public static func request(_ method: String, port: Int, path: String, headers: [(String, String)] = [], body: String) async throws -> Response {
        try await request(method, port: port, path: path, headers: headers, body: Array(body.utf8))
    }

    /// Writes `bytes` and reads until the server closes the connection (10 s at most).
    /// `source`: the local address to connect from (e.g. `127.0.0.2`, an untrusted caller).
    public static func raw(_ bytes: [UInt8], port: Int, host: String = "127.0.0.1", from source: String? = nil) async throws -> [UInt8] {
        let collected = NIOLockedValueBox<[UInt8]>([])
        let group = MultiThreadedEventLoopGroup.singleton
        var bootstrap = ClientBootstrap(group: group)
        if let source { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: source, port: 0)) }
        let channel =
            try await bootstrap
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(collected: collected))
                }
            }
            .connect(host: host, port: port).get()
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
        let closed = channel.closeFuture
        let timeout = channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
        try? await closed.get()
        timeout.cancel()
        return collected.withLockedValue { $0 }
    }

    static func parse(_ bytes: [UInt8]) throws -> Response {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let split = text.firstRange(of: "\r\n\r\n") else { throw TestClientError(message: "no complete response: \(text)") }
        let headLines = text[..<split.lowerBound].split(separator: "\r\n")
        guard let statusLine = headLines.first, statusLine.split(separator: " ").count >= 2,
            let status = Int(statusLine.split(separator: " ")[1])
        else { throw TestClientError(message: "bad status line in \(text)") }
        let headers = headLines.dropFirst().map { line -> (String, String) in
            let kv = line.split(separator: ":", maxSplits: 1)
            return (String(kv[0]), kv.count > 1 ? String(kv[1].drop { $0 == " " }) : "")
        }
        return Response(status: status, headers: headers, body: String(text[split.upperBound...]))
    }

    final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let collected: NIOLockedValueBox<[UInt8]>
        init(collected: NIOLockedValueBox<[UInt8]>) { self.collected = collected }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            collected.withLockedValue { $0 += buffer.readableBytesView }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }
}

public struct TestClientError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
