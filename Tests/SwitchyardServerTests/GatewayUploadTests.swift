import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchyardTesting
import Testing

/// A 1 GiB upload streams through the gateway (the binary, in a process of its own) to an
/// upstream that counts the bytes, while the gateway's resident memory is sampled: it must
/// stay bounded, and the gateway must keep serving afterwards.
@Suite(.serialized) struct GatewayUploadTests {
    /// Counts request body bytes without keeping them; answers the count.
    final class Sink: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let total: NIOLockedValueBox<Int>
        var count = 0
        init(total: NIOLockedValueBox<Int>) { self.total = total }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head: count = 0
            case .body(let chunk): count += chunk.readableBytes
            case .end:
                total.withLockedValue { $0 += count }
                let body = ByteBuffer(string: String(count))
                let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": String(body.readableBytes)])
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }

    static func residentBytes(_ pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return nil }
        return line.split(separator: " ").compactMap { Int($0) }.first.map { $0 * 1024 }
    }

    /// (On both event-loop transports of the HTTP listener.)
    @Test(arguments: ["epoll", "nio"])
    func aOneGiBUploadStreamsInBoundedMemory(transport: String) async throws {
        let total = NIOLockedValueBox(0)
        let sink = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Sink(total: total))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { sink.close(promise: nil) }
        let node = try CrashTests.Node(
            """
            gateway:
              routes: [{name: upload, path_prefix: /upload, service: sink, timeout: 120s}]
            services:
              sink: {instances: [{url: "http://127.0.0.1:\(sink.localAddress!.port!)"}]}
            channels: {http: {transport: \(transport)}}
            """,
            name: "upload"
        )
        defer { node.cleanUp() }
        let httpPort = node.httpPort
        try await node.start()
        let pid = node.process!.pid
        // Warm up (first requests allocate pools), then take the baseline.
        for _ in 0..<3 { _ = try await TestHTTPClient.request("POST", port: httpPort, path: "/upload", body: "x") }
        let baseline = try #require(Self.residentBytes(pid))
        let peak = NIOLockedValueBox(baseline)
        let sampling = Task {
            while !Task.isCancelled {
                if let rss = Self.residentBytes(pid) { peak.withLockedValue { $0 = max($0, rss) } }
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
        }
        let size = 1 << 30
        let answer = NIOLockedValueBox<[UInt8]>([])
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(collected: answer))
                }
            }
            .connect(host: "127.0.0.1", port: httpPort).get()
        let started = Date()
        try await client.writeAndFlush(
            ByteBuffer(string: "POST /upload/big HTTP/1.1\r\nhost: gw\r\ncontent-length: \(size)\r\nconnection: close\r\n\r\n")
        )
        let chunk = ByteBuffer(repeating: 0x61, count: 1 << 20)
        for _ in 0..<(size >> 20) {
            // Each write completes once the kernel took it: the client goes as fast as the gateway reads.
            try await client.writeAndFlush(chunk)
        }
        try? await client.closeFuture.get()
        let seconds = Date().timeIntervalSince(started)
        sampling.cancel()
        let response = String(decoding: answer.withLockedValue { $0 }, as: UTF8.self)
        #expect(response.hasPrefix("HTTP/1.1 200"), "\(response.prefix(200))")
        #expect(response.hasSuffix("\r\n\r\n\(size)"))
        #expect(total.withLockedValue { $0 } >= size)
        let growth = peak.withLockedValue { $0 } - baseline
        print(
            "1 GiB upload through the gateway: \(String(format: "%.1f", seconds)) s, resident memory +\(growth >> 20) MiB over \(baseline >> 20) MiB"
        )
        #expect(growth < 128 << 20, "resident memory grew by \(growth >> 20) MiB")
        // And it keeps serving.
        #expect(try await TestHTTPClient.request("POST", port: httpPort, path: "/upload", body: "after").status == 200)
    }

    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let collected: NIOLockedValueBox<[UInt8]>
        init(collected: NIOLockedValueBox<[UInt8]>) { self.collected = collected }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = unwrapInboundIn(data).readableBytesView
            collected.withLockedValue { $0 += bytes }
        }
    }
}
