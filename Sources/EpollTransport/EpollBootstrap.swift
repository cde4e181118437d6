import CEpoll
import Dispatch
import Glibc
public import NIOCore
import Synchronization

/// A listening TCP socket on the first loop of an `EpollEventLoopGroup`: each connection it
/// accepts goes to the group's loops in turn, with its pipeline set up by `childInitializer`.
public final class EpollListener: EpollSelectable, @unchecked Sendable {
    // @unchecked: `fd` and `loop` are set once; `ready` runs on the loop.
    private let fd: Int32
    private let loop: EpollEventLoop
    private let group: EpollEventLoopGroup
    private let childInitializer: @Sendable (any Channel) -> EventLoopFuture<Void>
    /// The address it listens on.
    public let localAddress: SocketAddress
    private let closed = Atomic<Bool>(false)

    private init(
        fd: Int32,
        group: EpollEventLoopGroup,
        localAddress: SocketAddress,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) {
        self.fd = fd
        self.group = group
        loop = group.loops[0]
        self.localAddress = localAddress
        self.childInitializer = childInitializer
    }

    /// Listens on `host`:`port` (0: a port the system picks), with `SO_REUSEADDR`.
    public static func bind(
        host: String,
        port: Int,
        backlog: Int32 = 1024,
        group: EpollEventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> EpollListener {
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let family = address.protocol.rawValue
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: cepoll_errno(), reason: "socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard address.withSockAddr({ Glibc.bind(fd, $0, socklen_t($1)) }) == 0 else {
            let error = IOError(errnoCode: cepoll_errno(), reason: "bind(\(host):\(port))")
            Glibc.close(fd)
            throw error
        }
        guard listen(fd, backlog) == 0 else {
            let error = IOError(errnoCode: cepoll_errno(), reason: "listen")
            Glibc.close(fd)
            throw error
        }
        var storage = sockaddr_storage()
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutableBytes(of: &storage) { getsockname(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &size) }
        let listener = EpollListener(
            fd: fd,
            group: group,
            localAddress: EpollSocketChannel.address(storage) ?? address,
            childInitializer: childInitializer
        )
        try await listener.loop.submit { try listener.loop.register(fd, listener, events: EPOLLIN.rawValue) }.get()
        return listener
    }

    func ready(_ events: UInt32) {
        while true {
            let connection = cepoll_accept(fd)
            if connection < 0 {
                if cepoll_errno() == EINTR { continue }
                return  // EAGAIN, or out of descriptors for now (the next readiness retries)
            }
            var one: Int32 = 1
            setsockopt(connection, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let target = group.nextLoop()
            let initializer = childInitializer
            if target === loop {
                Self.adopt(connection, on: target, initializer)
            } else {
                target.execute { Self.adopt(connection, on: target, initializer) }
            }
        }
    }

    func loopStopped() {
        // (Once: a descriptor closed twice may close another's that took its number.)
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        loop.deregister(fd)
        Glibc.close(fd)
    }

    private static func adopt(_ fd: Int32, on loop: EpollEventLoop, _ initializer: @Sendable (any Channel) -> EventLoopFuture<Void>) {
        let channel = EpollSocketChannel(fd: fd, loop: loop)
        initializer(channel).hop(to: loop).assumeIsolatedUnsafeUnchecked().whenComplete { result in
            switch result {
            case .success: channel.activate()
            case .failure(let error): channel.close0(error: error, mode: .all, promise: nil)
            }
        }
    }

    /// Stops listening (connections already accepted stay).
    public func close() async {
        try? await loop.submit { [self] in loopStopped() }.get()
    }
}

/// Opens TCP connections from an `EpollEventLoop`.
public enum EpollConnector {
    /// A connection to `host`:`port` with `TCP_NODELAY`, its pipeline set up by `initializer`
    /// before it becomes active. A host name is resolved off the loop.
    public static func connect(
        host: String,
        port: Int,
        on loop: any EventLoop,
        timeout: TimeAmount,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<any Channel> {
        let loop = loop as! EpollEventLoop
        let promise = loop.makePromise(of: (any Channel).self)
        if let address = try? SocketAddress(ipAddress: host, port: port) {
            loop.onLoop { open(address, on: loop, timeout: timeout, promise: promise, initializer: initializer) }
        } else {
            DispatchQueue.global().async {
                do {
                    let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
                    loop.execute { open(address, on: loop, timeout: timeout, promise: promise, initializer: initializer) }
                } catch {
                    promise.fail(error)
                }
            }
        }
        return promise.futureResult
    }

    private static func open(
        _ address: SocketAddress,
        on loop: EpollEventLoop,
        timeout: TimeAmount,
        promise: EventLoopPromise<any Channel>,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) {
        let fd = socket(address.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return promise.fail(IOError(errnoCode: cepoll_errno(), reason: "socket")) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = address.withSockAddr { Glibc.connect(fd, $0, socklen_t($1)) }
        let code = cepoll_errno()
        guard result == 0 || code == EINPROGRESS else {
            Glibc.close(fd)
            return promise.fail(IOError(errnoCode: code, reason: "connect"))
        }
        // (Completed when the socket turns writable, even if it connected at once.)
        EpollSocketChannel(fd: fd, loop: loop).awaitConnection(promise: promise, timeout: timeout, initializer: initializer)
    }
}
