import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SwitchyardTesting
import Testing

/// An upstream that answers each request with bytes chosen by its path (and closes the
/// connection after answers delimited by the close).
final class ScriptedUpstream: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    static let answers: [String: String] = [
        "/chunked":
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/close": "HTTP/1.0 200 OK\r\nX-Up: 2\r\n\r\nuntil close",
        "/empty": "HTTP/1.1 204 No Content\r\nX-Up: 3\r\nContent-Length: 0\r\n\r\n",
        // (The fields Connection names are the hop's, before it or after.)
        "/length":
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Hop: a\r\nConnection: keep-alive, X-Hop, x-later\r\nX-Up: 4\r\nUpgrade: h2c\r\nX-Later: b\r\n\r\nok",
        // (Nor can an upstream make the proxy drop the field that frames the answer.)
        "/framing": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Content-Length\r\nX-Up: 5\r\n\r\nok",
    ]

    static func start() async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(ScriptedUpstream()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The requests here are small and come whole: one answer per request head.
        let text = String(buffer: unwrapInboundIn(data))
        for head in text.components(separatedBy: "\r\n\r\n").dropLast() {
            let words = head.split(separator: " ", maxSplits: 2)
            guard words.count == 3, let answer = Self.answers[String(words[1])] else { continue }
            let reply = words[0] == "HEAD" ? String(answer.prefix(upTo: answer.range(of: "\r\n\r\n")!.upperBound)) : answer
            context.writeAndFlush(NIOAny(ByteBuffer(string: reply)), promise: nil)
            if words[1] == "/close" { context.close(promise: nil) }
        }
    }
}

/// An answer's head passes on as its bytes came (the hop-by-hop fields left out) and is framed
/// for the client: kept lengths, a chunked body re-chunked, a body until the close chunked, none
/// for 204 and HEAD.
@Suite struct GatewayAnswerTests {
    @Test func answersPassOnFramedForTheClient() async throws {
        let upstream = try await ScriptedUpstream.start()
        let server = try await TestServer.start(
            """
            gateway:
              routes: [{name: scripted, path_prefix: /, url: "http://127.0.0.1:\(upstream.localAddress!.port!)"}]
            """
        )
        func answer(_ method: String, _ path: String) async throws -> String {
            let request = "\(method) \(path) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            return String(decoding: try await TestHTTPClient.raw(Array(request.utf8), port: server.httpPort), as: UTF8.self)
        }
        let chunked = try await answer("GET", "/chunked")
        #expect(chunked.hasPrefix("HTTP/1.1 200 OK\r\n") && chunked.contains("\r\nTransfer-Encoding: chunked\r\n"), "\(chunked)")
        #expect(chunked.contains("\r\nX-Up: 1\r\n") && chunked.contains("\r\nconnection: close\r\n"))
        #expect(!chunked.contains("Keep-Alive") && !chunked.contains("keep-alive"))
        #expect(chunked.hasSuffix("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
        let untilClose = try await answer("GET", "/close")
        #expect(untilClose.hasPrefix("HTTP/1.1 200 OK\r\n") && untilClose.contains("\r\nX-Up: 2\r\ntransfer-encoding: chunked\r\n"), "\(untilClose)")
        #expect(untilClose.hasSuffix("\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n"))
        let empty = try await answer("GET", "/empty")
        #expect(empty.hasPrefix("HTTP/1.1 204 No Content\r\n") && empty.contains("X-Up: 3"), "\(empty)")
        #expect(!empty.lowercased().contains("content-length") && !empty.lowercased().contains("transfer-encoding") && empty.hasSuffix("\r\n\r\n"))
        let length = try await answer("GET", "/length")
        #expect(length.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 4\r\n"), "\(length)")
        #expect(!length.contains("keep-alive") && !length.contains("X-Hop") && !length.contains("h2c") && length.hasSuffix("\r\n\r\nok"))
        #expect(!length.contains("X-Later"), "\(length)")
        let framing = try await answer("GET", "/framing")
        #expect(framing.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 5\r\n") && framing.hasSuffix("\r\n\r\nok"), "\(framing)")
        let head = try await answer("HEAD", "/length")
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n") && head.hasSuffix("\r\n\r\n"), "\(head)")
        try await upstream.close()
    }
}
