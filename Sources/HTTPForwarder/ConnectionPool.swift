import NIOCore
import SwitchyardCore

/// A request waiting for, or holding, a slot of a pool.
struct Job {
    var request: ForwardRequest
    var promise: EventLoopPromise<ForwardResponse>
    var deadline: NIODeadline
    /// A reused connection that turns out closed is retried once on a fresh one.
    var mayRetryStale = true
}

/// Keep-alive connections from one event loop to one instance: at most `limit` requests
/// in flight, the rest wait in order until a slot frees or their deadline passes.
/// Confined to its loop: no locks.
final class ConnectionPool {
    let instance: ServiceInstance
    let loop: any EventLoop
    var limit: Int
    private var idle: [HTTPClientConnection] = []
    private var busy: [ObjectIdentifier: HTTPClientConnection] = [:]
    private var slotsInUse = 0
    private var waiting = CircularBuffer<Job>()
    private var shutDown = false

    init(instance: ServiceInstance, loop: any EventLoop, limit: Int) {
        self.instance = instance
        self.loop = loop
        self.limit = max(1, limit)
    }

    func submit(_ job: Job) {
        if shutDown {
            job.promise.fail(ForwardError(.shutdown, "forwarder is shutting down"))
        } else if slotsInUse < limit {
            slotsInUse += 1
            start(job)
        } else {
            waiting.append(job)
        }
    }

    /// Runs a job that holds a slot: on an idle connection, else a new one.
    private func start(_ job: Job) {
        while let connection = idle.popLast() {
            if connection.isActive {
                run(job, on: connection, reused: true)
                return
            }
        }
        let remaining = job.deadline - .now()
        guard remaining > .zero else {
            job.promise.fail(ForwardError(.timeout, "no free connection slot to \(instance) within the timeout"))
            slotFreed(nil)
            return
        }
        // The connect future completes on `loop`, the pool's own: the callback may touch the pool.
        HTTPClientConnection.connect(to: instance, on: loop, timeout: min(remaining, .seconds(5))).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let connection):
                self.run(job, on: connection, reused: false)
            case .failure(let error):
                job.promise.fail(ForwardError(.connectFailed, "cannot connect to \(self.instance.address): \(error)"))
                self.slotFreed(nil)
            }
        }
    }

    private func run(_ job: Job, on connection: HTTPClientConnection, reused: Bool) {
        busy[connection.id] = connection
        connection.execute(job.request, host: instance.address, deadline: job.deadline) { result in
            self.busy.removeValue(forKey: connection.id)
            switch result {
            case .success(let exchange):
                job.promise.succeed(exchange.response)
                self.slotFreed(exchange.reusable ? connection : nil)
            case .failure(let error):
                connection.close()
                if reused, job.mayRetryStale, error.kind == .connectionFailed, error.detail.hasPrefix("connection closed") {
                    var again = job
                    again.mayRetryStale = false
                    self.start(again)  // keeps its slot
                } else {
                    job.promise.fail(error)
                    self.slotFreed(nil)
                }
            }
        }
    }

    /// A slot came free (with a reusable connection or not): the next waiter takes it.
    private func slotFreed(_ connection: HTTPClientConnection?) {
        if let next = waiting.popFirst() {
            if let connection, connection.isActive {
                run(next, on: connection, reused: true)
            } else {
                start(next)
            }
            return
        }
        slotsInUse -= 1
        if let connection {
            if shutDown { connection.close() } else { idle.append(connection) }
        }
    }

    /// Fails overdue requests, waiting or in flight.
    func sweep(now: NIODeadline) {
        while let first = waiting.first, first.deadline <= now {
            waiting.removeFirst()
            first.promise.fail(ForwardError(.timeout, "waited for a free connection slot to \(instance) until the timeout"))
        }
        if waiting.contains(where: { $0.deadline <= now }) {
            let (overdue, keep) = waiting.reduce(into: ([Job](), CircularBuffer<Job>())) { acc, job in
                if job.deadline <= now { acc.0.append(job) } else { acc.1.append(job) }
            }
            waiting = keep
            for job in overdue { job.promise.fail(ForwardError(.timeout, "waited for a free connection slot to \(instance) until the timeout")) }
        }
        for connection in Array(busy.values) { connection.expireIfOverdue(now: now) }
    }

    func shutdown() {
        shutDown = true
        idle.forEach { $0.close() }
        idle = []
        let jobs = waiting
        waiting.removeAll()
        for job in jobs { job.promise.fail(ForwardError(.shutdown, "forwarder is shutting down")) }
    }
}
