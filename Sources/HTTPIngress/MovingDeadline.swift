import EpollTransport
public import NIOCore

/// One timer for a deadline that moves often: a connection's next request head, an upstream
/// attempt's answer. Moving the deadline later changes only a value; the timer, when it comes
/// first, sleeps again until the deadline; only an earlier deadline re-arms it. So a
/// keep-alive connection schedules no timer per request. Event loop only.
package final class MovingDeadline {
    private let eventLoop: any EventLoop
    /// Held until `stop()`. Owners pass a closure that holds them strongly (a cycle `stop()`
    /// breaks; they stop it when they leave their pipeline), not weakly: a weak reference gives
    /// an object a side table, and then every retain and release of it takes the runtime's slow
    /// path — a connection's handlers are retained and released dozens of times per request.
    private var expired: (() -> Void)?
    private var deadline: NIODeadline?
    private var timer: Scheduled<Void>?
    private var timerAt = NIODeadline.distantFuture

    /// `expired` is called on the loop when a deadline passes (the deadline is cleared first),
    /// until `stop()`.
    package init(eventLoop: any EventLoop, expired: @escaping () -> Void) {
        self.eventLoop = eventLoop
        self.expired = expired
        epollLoop = eventLoop as? EpollEventLoop
    }

    /// The loop, when it is Switchyard's own (its batch time saves a clock read per `set(in:)`).
    private let epollLoop: EpollEventLoop?

    /// A deadline `amount` from now, where now may be the start of the loop's current batch of
    /// events (a fraction of a millisecond ago): for deadlines seconds away (a connection's next
    /// request head), set once per request.
    package func set(in amount: TimeAmount) {
        set(now + amount)
    }

    /// The start of the loop's current batch of events on Switchyard's own loops (no clock
    /// read), else the clock's now.
    package var now: NIODeadline { epollLoop?.batchTime ?? .now() }

    package func set(_ deadline: NIODeadline) {
        self.deadline = deadline
        guard timer == nil || deadline < timerAt else { return }
        timer?.cancel()
        schedule(at: deadline)
    }

    /// No deadline for now (the timer, if it comes, finds none and stops).
    package func clear() { deadline = nil }

    /// No deadline, no timer and no `expired` (the connection is going).
    package func stop() {
        deadline = nil
        expired = nil
        timer?.cancel()
        timer = nil
    }

    private func schedule(at due: NIODeadline) {
        timerAt = due
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        timer = eventLoop.scheduleTask(deadline: due) { bound.value.wake() }
    }

    private func wake() {
        timer = nil
        guard let deadline else { return }
        if deadline <= .now() {
            self.deadline = nil
            expired?()
        } else {
            schedule(at: deadline)
        }
    }
}
