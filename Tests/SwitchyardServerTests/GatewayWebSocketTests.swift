import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import SwitchyardTesting
import Testing

/// WebSocket upgrades pass through the gateway: a real client (Python `websockets`) talks to a
/// real server (NIOWebSocket echo) through Switchyard; the lane picks the instance as for any
/// request; an upstream that does not upgrade answers with its own status.
@Suite struct GatewayWebSocketTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/ws_scenarios.py").path

    /// Echoes text and binary frames; answers pings and closes.
    final class Echo: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            switch frame.opcode {
            case .text, .binary, .continuation:
                let out = WebSocketFrame(fin: frame.fin, opcode: frame.opcode, data: frame.unmaskedData)
                context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            case .ping:
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
            case .connectionClose:
                let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: frame.unmaskedData)
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in channel.close(promise: nil) }
            default: break
            }
        }
    }

    static func echoServer() async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrader = NIOWebSocketServerUpgrader(
                        maxFrameSize: 4 << 20,
                        shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
                        upgradePipelineHandler: { channel, _ in
                            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Echo()) }
                        }
                    )
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in })
                    )
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    @Test func webSocketsPassThroughWithTheirLane() async throws {
        let baseline = try await Self.echoServer(), gray = try await Self.echoServer()
        defer {
            baseline.close(promise: nil)
            gray.close(promise: nil)
        }
        let plain = try await TestHTTPService.start()  // answers 200 to everything: no upgrade
        let server = try await TestServer.start(
            """
            lanes:
              - {name: gray, entry: {params: {beta: ["1"]}}}
            gateway:
              routes:
                - {name: chat, path_prefix: /ws, service: chat}
                - {name: plain, path_prefix: /plain, service: plain}
            services:
              chat: {instances: [{url: "http://127.0.0.1:\(baseline.localAddress!.port!)"}, {url: "http://127.0.0.1:\(gray.localAddress!.port!)", lane: gray}]}
              plain: {instances: [{url: "\(plain.url)"}]}
            """
        )
        let base = "ws://127.0.0.1:\(server.httpPort)"
        let echoed = try await ProcessTests.runScenario(Self.script, ["\(base)/ws/room", "echo"])
        #expect(echoed["echoed"] as? Int == 4 && echoed["closed_cleanly"] as? Bool == true, "\(echoed)")
        #expect(echoed["upstream"] as? String == "chat@127.0.0.1:\(baseline.localAddress!.port!)")
        let beta = try await ProcessTests.runScenario(Self.script, ["\(base)/ws/room?beta=1", "echo"])
        #expect(beta["lane_effective"] as? String == "gray" && beta["echoed"] as? Int == 4, "\(beta)")
        let refused = try await ProcessTests.runScenario(Self.script, ["\(base)/plain/x", "refused"])
        #expect(refused["status"] as? Int == 200)
        #expect(plain.received.first?.header("upgrade") == "websocket")
        // The listener still serves plain requests afterwards.
        #expect(try await TestHTTPClient.request("GET", port: server.httpPort, path: "/plain/after", body: "").status == 200)
        let metrics = try await server.admin("GET", "/metrics", token: nil).body.split(separator: "\n")
        #expect(
            metrics.contains { $0.hasPrefix("switchyard_gateway_requests_total") && $0.contains(#"route="chat""#) && $0.contains(#"status="1xx""#) }
        )
    }

    final class Bytes: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let seen = NIOLockedValueBox<[UInt8]>([])
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            seen.withLockedValue { $0 += buffer.readableBytesView }
        }
    }

    /// A shutdown lets an open WebSocket go on for the drain time (it used to be cut at once);
    /// the node stops as soon as the client has closed it.
    @Test func aShutdownGivesAnOpenWebSocketTheDrainTime() async throws {
        let echo = try await Self.echoServer()
        defer { echo.close(promise: nil) }
        let server = try await TestServer.start(
            """
            gateway: {routes: [{name: chat, path_prefix: /ws, service: chat}]}
            services: {chat: {instances: [{url: "http://127.0.0.1:\(echo.localAddress!.port!)"}]}}
            """
        )
        let bytes = Bytes()
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(bytes) } }
            .connect(host: "127.0.0.1", port: server.httpPort).get()
        let upgrade =
            "GET /ws/room HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            + "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        try await client.writeAndFlush(ByteBuffer(string: upgrade))
        func waitFor(_ what: String, _ condition: ([UInt8]) -> Bool) async throws {
            let deadline = ContinuousClock.now + .seconds(5)
            while !condition(bytes.seen.withLockedValue { $0 }) {
                guard ContinuousClock.now < deadline else { throw TestClientError(message: "no \(what)") }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        try await waitFor("101") { String(decoding: $0, as: UTF8.self).contains("\r\n\r\n") }
        #expect(String(decoding: bytes.seen.withLockedValue { $0 }, as: UTF8.self).hasPrefix("HTTP/1.1 101"))
        bytes.seen.withLockedValue { $0 = [] }
        let stopping = Task { await server.stop() }
        try await Task.sleep(for: .milliseconds(500))
        // Half a second into the shutdown the tunnel still carries frames (a masked "hi" and its echo).
        let mask: [UInt8] = [1, 2, 3, 4]
        let frame: [UInt8] = [0x81, 0x82] + mask + [UInt8(ascii: "h") ^ mask[0], UInt8(ascii: "i") ^ mask[1]]
        try await client.writeAndFlush(ByteBuffer(bytes: frame))
        try await waitFor("echo") { $0 == [0x81, 0x02, UInt8(ascii: "h"), UInt8(ascii: "i")] }
        let closed = ContinuousClock.now
        try await client.close()
        await stopping.value
        #expect(ContinuousClock.now - closed < .seconds(3), "the node waited for the drain time after the tunnel closed")
    }
}
