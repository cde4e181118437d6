import NIOConcurrencyHelpers
import NIOCore
import SwitchyardCore

/// Keep-alive connections to one instance, at most `limit` requests in flight;
/// requests beyond the limit wait (in order) for a free slot or their timeout.
final class ConnectionPool: Sendable {
    enum Lease: Sendable {
        case reuse(HTTPClientConnection)
        case connect
    }

    struct Waiter: Sendable {
        let promise: EventLoopPromise<Lease>
    }

    struct State {
        var idle: [HTTPClientConnection] = []
        var active = 0
        var limit: Int
        var waiters = CircularBuffer<Waiter>()
        var shutDown = false
    }

    let instance: ServiceInstance
    private let state: NIOLockedValueBox<State>

    init(instance: ServiceInstance, limit: Int) {
        self.instance = instance
        state = NIOLockedValueBox(State(limit: max(1, limit)))
    }

    func setLimit(_ limit: Int) {
        state.withLockedValue { $0.limit = max(1, limit) }
    }

    /// A slot: an idle connection, leave to connect, or a wait for either.
    func lease(on loop: any EventLoop) -> EventLoopFuture<Lease> {
        enum Action { case now(Lease), wait(EventLoopFuture<Lease>), closed }
        let action: Action = state.withLockedValue { s in
            if s.shutDown { return .closed }
            if s.active < s.limit {
                s.active += 1
                while let c = s.idle.popLast() {
                    if c.isActive { return .now(.reuse(c)) }
                }
                return .now(.connect)
            }
            let p = loop.makePromise(of: Lease.self)
            s.waiters.append(Waiter(promise: p))
            return .wait(p.futureResult)
        }
        switch action {
        case .now(let lease): return loop.makeSucceededFuture(lease)
        case .wait(let f): return f
        case .closed: return loop.makeFailedFuture(ForwardError(.shutdown, "forwarder is shutting down"))
        }
    }

    /// Returns a slot; a reusable connection goes to the next waiter or the idle list.
    func release(_ connection: HTTPClientConnection?, reusable: Bool) {
        let keep = reusable && connection?.isActive == true
        enum Action { case hand(Waiter, Lease), close, none }
        let action: Action = state.withLockedValue { s in
            if let w = s.waiters.popFirst() {
                if keep, let connection { return .hand(w, .reuse(connection)) }
                return .hand(w, .connect)
            }
            s.active -= 1
            if keep, let connection, !s.shutDown {
                s.idle.append(connection)
                return .none
            }
            return .close
        }
        switch action {
        case .hand(let w, let lease):
            if case .connect = lease { connection?.close() }
            w.promise.succeed(lease)
        case .close: connection?.close()
        case .none: break
        }
    }

    var inFlight: Int { state.withLockedValue { $0.active } }

    func shutdown() {
        let (idle, waiters) = state.withLockedValue { s -> ([HTTPClientConnection], [Waiter]) in
            s.shutDown = true
            let idle = s.idle
            s.idle = []
            let w = Array(s.waiters)
            s.waiters.removeAll()
            return (idle, w)
        }
        idle.forEach { $0.close() }
        waiters.forEach { $0.promise.fail(ForwardError(.shutdown, "forwarder is shutting down")) }
    }
}
