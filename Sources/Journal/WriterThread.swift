import Foundation

/// The journal's writer runs on its own thread: fsync blocks, and must never block an event loop.
final class WriterThread: @unchecked Sendable {
    // @unchecked: `body` is set once at init and only run by the thread.
    private let thread: Thread

    init(_ body: @escaping @Sendable () -> Void) {
        thread = Thread(block: body)
        thread.name = "switchyard-journal"
    }

    func start() { thread.start() }
}

/// A mutex and condition for "wait until this holds".
final class ConditionVariable: @unchecked Sendable {
    // @unchecked: NSCondition is thread-safe.
    private let condition = NSCondition()

    /// Blocks until `predicate` is true (checked under the condition's lock, re-checked on each signal).
    func wait(until predicate: () -> Bool) {
        condition.lock()
        while !predicate() { condition.wait() }
        condition.unlock()
    }

    /// Blocks until `predicate` is true or `deadline` passes.
    func wait(until predicate: () -> Bool, deadline: Date) {
        condition.lock()
        while !predicate() && condition.wait(until: deadline) {}
        condition.unlock()
    }

    func signal() {
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }
}
