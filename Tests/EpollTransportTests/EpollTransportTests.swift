import EpollTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// Switchyard's own event loops and TCP channels, on loopback, with NIO handlers on them.
@Suite struct EpollTransportTests {
    @Test func tasksRunOnTheLoopAndTimersInDeadlineOrderUnlessCancelled() async throws {
        let group = try EpollEventLoopGroup(threads: 1, name: "test")
        let loop = group.next()
        #expect(!loop.inEventLoop)
        #expect(try await loop.submit { loop.inEventLoop }.get())
        let order = NIOLockedValueBox<[Int]>([])
        let late = loop.scheduleTask(in: .milliseconds(60)) { order.withLockedValue { $0.append(3) } }
        let early = loop.scheduleTask(in: .milliseconds(20)) { order.withLockedValue { $0.append(1) } }
        let cancelled = loop.scheduleTask(in: .milliseconds(40)) { order.withLockedValue { $0.append(2) } }
        cancelled.cancel()
        try await early.futureResult.get()
        try await late.futureResult.get()
        await #expect(throws: EventLoopError.cancelled) { try await cancelled.futureResult.get() }
        #expect(order.withLockedValue { $0 } == [1, 3])
        // A task from another thread wakes a sleeping loop (one that did not would sleep on: no
        // timer is due). The bound is loose: with the whole suite running on two cores, the
        // awaiting task itself once resumed 520 ms later.
        try await Task.sleep(for: .milliseconds(50))
        let started = ContinuousClock.now
        try await loop.submit {}.get()
        #expect(ContinuousClock.now - started < .seconds(3))
        try await group.shutdownGracefully()
        loop.execute {}  // (after the stop: dropped, not a crash)
    }

    @Test func bytesGoBothWaysIntactThroughBackpressureAndAHalfClose() async throws {
        let group = try EpollEventLoopGroup(threads: 2, name: "test")
        // The server echoes what it reads and, once the client's input ends, closes.
        let listener = try await EpollListener.bind(host: "127.0.0.1", port: 0, group: group) { channel in
            channel.setOption(ChannelOptions.allowRemoteHalfClosure, value: true).flatMapThrowing {
                try channel.pipeline.syncOperations.addHandler(Echo())
            }
        }
        let received = Collector()
        let channel = try await Self.connect(to: listener, on: group, handler: received)
        #expect(channel.isActive)
        #expect(channel.remoteAddress?.port == listener.localAddress.port)
        // 8 MiB: more than both sockets' buffers hold, so writes wait for the peer to read.
        let pattern = ByteBuffer(bytes: (0..<65_521).map { UInt8(truncatingIfNeeded: $0 &* 31) })  // (a prime length)
        var payload = ByteBuffer()
        for _ in 0..<128 { payload.writeImmutableBuffer(pattern) }
        let expected = payload
        try await channel.writeAndFlush(payload).get()
        try await channel.close(mode: .output).get()
        try await channel.closeFuture.get()
        #expect(received.bytes.withLockedValue { $0 } == expected)
        await listener.close()
        try await group.shutdownGracefully()
    }

    @Test func aWriterPausedByBackpressureIsToldWhenItMayWriteAgain() async throws {
        let group = try EpollEventLoopGroup(threads: 1, name: "test")
        let listener = try await EpollListener.bind(host: "127.0.0.1", port: 0, group: group) { channel in
            channel.eventLoop.makeCompletedFuture {}  // reads and drops
        }
        let watcher = Collector()
        let channel = try await Self.connect(to: listener, on: group, handler: watcher)
        let chunk = ByteBuffer(repeating: 7, count: 1 << 20)
        nonisolated(unsafe) var writes: [EventLoopFuture<Void>] = []  // (filled on the loop, read after)
        // (Queued on the loop: a write from another thread goes there as a task.)
        let paused = try await channel.eventLoop.submit {
            for _ in 0..<16 { writes.append(channel.write(chunk)) }
            return !channel.isWritable  // 16 MiB queued, past the high-water mark
        }.get()
        #expect(paused)
        channel.flush()
        for write in writes { try await write.get() }
        #expect(channel.isWritable)
        #expect(watcher.sawWritabilityChange.withLockedValue { $0 })
        try await channel.close()
        await listener.close()
        try await group.shutdownGracefully()
    }

