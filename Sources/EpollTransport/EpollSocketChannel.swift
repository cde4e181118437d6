import CEpoll
import Glibc
public import NIOCore
import Synchronization

/// A TCP connection on an `EpollEventLoop`, with a NIO pipeline: what NIO's socket channel
/// does for Switchyard's handlers, with less per event. Reads go into one kept buffer (reused
/// when the handlers let go of it); writes wait in a queue until flushed, and flushes wait for
/// the end of the loop's batch of ready sockets (see `EpollEventLoop`). Everything but the
/// `Channel` properties marked thread-safe runs on the loop.
///
/// The codec first in the pipeline may take the bytes straight from the channel and give
/// them straight back (`EpollDirectHandler`, `DirectConnection`): no pipeline hop, boxing or
/// type check on the reads, writes and flushes of every proxied request.
final class EpollSocketChannel: Channel, ChannelCore, EpollSelectable, @unchecked Sendable {
    // @unchecked: state is the loop's; `isActive` and `isWritable` are atomics.
    let loop: EpollEventLoop
    private(set) var fd: Int32
    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>
    let allocator = ByteBufferAllocator()
    private(set) var localAddress: SocketAddress?
    private(set) var remoteAddress: SocketAddress?
    private let activeFlag = Atomic<Bool>(false)
    private let writableFlag = Atomic<Bool>(true)

