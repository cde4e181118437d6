// HTTPForwarder: the `Forwarder` over NIO HTTP/1.1 keep-alive pools, one pool per instance.
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import SwitchyardCore

/// Forwards requests over keep-alive HTTP/1.1 connections with a per-instance
/// concurrency limit (requests beyond it wait for a slot, within their timeout).
public final class HTTPForwarder: Forwarder {
    let group: any EventLoopGroup
    private let pools = NIOLockedValueBox([String: ConnectionPool]())
    private let limits = NIOLockedValueBox([String: Int]())
    public let defaultLimit: Int

    public init(group: any EventLoopGroup, defaultConcurrencyLimit: Int = 256) {
        self.group = group
        self.defaultLimit = defaultConcurrencyLimit
    }

    /// Sets the per-instance concurrency limit of a service (applies to existing pools too).
    public func setConcurrencyLimit(_ limit: Int, forService service: String) {
        limits.withLockedValue { $0[service] = limit }
        pools.withLockedValue { pools in
            for pool in pools.values where pool.instance.service == service { pool.setLimit(limit) }
        }
    }

    public func anyEventLoop() -> any EventLoop { group.next() }

    public func forward(_ request: ForwardRequest, to instance: ServiceInstance, timeout: TimeAmount) -> EventLoopFuture<ForwardResponse> {
        let loop = group.any()
        let pool = self.pool(for: instance)
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

    private func pool(for instance: ServiceInstance) -> ConnectionPool {
        let key = "\(instance.service)@\(instance.address)"
        if let pool = pools.withLockedValue({ $0[key] }) { return pool }
        let limit = limits.withLockedValue { $0[instance.service] } ?? defaultLimit
        return pools.withLockedValue { pools in
            if let pool = pools[key] { return pool }
            let pool = ConnectionPool(instance: instance, limit: limit)
            pools[key] = pool
            return pool
        }
    }

    /// Requests in flight to an instance (for tests and metrics).
    public func inFlight(to instance: ServiceInstance) -> Int {
        pools.withLockedValue { $0["\(instance.service)@\(instance.address)"] }?.inFlight ?? 0
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