    @Test func aHandlerFirstInThePipelineTakesTheBytesDirectlyUntilItDetaches() async throws {
        let group = try EpollEventLoopGroup(threads: 2, name: "test")
        let counts = DirectEcho.Counts()
        let listener = try await EpollListener.bind(host: "127.0.0.1", port: 0, group: group) { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(DirectEcho(counts)) }
        }
        let received = Collector()
        let channel = try await Self.connect(to: listener, on: group, handler: received)
        // 4 MiB: many reads, each echoed.
        let pattern = ByteBuffer(bytes: (0..<65_521).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        var payload = ByteBuffer()
        for _ in 0..<64 { payload.writeImmutableBuffer(pattern) }
        let size = payload.readableBytes
        try await channel.writeAndFlush(payload).get()
        try await Self.wait { received.bytes.withLockedValue { $0.readableBytes } >= size }
        #expect(received.bytes.withLockedValue { $0.getSlice(at: 0, length: size) } == payload)
        #expect(counts.direct.withLockedValue { $0 } > 0)
        #expect(counts.piped.withLockedValue { $0 } == 0)
        // Detached, the handler gets the bytes through the pipeline again.
        try await channel.writeAndFlush(ByteBuffer(string: "detach")).get()
        try await Self.wait { received.bytes.withLockedValue { $0.readableBytes } >= size + 2 }
        try await channel.writeAndFlush(ByteBuffer(string: "again")).get()
        try await Self.wait { received.bytes.withLockedValue { $0.readableBytes } >= size + 7 }
        #expect(received.bytes.withLockedValue { String(buffer: $0.getSlice(at: size, length: 7)!) } == "okagain")
        #expect(counts.piped.withLockedValue { $0 } > 0)
        try await channel.close()
        await listener.close()
        try await group.shutdownGracefully()
    }

    @Test func aRefusedConnectionFailsWithItsReasonAndAStoppedLoopClosesItsConnections() async throws {
        let group = try EpollEventLoopGroup(threads: 1, name: "test")
        // A port nothing listens on: bound and closed again.
        let probe = try await EpollListener.bind(host: "127.0.0.1", port: 0, group: group) { $0.eventLoop.makeSucceededVoidFuture() }
        let port = probe.localAddress.port!
        await probe.close()
        let refused = EpollConnector.connect(host: "127.0.0.1", port: port, on: group.next(), timeout: .seconds(2)) {
            $0.eventLoop.makeSucceededVoidFuture()
        }
        await #expect(throws: IOError.self) { try await refused.get() }
        do {
            _ = try await refused.get()
        } catch let error as IOError {
            #expect(error.errnoCode == ECONNREFUSED)
        }
        let listener = try await EpollListener.bind(host: "127.0.0.1", port: 0, group: group) { $0.eventLoop.makeSucceededVoidFuture() }
        let channel = try await EpollConnector.connect(
            host: "localhost",  // (a name: resolved off the loop)
            port: listener.localAddress.port!,
            on: group.next(),
            timeout: .seconds(2)
        ) { $0.eventLoop.makeSucceededVoidFuture() }.get()
        try await group.shutdownGracefully()
        try await channel.closeFuture.get()
        #expect(!channel.isActive)
    }
}

extension EpollTransportTests {
    /// Waits (up to 10 s) until `done`.
    static func wait(until done: @Sendable () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !done() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }

    /// A connection to `listener` from one of `group`'s loops, `handler` in its pipeline.
    static func connect(to listener: EpollListener, on group: EpollEventLoopGroup, handler: Collector) async throws -> any Channel {
        try await EpollConnector.connect(host: "127.0.0.1", port: listener.localAddress.port!, on: group.next(), timeout: .seconds(2)) {
            channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
        }.get()
    }
}

/// Writes back what it reads; closes when its input ends and all of it is written.
private final class Echo: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else { return }
        // (Once everything echoed is written: a close drops what waits.)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(NIOAny(ByteBuffer())).whenComplete { _ in bound.value.close(promise: nil) }
    }
}

/// Echoes, taking the bytes from the connection directly (`DirectConnection`) until it reads
/// `detach`: it answers `ok` then, and echoes what the pipeline brings from then on.
private final class DirectEcho: ChannelInboundHandler, EpollDirectHandler {
    typealias InboundIn = ByteBuffer
    final class Counts: Sendable {
        let direct = NIOLockedValueBox(0)
        let piped = NIOLockedValueBox(0)
    }
    private let counts: Counts
    private var context: ChannelHandlerContext?
    private var connection: DirectConnection?

    init(_ counts: Counts) { self.counts = counts }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        connection = DirectConnection.attach(self, to: context.channel)
    }

    func directRead(_ bytes: ByteBuffer) {
        counts.direct.withLockedValue { $0 += 1 }
        guard bytes.readableBytes != 6 || String(buffer: bytes) != "detach" else {
            connection?.detach(self)
            connection = nil
            context?.writeAndFlush(NIOAny(ByteBuffer(string: "ok")), promise: nil)
            return
        }
        connection?.write(bytes, promise: nil)
    }

    func directReadComplete() { connection?.flush() }

    func directReadRequested() { connection?.read() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        counts.piped.withLockedValue { $0 += 1 }
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
}

/// Keeps what arrives and whether writability changed.
final class Collector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let bytes = NIOLockedValueBox(ByteBuffer())
    let sawWritabilityChange = NIOLockedValueBox(false)

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        bytes.withLockedValue { $0.writeBuffer(&chunk) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        sawWritabilityChange.withLockedValue { $0 = true }
    }
}
