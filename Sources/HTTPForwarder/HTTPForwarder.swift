// HTTPForwarder: the `Forwarder` over NIO HTTP/1.1 keep-alive pools, one pool per instance.
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import SwitchyardCore

/// Forwards requests over keep-alive HTTP/1.1 connections with a per-instance
/// concurrency limit (requests beyond it wait for a slot, within their timeout).
///
/// Each event loop has its own pool per instance, so a request never leaves the thread
/// that received its message; the instance's limit is split evenly across the loops.
public final class HTTPForwarder: Forwarder {
    let group: any EventLoopGroup
    private let pools = NIOLockedValueBox([PoolKey: ConnectionPool]())
    private let limits = NIOLockedValueBox([String: Int]())
    public let defaultLimit: Int

    private let loops: [ObjectIdentifier: any EventLoop]

    public init(group: any EventLoopGroup, defaultConcurrencyLimit: Int = 256) {
        self.group = group
        self.defaultLimit = defaultConcurrencyLimit
        var loops: [ObjectIdentifier: any EventLoop] = [:]
        for loop in group.makeIterator() { loops[ObjectIdentifier(loop)] = loop }
        self.loops = loops
    }

    /// A pool's share of a per-instance limit.
    private func share(of limit: Int) -> Int { max(1, (limit + loops.count - 1) / max(1, loops.count)) }

    /// Sets the per-instance concurrency limit of a service (applies to existing pools too).
    public func setConcurrencyLimit(_ limit: Int, forService service: String) {
        limits.withLockedValue { $0[service] = limit }
        let perLoop = share(of: limit)
        pools.withLockedValue { pools in
            for pool in pools.values where pool.instance.service == service { pool.setLimit(perLoop) }
        }
    }

    public func anyEventLoop() -> any EventLoop { group.next() }

    public func forward(
        _ request: ForwardRequest,
        to instance: ServiceInstance,
        timeout: TimeAmount,
        on callerLoop: any EventLoop
    ) -> EventLoopFuture<ForwardResponse> {
        // Connections live on this group's loops; a caller on a foreign loop gets one of ours.
        let loop = loops[ObjectIdentifier(callerLoop)] ?? group.next()
        let pool = self.pool(for: instance, on: loop)
        let deadline = NIODeadline.now() + timeout
        return pool.lease(on: loop).flatMap { lease in
            self.run(request, lease: lease, pool: pool, deadline: deadline, loop: loop, retryStale: true)
        }
    }

    /// Runs the request on the leased slot. A reused connection that the instance had
    /// already closed (keep-alive race) is retried once on a fresh connection.
    private func run(
        _ request: ForwardRequest,
        lease: ConnectionPool.Lease,
        pool: ConnectionPool,
        deadline: NIODeadline,
        loop: any EventLoop,
        retryStale: Bool
    ) -> EventLoopFuture<ForwardResponse> {
        let remaining = deadline - .now()
        guard remaining > .zero else {
            pool.release(nil, reusable: false)
            return loop.makeFailedFuture(ForwardError(.timeout, "no free connection slot to \(pool.instance) within the timeout"))
        }
        let connection: EventLoopFuture<HTTPClientConnection>
        let reused: Bool
        switch lease {
        case .reuse(let c):
            connection = loop.makeSucceededFuture(c)
            reused = true
        case .connect:
            connection = HTTPClientConnection.connect(to: pool.instance, on: loop, timeout: min(remaining, .seconds(5)))
                .flatMapErrorThrowing { error in
                    throw ForwardError(.connectFailed, "cannot connect to \(pool.instance.address): \(error)")
                }
            reused = false
        }
        let host = pool.instance.address
        return connection.flatMapError { error in
            pool.release(nil, reusable: false)
            return loop.makeFailedFuture(error)
        }.flatMap { conn in
            conn.execute(request, host: host, timeout: remaining)
                .hop(to: loop)
                .map { response, reusable in
                    pool.release(conn, reusable: reusable)
                    return response
                }
                .flatMapError { error in
                    if reused, retryStale, let fe = error as? ForwardError, fe.kind == .connectionFailed,
                        fe.detail.hasPrefix("connection closed")
                    {
                        conn.close()
                        return self.run(request, lease: .connect, pool: pool, deadline: deadline, loop: loop, retryStale: false)
                    }
                    pool.release(conn, reusable: false)
                    return loop.makeFailedFuture(error)
                }
        }
    }

    private func pool(for instance: ServiceInstance, on loop: any EventLoop) -> ConnectionPool {
        let key = PoolKey(service: instance.service, address: instance.address, loop: ObjectIdentifier(loop))
        if let pool = pools.withLockedValue({ $0[key] }) { return pool }
        let limit = share(of: limits.withLockedValue { $0[instance.service] } ?? defaultLimit)
        return pools.withLockedValue { pools in
            if let pool = pools[key] { return pool }
            let pool = ConnectionPool(instance: instance, limit: limit)
            pools[key] = pool
            return pool
        }
    }

    /// Requests in flight to an instance (for tests and metrics).
    public func inFlight(to instance: ServiceInstance) -> Int {
        pools.withLockedValue { pools in
            pools.filter { $0.key.service == instance.service && $0.key.address == instance.address }.values.reduce(0) { $0 + $1.inFlight }
        }
    }

    struct PoolKey: Hashable {
        var service: String
        var address: String
        var loop: ObjectIdentifier
    }

    /// Closes idle connections and fails waiting requests.
    public func shutdown() {
        let all = pools.withLockedValue { p in
            let v = Array(p.values)
            p.removeAll()
            return v
        }
        all.forEach { $0.shutdown() }
    }
}
