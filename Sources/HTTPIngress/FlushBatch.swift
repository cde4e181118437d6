import NIOCore
import NIOPosix

/// A codec whose flushes may wait for the end of its event loop's batch of socket events.
package protocol BatchFlushing: AnyObject {
    /// Sends what the codec wrote and still holds (called once the batch is done).
    func flushBatched()
}

/// The flushes an event loop's thread is asked for while it handles one batch of socket events
/// (what one wait for readiness returned) go out together when the batch is done: a task run
/// before the loop waits again. A peer that is asleep (an upstream between requests, a client
/// waiting for answers) is then woken once for the batch, not once per answer, and the wake-up
/// cost, paid in the writing thread's system calls, falls with the number of wake-ups. The
/// answers of a batch leave at most the batch's handling time later.
package final class FlushBatch {
    // (One per thread, touched only on it.)
    nonisolated(unsafe) private static let current = ThreadSpecificVariable<FlushBatch>()
    /// The thread's event loop; nil on a thread that runs none (a test's embedded channel, say):
    /// flushes there go out at once.
    private let loop: (any EventLoop)?
    private var queued: [any BatchFlushing] = []
    private var scheduled = false

    private init(loop: (any EventLoop)?) { self.loop = loop }

    /// Queues `codec`'s flush for the end of the batch; false when it is to flush now (not on
    /// an event loop's thread).
    package static func enqueue(_ codec: any BatchFlushing) -> Bool {
        let batch: FlushBatch
        if let existing = current.currentValue {
            batch = existing
        } else {
            batch = FlushBatch(loop: MultiThreadedEventLoopGroup.currentEventLoop)
            current.currentValue = batch
        }
        guard let loop = batch.loop else { return false }
        batch.queued.append(codec)
        if !batch.scheduled {
            batch.scheduled = true
            let bound = NIOLoopBound(batch, eventLoop: loop)
            loop.execute { bound.value.run() }
        }
        return true
    }

    private func run() {
        scheduled = false
        let all = queued
        queued.removeAll(keepingCapacity: true)
        for codec in all { codec.flushBatched() }
    }
}
