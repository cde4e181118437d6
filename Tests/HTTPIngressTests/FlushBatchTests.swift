import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchyardTesting
import Testing

@testable import HTTPIngress

/// Answers each request head with `ok` and a flush; after the `close`-th answer it closes the
/// connection at once, in the same tick as the flush.
final class AnswerThenClose: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let close: Int
    var answered = 0
    init(close: Int) { self.close = close }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        answered += 1
        var headers = HTTPHeaders()
        headers.add(name: "content-length", value: "3")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "ok\(answered)")))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if answered == close { context.close(promise: nil) }
    }
}

/// Flushes on an event loop wait for the end of its batch of socket events (`FlushBatch`):
/// the answers still go out, in order, also when the connection closes right after them.
@Suite struct FlushBatchTests {
    @Test func answersFlushedBeforeACloseArriveWhole() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([HTTP1ServerCodec(), AnswerThenClose(close: 3)])
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        // Three pipelined requests in one write: three answers in one batch, then the close.
        let request = "GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
        let bytes = try await TestHTTPClient.raw(Array((request + request + request).utf8), port: server.localAddress!.port!)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.components(separatedBy: "HTTP/1.1 200 OK\r\n").count == 4, "\(text)")
        #expect(text.hasSuffix("\r\n\r\nok3") && text.contains("ok1") && text.contains("ok2"), "\(text)")
        try await server.close()
    }
}
