import HTTPForwarder
import NIOCore
import NIOPosix
import SwitchyardCore
import SwitchyardTesting
import Testing

/// The forwarder against real loopback services.
@Suite(.serialized) struct ForwarderTests {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)

    func request(_ path: String = "/x") -> ForwardRequest {
        ForwardRequest(method: "POST", path: path, headers: [HeaderField("x-switchyard-message-id", "m1")], body: ByteBuffer(string: "payload"))
    }

    @Test func deliversAndReusesConnections() async throws {
        let svc = try await TestHTTPService.start()
        let forwarder = HTTPForwarder(group: group)
        let instance = ServiceInstance(service: "s", url: svc.url)!
        let loop = group.next()
        for i in 0..<20 {
            let r = try await forwarder.forward(request("/n/\(i)"), to: instance, timeout: .seconds(5), on: loop).get()
            #expect(r.status == 200)
        }
        let got = await svc.waitFor(count: 20)
        #expect(got.map(\.uri) == (0..<20).map { "/n/\($0)" })
        #expect(got.first?.body == "payload")
        #expect(got.first?.header("x-switchyard-message-id") == "m1")
        #expect(got.first?.header("host") == instance.address)
        #expect(svc.connectionsAccepted == 1)  // keep-alive: one connection for sequential requests
        forwarder.shutdown()
        await svc.stop()
    }

    /// `Connection: close` after earlier responses on the connection may mean shutdown;
    /// on a connection's first response it says nothing (a server without keep-alive).
    @Test func aClosedKeptAliveConnectionIsReported() async throws {
        let svc = try await TestHTTPService.start()
        svc.setCloseEvery(2)
        let forwarder = HTTPForwarder(group: group)
        let instance = ServiceInstance(service: "s", url: svc.url)!
        let loop = group.next()
        var closing: [Bool] = []
        for _ in 0..<4 { closing.append(try await forwarder.forward(request(), to: instance, timeout: .seconds(5), on: loop).get().closing) }
        #expect(closing == [false, true, false, true])
        svc.setCloseEvery(1)
        for _ in 0..<2 { closing.append(try await forwarder.forward(request(), to: instance, timeout: .seconds(5), on: loop).get().closing) }
        #expect(closing.suffix(2) == [false, false])  // every connection closed after its first answer
        #expect(svc.connectionsAccepted == 4)
        forwarder.shutdown()
        await svc.stop()
    }

    /// A service whose answer arrives in pieces — the status line and a header cut in the
    /// middle, 30 ms apart (separate TCP reads) — is understood, not a malformed response.
    @Test func anAnswerCutAcrossReadsIsUnderstood() async throws {
        final class PiecewiseAnswer: ChannelInboundHandler, @unchecked Sendable {
            typealias InboundIn = ByteBuffer
            var seen = ""
            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                var bytes = unwrapInboundIn(data)
                seen += bytes.readString(length: bytes.readableBytes) ?? ""
                guard seen.hasSuffix("payload") else { return }
                seen = ""
                let channel = context.channel
                for (n, piece) in ["HTTP/1.1 20", "1 Created\r\ncontent-le", "ngth: 2\r\n\r\nok"].enumerated() {
                    channel.eventLoop.scheduleTask(in: .milliseconds(Int64(30 * n))) {
                        channel.writeAndFlush(ByteBuffer(string: piece), promise: nil)
                    }
                }
            }
        }
        let server = try await ServerBootstrap(group: group)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(PiecewiseAnswer()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let forwarder = HTTPForwarder(group: group)
        let instance = ServiceInstance(service: "s", host: "127.0.0.1", port: server.localAddress!.port!)
        for _ in 0..<2 {  // twice: the kept connection's parser starts clean after the first
            let r = try await forwarder.forward(request(), to: instance, timeout: .seconds(5), on: group.next()).get()
            #expect(r.status == 201)
        }
        forwarder.shutdown()
        try await server.close()
    }

    @Test func refusedConnectionIsConnectFailed() async throws {
        let forwarder = HTTPForwarder(group: group)
        let instance = ServiceInstance(service: "s", host: "127.0.0.1", port: 1)
        do {
            _ = try await forwarder.forward(request(), to: instance, timeout: .seconds(2), on: group.next()).get()
            Issue.record("expected an error")
        } catch let error as ForwardError {
            #expect(error.kind == .connectFailed)
        }
    }

    @Test func slowServiceTimesOut() async throws {
        // The service would answer after 30 s: only the 200 ms timeout can end this early, with
        // `.timeout` (no wall-clock bound here: the machine may be busy with other suites).
        let svc = try await TestHTTPService.start()
        svc.setDelay(seconds: 30)
        let forwarder = HTTPForwarder(group: group)
        let instance = ServiceInstance(service: "s", url: svc.url)!
        let start = NIODeadline.now()
        do {
            _ = try await forwarder.forward(request(), to: instance, timeout: .milliseconds(200), on: group.next()).get()
            Issue.record("expected a timeout")
        } catch let error as ForwardError {
            #expect(error.kind == .timeout)
        }
        #expect(NIODeadline.now() - start < .seconds(25))
        forwarder.shutdown()
        await svc.stop()
    }

    @Test func concurrencyLimitQueuesRequests() async throws {
        let svc = try await TestHTTPService.start()
        svc.setDelay(seconds: 0.05)
        let forwarder = HTTPForwarder(group: group)
        forwarder.setConcurrencyLimit(2, forService: "s")  // one per loop
        let instance = ServiceInstance(service: "s", url: svc.url)!
        let loop = group.next()
        try await withThrowingTaskGroup(of: Int.self) { tasks in
            for _ in 0..<10 {
                tasks.addTask { try await forwarder.forward(self.request(), to: instance, timeout: .seconds(5), on: loop).get().status }
            }
            for try await status in tasks { #expect(status == 200) }
        }
        #expect(svc.maxConcurrent <= 1)  // all on one loop: that loop's share of 2 is 1
        #expect(svc.received.count == 10)
        forwarder.shutdown()
        await svc.stop()
    }
}
