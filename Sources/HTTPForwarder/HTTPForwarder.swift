// HTTPForwarder: the `Forwarder` over NIO HTTP/1.1 keep-alive pools.
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import SwitchyardCore

/// Forwards requests over keep-alive HTTP/1.1 connections with a per-instance
/// concurrency limit (requests beyond it wait for a slot, within their timeout).
///
/// Each event loop has its own pools, so a request never leaves the thread that received
/// its message and the hot path takes no lock; an instance's limit is split evenly across
/// the loops. Timeouts are enforced by one sweep per loop every 10 ms rather than a timer
/// per request.
public final class HTTPForwarder: Forwarder {
    let group: any EventLoopGroup
    private let loops: [ObjectIdentifier: LoopPools]
    private let limits = NIOLockedValueBox([String: Int]())
    public let defaultLimit: Int
    static let sweepInterval = TimeAmount.milliseconds(10)

    public init(group: any EventLoopGroup, defaultConcurrencyLimit: Int = 256) {
        self.group = group
        self.defaultLimit = defaultConcurrencyLimit
        var loops: [ObjectIdentifier: LoopPools] = [:]
        for loop in group.makeIterator() { loops[ObjectIdentifier(loop)] = LoopPools(loop: loop) }
        self.loops = loops
    }

    /// A pool's share of a per-instance limit.
    private func share(of limit: Int) -> Int { max(1, (limit + loops.count - 1) / max(1, loops.count)) }

    /// Sets the per-instance concurrency limit of a service (existing pools adopt it too).
    public func setConcurrencyLimit(_ limit: Int, forService service: String) {
        limits.withLockedValue { $0[service] = limit }
        let perLoop = share(of: limit)
        for pools in loops.values {
            pools.loop.execute { pools.setLimit(perLoop, forService: service) }
        }
    }

    public func anyEventLoop() -> any EventLoop { group.next() }

    public func forward(
        _ request: ForwardRequest,
        to instance: ServiceInstance,
        timeout: TimeAmount,
        on callerLoop: any EventLoop
    ) -> EventLoopFuture<ForwardResponse> {
        guard let pools = loops[ObjectIdentifier(callerLoop)], callerLoop.inEventLoop else {
            // Not on one of our loops (tests, tools): continue on one of ours.
            let loop = loops[ObjectIdentifier(callerLoop)]?.loop ?? group.next()
            return loop.flatSubmit { self.forward(request, to: instance, timeout: timeout, on: loop) }
        }
        let limit = pools.hasPool(for: instance) ? 0 : share(of: limits.withLockedValue { $0[instance.service] } ?? defaultLimit)
        return pools.forward(request, to: instance, deadline: .now() + timeout, newPoolLimit: limit)
    }

    /// Closes idle connections and fails waiting requests.
    public func shutdown() {
        for pools in loops.values {
            pools.loop.execute { pools.shutdown() }
        }
    }
}

/// The pools of one event loop, and its timeout sweep.
///
/// `@unchecked Sendable`: created on any thread, but every method runs on `loop`
/// (`HTTPForwarder` only calls them there), which is what makes the hot path lock-free.
final class LoopPools: @unchecked Sendable {
    let loop: any EventLoop
    private var pools: [String: ConnectionPool] = [:]
    private var sweeper: RepeatedTask?
    private var shutDown = false

    init(loop: any EventLoop) { self.loop = loop }

    func hasPool(for instance: ServiceInstance) -> Bool { pools[instance.key] != nil }

    func forward(_ request: ForwardRequest, to instance: ServiceInstance, deadline: NIODeadline, newPoolLimit: Int) -> EventLoopFuture<
        ForwardResponse
    > {
        loop.assertInEventLoop()
        let promise = loop.makePromise(of: ForwardResponse.self)
        let pool: ConnectionPool
        if let existing = pools[instance.key] {
            pool = existing
        } else {
            pool = ConnectionPool(instance: instance, loop: loop, limit: newPoolLimit)
            pools[instance.key] = pool
            startSweeper()
        }
        if shutDown {
            promise.fail(ForwardError(.shutdown, "forwarder is shutting down"))
        } else {
            pool.submit(Job(request: request, promise: promise, deadline: deadline))
        }
        return promise.futureResult
    }

    func setLimit(_ limit: Int, forService service: String) {
        for pool in pools.values where pool.instance.service == service { pool.limit = limit }
    }

    private func startSweeper() {
        guard sweeper == nil, !shutDown else { return }
        sweeper = loop.scheduleRepeatedTask(initialDelay: HTTPForwarder.sweepInterval, delay: HTTPForwarder.sweepInterval) { _ in
            let now = NIODeadline.now()
            for pool in self.pools.values { pool.sweep(now: now) }
        }
    }

    func shutdown() {
        shutDown = true
        sweeper?.cancel()
        sweeper = nil
        for pool in pools.values { pool.shutdown() }
    }
}
