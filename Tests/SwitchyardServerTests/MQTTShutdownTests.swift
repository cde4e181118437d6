import NIOCore
import NIOPosix
import Testing

/// A node that stops tells its MQTT v5 clients why before their connections close: DISCONNECT
/// with reason 0x8B (server shutting down) — also when the stop comes as a cancellation, as
/// it does here (`TestServer.stop` cancels the node's task).
@Suite struct MQTTShutdownTests {
    @Test func v5ClientsGetDisconnectServerShuttingDown() async throws {
        let server = try await TestServer.start("channels: {mqtt: {allow_anonymous: true}}")
        let bytes = GatewayWebSocketTests.Bytes()
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(bytes) } }
            .connect(host: "127.0.0.1", port: try await server.mqttPort()).get()
        // CONNECT: MQTT 5, clean start, keep-alive 60 s, no properties, client id "c1".
        let connect: [UInt8] = [0x10, 15, 0, 4] + Array("MQTT".utf8) + [5, 0x02, 0, 60, 0, 0, 2] + Array("c1".utf8)
        try await client.writeAndFlush(ByteBuffer(bytes: connect))
        for _ in 0..<500 where bytes.seen.withLockedValue({ $0.count < 4 }) { try await Task.sleep(for: .milliseconds(10)) }
        let connack = bytes.seen.withLockedValue { $0 }
        try #require(connack.count >= 4 && connack[0] == 0x20 && connack[3] == 0x00, "CONNACK: \(connack)")
        bytes.seen.withLockedValue { $0 = [] }
        await server.stop()
        for _ in 0..<500 where client.isActive { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!client.isActive, "the node closed the connection")
        let seen = bytes.seen.withLockedValue { $0 }
        #expect(seen.count >= 3 && seen[0] == 0xE0 && seen[2] == 0x8B, "DISCONNECT 0x8B before the close: \(seen)")
    }
}