    private var open = true
    private var registered = false
    private var interest: UInt32 = 0
    private var autoRead = true
    private var readPending = false
    private var maxMessagesPerRead = 4
    private var allowHalfClosure = false
    private var inputClosed = false
    /// The peer's end of input was reported (`EPOLLRDHUP`) and read up to.
    private var seenEndOfInput = false
    private var outputClosed = false
    private var outputClosePromise: EventLoopPromise<Void>?
    private var closeOutputWhenFlushed = false
    private var readBuffer: ByteBuffer
    private static let readSize = 16 << 10
    private var pending = CircularBuffer<(buffer: ByteBuffer, promise: EventLoopPromise<Void>?)>(initialCapacity: 8)
    /// How many of `pending` (from the first) were flushed.
    private var flushed = 0
    private var pendingBytes = 0
    private var waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 32 << 10, high: 64 << 10)
    private var flushQueued = false
    /// The socket took no more: writing waits for `EPOLLOUT`.
    private var waitingToWrite = false
    private var written: [EventLoopPromise<Void>] = []
    /// The codec first in the pipeline, when it takes the bytes directly.
    private var direct: (any EpollDirectHandler)?
    /// A connection being opened: completed when the socket is writable.
    private var connecting:
        (promise: EventLoopPromise<any Channel>, initializer: @Sendable (any Channel) -> EventLoopFuture<Void>, timeout: Scheduled<Void>?)?

    init(fd: Int32, loop: EpollEventLoop) {
        self.fd = fd
        self.loop = loop
        closePromise = loop.makePromise()
        readBuffer = allocator.buffer(capacity: Self.readSize)
        _pipeline = ChannelPipeline(channel: self)
        addresses()
    }

    // MARK: - Channel

    var eventLoop: any EventLoop { loop }
    var pipeline: ChannelPipeline { _pipeline }
    var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    var parent: (any Channel)? { nil }
    var _channelCore: any ChannelCore { self }
    var isActive: Bool { activeFlag.load(ordering: .relaxed) }
    var isWritable: Bool { writableFlag.load(ordering: .relaxed) }

    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if loop.inEventLoop {
            do {
                try setOption0(option, value)
                return loop.makeSucceededVoidFuture()
            } catch {
                return loop.makeFailedFuture(error)
            }
        }
        let box = UnsafeTransfer((option, value))
        return loop.submit { try self.setOption0(box.value.0, box.value.1) }
    }

    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if loop.inEventLoop {
            do { return loop.makeSucceededFuture(try getOption0(option)) } catch { return loop.makeFailedFuture(error) }
        }
        let box = UnsafeTransfer(option)
        return loop.submit { UnsafeTransfer(try self.getOption0(box.value)) }.map { $0.value }
    }

    private func setOption0<Option: ChannelOption>(_ option: Option, _ value: Option.Value) throws {
        switch option {
        case is ChannelOptions.Types.AutoReadOption:
            let on = value as! Bool
            guard on != autoRead else { return }
            autoRead = on
            if on { read0() } else { readPending = false; updateInterest() }
        case let option as ChannelOptions.Types.SocketOption:
            var int = value as! SocketOptionValue
            guard setsockopt(fd, option.optionLevel.rawValue, option.optionName.rawValue, &int, socklen_t(MemoryLayout<SocketOptionValue>.size)) == 0
            else {
                throw IOError(errnoCode: cepoll_errno(), reason: "setsockopt")
            }
        case is ChannelOptions.Types.MaxMessagesPerReadOption: maxMessagesPerRead = max(1, Int(value as! UInt))
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption: allowHalfClosure = value as! Bool
        case is ChannelOptions.Types.WriteBufferWaterMarkOption: waterMark = value as! ChannelOptions.Types.WriteBufferWaterMark
        default: break  // (the receive allocator, connect timeouts and the like: this channel's own)
        }
    }

    private func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        switch option {
        case is ChannelOptions.Types.AutoReadOption: return autoRead as! Option.Value
        case is ChannelOptions.Types.AllowRemoteHalfClosureOption: return allowHalfClosure as! Option.Value
        case is ChannelOptions.Types.MaxMessagesPerReadOption: return UInt(maxMessagesPerRead) as! Option.Value
        case is ChannelOptions.Types.WriteBufferWaterMarkOption: return waterMark as! Option.Value
        case let option as ChannelOptions.Types.SocketOption:
            var int: SocketOptionValue = 0
            var size = socklen_t(MemoryLayout<SocketOptionValue>.size)
            guard getsockopt(fd, option.optionLevel.rawValue, option.optionName.rawValue, &int, &size) == 0 else {
                throw IOError(errnoCode: cepoll_errno(), reason: "getsockopt")
            }
            return int as! Option.Value
        default: throw ChannelError.operationUnsupported
        }
    }

    // MARK: - Opening

    /// The pipeline is ready: the connection is registered and active, and reading starts.
    func activate() {
        guard open else { return }
        do {
            try loop.register(fd, self, events: 0)
        } catch {
            return close0(error: error, mode: .all, promise: nil)
        }
        registered = true
        pipeline.fireChannelRegistered()
        activeFlag.store(true, ordering: .relaxed)
        pipeline.fireChannelActive()
        if autoRead && open { pipeline.read() }
    }

    /// Opens the socket's connection (already started, non-blocking): the pipeline is set up
    /// and the channel active once it is open.
    func awaitConnection(
        promise: EventLoopPromise<any Channel>,
        timeout: TimeAmount,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) {
        do {
            try loop.register(fd, self, events: EPOLLOUT.rawValue)
        } catch {
            promise.fail(error)
            return closeQuietly()
        }
        registered = true
        interest = EPOLLOUT.rawValue
        let deadline = loop.scheduleTask(in: timeout) { [self] in
            guard let pending = connecting else { return }
            connecting = nil
            pending.promise.fail(ChannelError.connectTimeout(timeout))
            closeQuietly()
        }
        connecting = (promise, initializer, deadline)
    }

    /// The connection opened (or failed): on the loop.
    private func connectionReady() {
        guard let (promise, initializer, timeout) = connecting else { return }
        connecting = nil
        timeout?.cancel()
        var error: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size)
        guard error == 0 else {
            promise.fail(IOError(errnoCode: error, reason: "connect"))
            return closeQuietly()
        }
        addresses()
        updateInterest()
        initializer(self).hop(to: loop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            switch result {
            case .success:
                self.pipeline.fireChannelRegistered()
                self.activeFlag.store(true, ordering: .relaxed)
                self.pipeline.fireChannelActive()
                if self.autoRead && self.open { self.pipeline.read() }
                promise.succeed(self)
            case .failure(let error):
                promise.fail(error)
                self.closeQuietly()
            }
        }
    }

    /// Closes a connection no handler has seen yet.
    private func closeQuietly() {
        guard open else { return }
        open = false
        if registered { loop.deregister(fd) }
        Glibc.close(fd)
        closePromise.succeed(())
    }

    private func addresses() {
        var storage = sockaddr_storage()
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        if withUnsafeMutableBytes(of: &storage, { getsockname(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &size) }) == 0 {
            localAddress = Self.address(storage)
        }
        size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        if withUnsafeMutableBytes(of: &storage, { getpeername(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &size) }) == 0 {
            remoteAddress = Self.address(storage)
        }
    }

    static func address(_ storage: sockaddr_storage) -> SocketAddress? {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafeBytes(of: &storage) { SocketAddress($0.load(as: sockaddr_in.self)) }
        case AF_INET6:
            return withUnsafeBytes(of: &storage) { SocketAddress($0.load(as: sockaddr_in6.self)) }
        default:
            return nil
        }
    }

    // MARK: - Readiness

    func ready(_ events: UInt32) {
        if connecting != nil {
            if events & (EPOLLOUT.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 { connectionReady() }
            return
        }
        if events & EPOLLOUT.rawValue != 0 && waitingToWrite {
            waitingToWrite = false
            writeFlushed()
        }
        guard open else { return }
        if events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 && !inputClosed && !seenEndOfInput {
            // The peer's input ended (or the connection failed): as NIO does, all of it is read
            // now, up to its end, whether or not reading was paused — a connection whose peer
            // left does not wait open for a read that may never be asked for.
            seenEndOfInput = true
            updateInterest()
            while open && !inputClosed {
                readPending = true
                if !readNow() { break }
            }
            if open && !inputClosed && events & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
                var error: Int32 = 0
                var size = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size)
                close0(error: error == 0 ? ChannelError.eof : IOError(errnoCode: error, reason: "socket"), mode: .all, promise: nil)
            }
            return
        }
        if events & EPOLLIN.rawValue != 0 { readNow() }
    }

    func loopStopped() { close0(error: EventLoopError.shutdown, mode: .all, promise: nil) }

    /// Reads while reading is asked for; false when nothing came (no bytes, no end).
    @discardableResult
    private func readNow() -> Bool {
        guard readPending, !inputClosed else {
            updateInterest()
            return false
        }
        readPending = false
        var delivered = false
        var endOfInput = false
        var failure: (any Error)?
        for _ in 0..<maxMessagesPerRead {
            readBuffer.clear(minimumCapacity: Self.readSize)
            let room = readBuffer.capacity
            var result = 0
            readBuffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1) { space in
                result = Glibc.read(fd, space.baseAddress, space.count)
                return max(result, 0)
            }
            if result > 0 {
                delivered = true
                if let direct { direct.directRead(readBuffer) } else { pipeline.fireChannelRead(NIOAny(readBuffer)) }
                if result < room || !open { break }
                continue
            }
            if result == 0 {
                endOfInput = true
                break
            }
            let code = cepoll_errno()
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK {
                if !delivered { readPending = true }
            } else {
                failure = IOError(errnoCode: code, reason: "read")
            }
            break
        }
        if delivered && open {
            if let direct { direct.directReadComplete() } else { pipeline.fireChannelReadComplete() }
        }
        if let failure, open {
            pipeline.fireErrorCaught(failure)
            close0(error: failure, mode: .all, promise: nil)
            return true
        }
        if endOfInput && open {
            if allowHalfClosure && !outputClosed {
                inputClosed = true
                readPending = false
                updateInterest()
                pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            } else {
                close0(error: ChannelError.eof, mode: .all, promise: nil)
                return true
            }
        }
        if delivered && autoRead && open && !inputClosed {
            if let direct { direct.directReadRequested() } else { pipeline.read() }
        }
        updateInterest()
        return delivered || endOfInput || failure != nil
    }

    private func updateInterest() {
        guard open, registered else { return }
        var wanted: UInt32 = 0
        if readPending && !inputClosed { wanted |= EPOLLIN.rawValue }
        if !inputClosed && !seenEndOfInput { wanted |= EPOLLRDHUP.rawValue }
        if waitingToWrite || connecting != nil { wanted |= EPOLLOUT.rawValue }
        guard wanted != interest else { return }
        interest = wanted
        do { try loop.modify(fd, events: wanted) } catch { close0(error: error, mode: .all, promise: nil) }
    }

    // MARK: - ChannelCore

    func localAddress0() throws -> SocketAddress {
        guard let localAddress else { throw ChannelError.ioOnClosedChannel }
        return localAddress
    }

    func remoteAddress0() throws -> SocketAddress {
        guard let remoteAddress else { throw ChannelError.ioOnClosedChannel }
        return remoteAddress
    }

    func register0(promise: EventLoopPromise<Void>?) { promise?.succeed(()) }
    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) { promise?.succeed(()) }
    func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .byteBuffer(let buffer) = unwrapData(data, as: IOData.self) else {
            promise?.fail(ChannelError.operationUnsupported)  // (file regions: not sent through this channel)
            return
        }
        directWrite(buffer, promise: promise)
    }

    func flush0() {
        guard open else { return }
        flushed = pending.count
        guard flushed > 0, !flushQueued, !waitingToWrite else { return }
        flushQueued = true
        loop.queueFlush(self)
    }

    /// The loop's batch is done: what was flushed is written.
    func flushQueuedWrites() {
        flushQueued = false
        writeFlushed()
    }

    private func writeFlushed() {
        guard open else { return }
        while flushed > 0 {
            var requested = 0
            let result: Int
            if flushed == 1 {
                requested = pending[pending.startIndex].buffer.readableBytes
                result = pending[pending.startIndex].buffer.withUnsafeReadableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            } else {
                let count = min(flushed, 64)
                result = withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { vectors in
                    // (The buffers stay in `pending`, unchanged, while the call runs.)
                    var index = pending.startIndex
                    for i in 0..<count {
                        pending[index].buffer.withUnsafeReadableBytes { bytes in
                            vectors[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
                        }
                        requested += vectors[i].iov_len
                        index = pending.index(after: index)
                    }
                    return writev(fd, vectors.baseAddress, Int32(count))
                }
            }
            if result < 0 {
                let code = cepoll_errno()
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK {
                    waitingToWrite = true
                    break
                }
                let error = IOError(errnoCode: code, reason: "write")
                pipeline.fireErrorCaught(error)
                return close0(error: error, mode: .all, promise: nil)
            }
            var left = result
            while flushed > 0 {
                let size = pending[pending.startIndex].buffer.readableBytes
                if left >= size {
                    left -= size
                    pendingBytes -= size
                    flushed -= 1
                    if let promise = pending.removeFirst().promise { written.append(promise) }
                } else {
                    if left > 0 {
                        pending[pending.startIndex].buffer.moveReaderIndex(forwardBy: left)
                        pendingBytes -= left
                    }
                    break
                }
            }
            if result < requested {
                waitingToWrite = true  // (the socket is full: the next write would only fail)
                break
            }
        }
        if flushed == 0 && closeOutputWhenFlushed { shutdownOutput() }
        updateInterest()
        if !writableFlag.load(ordering: .relaxed) && pendingBytes < waterMark.low {
            writableFlag.store(true, ordering: .relaxed)
            pipeline.fireChannelWritabilityChanged()
        }
        if !written.isEmpty {
            let done = written
            written.removeAll(keepingCapacity: true)
            for promise in done { promise.succeed(()) }
        }
    }

    private func shutdownOutput() {
        closeOutputWhenFlushed = false
        outputClosed = true
        shutdown(fd, Int32(SHUT_WR))
        outputClosePromise?.succeed(())
        outputClosePromise = nil
        if inputClosed { return close0(error: ChannelError.eof, mode: .all, promise: nil) }
        pipeline.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
    }

    func read0() {
        guard open, !inputClosed, !readPending else { return }
        readPending = true
        updateInterest()
    }

    func close0(error: any Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard open else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .output:
            guard !outputClosed, !closeOutputWhenFlushed else {
                promise?.fail(ChannelError.outputClosed)
                return
            }
            outputClosePromise = promise
            closeOutputWhenFlushed = true
            flushed = pending.count
            writeFlushed()
            return
        case .input:
            guard !inputClosed else {
                promise?.fail(ChannelError.inputClosed)
                return
            }
            if outputClosed { return close0(error: error, mode: .all, promise: promise) }
            shutdown(fd, Int32(SHUT_RD))
            inputClosed = true
            readPending = false
            updateInterest()
            promise?.succeed(())
            pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            return
        case .all:
            break
        }
        // What was flushed leaves first (it would have with a flush that writes at once).
        if flushed > 0 && !waitingToWrite { writeFlushed() }
        guard open else {
            promise?.succeed(())
            return
        }
        open = false
        let wasActive = activeFlag.load(ordering: .relaxed)
        activeFlag.store(false, ordering: .relaxed)
        if let pending = connecting {
            connecting = nil
            pending.timeout?.cancel()
            pending.promise.fail(error)
        }
        if registered { loop.deregister(fd) }
        Glibc.close(fd)
        let dropped = pending
        pending.removeAll()
        flushed = 0
        pendingBytes = 0
        for item in dropped { item.promise?.fail(error) }
        outputClosePromise?.fail(error)
        outputClosePromise = nil
        promise?.succeed(())
        if wasActive { pipeline.fireChannelInactive() }
        if registered { pipeline.fireChannelUnregistered() }
        direct = nil  // (the codec would let go when it is removed; it holds the channel too)
        loop.execute {
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed(())
        }
    }

    // MARK: - Direct

    fileprivate func attach(_ handler: any EpollDirectHandler) { direct = handler }

    fileprivate func detach(_ handler: any EpollDirectHandler) {
        if direct === handler { direct = nil }
    }

    /// As a write that reached the head of the pipeline.
    fileprivate func directWrite(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard open else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !outputClosed, !closeOutputWhenFlushed else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        pending.append((buffer, promise))
        pendingBytes += buffer.readableBytes
        if pendingBytes > waterMark.high && writableFlag.load(ordering: .relaxed) {
            writableFlag.store(false, ordering: .relaxed)
            pipeline.fireChannelWritabilityChanged()
        }
    }

    func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func channelRead0(_ data: NIOAny) {}  // (nothing handled it: dropped, as NIO does)

    func errorCaught0(error: any Error) {}
}

