import Dispatch

/// Waits `nanoseconds` even in a cancelled task. A shutdown that comes as a cancellation (a
/// test's, or an embedding app's) cancels the services' tasks, and `Task.sleep` then returns at
/// once: the bounded waits of a shutdown (draining requests and deliveries, checked every few
/// milliseconds) would spin on a core for their whole bound instead of pausing between checks.
public func pauseEvenIfCancelled(nanoseconds: UInt64) async {
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds))) { done.resume() }
    }
}
