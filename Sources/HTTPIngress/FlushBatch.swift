import NIOCore
import NIOPosix

/// A codec whose flushes may wait for the end of its event loop's batch of socket events.
/// (Its state is read and set here one access at a time: a flush can re-enter the codec
/// through NIO, so none may happen inside a mutating access to the codec's own state.)
package protocol BatchFlushing: AnyObject {
    /// A flush waits for the end of the batch.
    var flushQueued: Bool { get set }
    /// The codec's place in its pipeline (nil once removed: nothing is left to flush then).
    var flushContext: ChannelHandlerContext? { get }
    /// The batch of the codec's thread, kept from its first flush (a channel stays on its
    /// event loop's thread): not looked up per flush.
    var flushBatch: FlushBatch? { get set }
}

extension BatchFlushing {
    /// What the codec wrote goes out when the batch is done, or now off an event loop's thread.
    package func flushAtBatchEnd(context: ChannelHandlerContext) {
        if flushQueued { return }
        let batch: FlushBatch
        if let kept = flushBatch {
            batch = kept
        } else {
            batch = FlushBatch.ofThisThread()
            flushBatch = batch
        }
        if batch.enqueue(self) { flushQueued = true } else { context.flush() }
    }

    /// The batch is done.
    func flushBatched() {
        flushQueued = false
        flushContext?.flush()
    }

    /// A close comes: what waits for the batch goes out first (closing would drop it).
    package func flushBeforeClose(context: ChannelHandlerContext) {
        if flushQueued { context.flush() }
    }
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
    /// The batch being flushed (kept: its storage is reused, no allocation per batch).
    private var flushing: [any BatchFlushing] = []
    private var scheduled = false
    /// The task that runs the batch, made once (not a closure per batch).
    private var task: (@Sendable () -> Void)?

    private init(loop: (any EventLoop)?) { self.loop = loop }

    /// The calling thread's batch.
    package static func ofThisThread() -> FlushBatch {
        if let existing = current.currentValue { return existing }
        let batch = FlushBatch(loop: MultiThreadedEventLoopGroup.currentEventLoop)
        current.currentValue = batch
        return batch
    }

    /// Queues `codec`'s flush for the end of the batch; false when it is to flush now (not on
    /// an event loop's thread). Called on the batch's thread.
    package func enqueue(_ codec: any BatchFlushing) -> Bool {
        guard let loop else { return false }
        queued.append(codec)
        if !scheduled {
            scheduled = true
            loop.execute(runTask())
        }
        return true
    }

    private func runTask() -> @Sendable () -> Void {
        if let task { return task }
        // (Unowned: the batch keeps its task, and goes with its thread. Its tasks run on that
        // thread while its loop runs, before then.)
        let batch = Unowned(batch: self)
        let made: @Sendable () -> Void = { batch.batch.run() }
        task = made
        return made
    }

    private struct Unowned: @unchecked Sendable {  // used only on the batch's thread
        unowned let batch: FlushBatch
    }

    private func run() {
        scheduled = false
        // Flushes may queue more (for the next batch): the two lists swap, neither is copied.
        swap(&queued, &flushing)
        for codec in flushing { codec.flushBatched() }
        flushing.removeAll(keepingCapacity: true)
    }
}