/// A codec first in an `EpollSocketChannel`'s pipeline that takes the connection's bytes from
/// the channel directly and writes them to it directly (`DirectConnection`), each
/// as the pipeline would have carried them. What the codec hands on to the handlers behind
/// it still goes through the pipeline. Those handlers must not hold reads in `read(context:)`
/// (they pause reading with `autoRead`): a read request goes to the codec alone. Called on
/// the channel's loop.
package protocol EpollDirectHandler: AnyObject {
    /// As `channelRead` with the bytes.
    func directRead(_ bytes: ByteBuffer)
    /// As `channelReadComplete`.
    func directReadComplete()
    /// As `read(context:)`: more bytes are wanted (`DirectConnection.read` asks for them).
    func directReadRequested()
}

/// The connection an `EpollDirectHandler` reads from and writes to directly.
package struct DirectConnection {
    private let channel: EpollSocketChannel

    /// `handler`, first in `channel`'s pipeline (the caller knows it is), takes the bytes read
    /// directly from now on; nil on another kind of channel (NIO's, an embedded one: the
    /// pipeline carries the bytes there).
    package static func attach(_ handler: any EpollDirectHandler, to channel: any Channel) -> DirectConnection? {
        guard let epoll = channel as? EpollSocketChannel, epoll.loop.inEventLoop else { return nil }
        epoll.attach(handler)
        return DirectConnection(channel: epoll)
    }

    /// `handler` leaves (it is removed from the pipeline): the pipeline carries the bytes again.
    package func detach(_ handler: any EpollDirectHandler) { channel.detach(handler) }

    /// As a write that reached the head of the pipeline.
    package func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) { channel.directWrite(buffer, promise: promise) }

    /// As a flush that reached the head of the pipeline.
    package func flush() { channel.flush0() }

    /// As a read request that reached the head of the pipeline.
    package func read() { channel.read0() }
}

/// Carries a value to the loop that alone uses it.
struct UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
