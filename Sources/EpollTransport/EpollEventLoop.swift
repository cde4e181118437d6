import CEpoll
import Dispatch
import Glibc
import NIOConcurrencyHelpers
public import NIOCore
import Synchronization

/// What waits on an event loop for its descriptor to be ready.
protocol EpollSelectable: AnyObject {
    /// The descriptor is ready (`EPOLLIN`, `EPOLLOUT`, `EPOLLERR`, `EPOLLHUP` bits); on the loop.
    func ready(_ events: UInt32)
    /// The loop stops: the descriptor closes.
    func loopStopped()
}

/// An event loop of Switchyard's own on one thread: `epoll` for sockets, a timer heap for
/// scheduled tasks, a queue for tasks from other threads (woken by an `eventfd`). It is a NIO
/// `EventLoop`, so NIO's pipelines, futures and handlers run on it unchanged; its sockets are
/// `EpollSocketChannel`s, lighter than NIO's: a read reuses one buffer, and the flushes asked
/// for while one batch of ready sockets is handled are written when the batch is done (a
/// sleeping peer is woken once per batch).
public final class EpollEventLoop: EventLoop, @unchecked Sendable {
    // @unchecked: what other threads touch is behind `lock` or atomic; the rest is the loop's.
    private let epollFD: Int32
    private let wakeFD: Int32
    private let name: String
    private let threadID = Atomic<UInt>(0)
    /// When the loop's current batch of socket events began (read once per batch, on the
    /// loop's thread only): deadlines seconds away are set from it, without a clock read each.
    package private(set) var batchTime = NIODeadline.now()
    private let lock = NIOLock()
    // Behind `lock`:
    private var incoming: [@Sendable () -> Void] = []
    /// The loop is awake or already woken: a task from another thread need not write the eventfd.
    private var awake = true
    private var stopRequested = false
    /// The loop has stopped and closed its descriptors.
    private var closed = false
    private lazy var stoppedQueue = DispatchQueue(label: name + "-stopped")
    private var stopped: [@Sendable () -> Void] = []
    // The loop's own:
    private var running: [@Sendable () -> Void] = []
    private var table: [Registration] = []
    private var generation: UInt32 = 0
    private var timers = TimerHeap()
    private var flushQueue: [EpollSocketChannel] = []
    private var flushing: [EpollSocketChannel] = []
    /// The loop stopped and closed its epoll descriptor and eventfd (set on the loop's thread
    /// before its late tasks run).
    private var descriptorsClosed = false

    private struct Registration {
        var generation: UInt32 = 0
        var selectable: (any EpollSelectable)?
    }

    init(name: String) throws {
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else { throw IOError(errnoCode: cepoll_errno(), reason: "epoll_create1") }
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard wakeFD >= 0 else { throw IOError(errnoCode: cepoll_errno(), reason: "eventfd") }
        self.name = name
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        cepoll_set_data(&event, UInt64(UInt32(bitPattern: wakeFD)))
        guard epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event) == 0 else {
            throw IOError(errnoCode: cepoll_errno(), reason: "epoll_ctl")
        }
    }

    /// Starts the loop's thread; returns once it runs.
    func start() {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let created = pthread_create(
            &thread,
            nil,
            { argument in
                let loop = Unmanaged<EpollEventLoop>.fromOpaque(argument!).takeRetainedValue()
                loop.run()
                return nil
            },
            context
        )
        precondition(created == 0, "cannot start an event loop thread (errno \(created))")
        pthread_detach(thread)
        while threadID.load(ordering: .acquiring) == 0 { sched_yield() }
    }

    // MARK: - EventLoop

    public var inEventLoop: Bool { UInt(pthread_self()) == threadID.load(ordering: .relaxed) }

    public var now: NIODeadline { .now() }

    public func execute(_ task: @escaping @Sendable () -> Void) {
        lock.withLock {
            guard !closed else {
                // A stopped loop runs late tasks (a future's callbacks, say) one by one on a
                // queue: awaiting a future of one of its connections does not hang.
                stoppedQueue.async {
                    // (The queue's thread is the loop's while the task runs: one at a time.)
                    self.threadID.store(UInt(pthread_self()), ordering: .releasing)
                    task()
                }
                return
            }
            incoming.append(task)
            guard !awake else { return }
            awake = true
            // (Under the lock: the eventfd is not closed meanwhile. Only a sleeping loop is woken.)
            wakeUp()
        }
    }

    public func submit<T>(_ task: @escaping @Sendable () throws -> T) -> EventLoopFuture<T> {
        let promise = makePromise(of: T.self)
        execute {
            do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
        }
        return promise.futureResult
    }

    @discardableResult
    public func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        let timer = Timer(due: deadline.uptimeNanoseconds) {
            do { promise.assumeIsolatedUnsafeUnchecked().succeed(try task()) } catch { promise.fail(error) }
        }
        if inEventLoop {
            timers.insert(timer)
        } else {
            execute { self.timers.insert(timer) }
        }
        return Scheduled(promise: promise) {
            self.onLoop {
                guard timer.task != nil else { return }
                timer.task = nil
                promise.fail(EventLoopError.cancelled)
            }
        }
    }

    @discardableResult
    public func scheduleTask<T>(in amount: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + amount, task)
    }

    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
        let done = lock.withLock {
            guard !closed else { return true }
            stopRequested = true
            stopped.append { queue.async { callback(nil) } }
            wakeUp()
            return false
        }
        if done { queue.async { callback(nil) } }
    }

    // MARK: - Registrations (on the loop)

    func register(_ fd: Int32, _ selectable: any EpollSelectable, events: UInt32) throws {
        guard !descriptorsClosed else { throw EventLoopError.shutdown }
        generation &+= 1
        if Int(fd) >= table.count { table.append(contentsOf: repeatElement(Registration(), count: Int(fd) + 1 - table.count + 64)) }
        table[Int(fd)] = Registration(generation: generation, selectable: selectable)
        try control(EPOLL_CTL_ADD, fd, events: events)
    }

    func modify(_ fd: Int32, events: UInt32) throws {
        guard !descriptorsClosed else { return }
        try control(EPOLL_CTL_MOD, fd, events: events)
    }

    func deregister(_ fd: Int32) {
        // (After the stop the epoll descriptor is closed: its number may be another's now.)
        guard !descriptorsClosed else { return }
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, nil)
        if Int(fd) < table.count { table[Int(fd)] = Registration() }
    }

    private func control(_ operation: Int32, _ fd: Int32, events: UInt32) throws {
        var event = epoll_event()
        event.events = events
        cepoll_set_data(&event, UInt64(table[Int(fd)].generation) << 32 | UInt64(UInt32(bitPattern: fd)))
        guard epoll_ctl(epollFD, operation, fd, &event) == 0 else { throw IOError(errnoCode: cepoll_errno(), reason: "epoll_ctl") }
    }

    /// `channel` flushed: its writes go out when the current batch of ready sockets is done.
    func queueFlush(_ channel: EpollSocketChannel) { flushQueue.append(channel) }

    /// Runs `body` now when on the loop, else as a task.
    func onLoop(_ body: @escaping @Sendable () -> Void) {
        if inEventLoop { body() } else { execute(body) }
    }

    // MARK: - The loop

    private func wakeUp() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    private func run() {
        cepoll_name_thread(String(name.prefix(15)))
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        let capacity: Int32 = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(capacity))
        defer { events.deallocate() }
        while true {
            var timeout: Int32 = -1
            let (more, stop) = lock.withLock { () -> (Bool, Bool) in
                if incoming.isEmpty && !stopRequested { awake = false }
                return (!incoming.isEmpty, stopRequested)
            }
            if stop { break }
            if more || !flushQueue.isEmpty {
                timeout = 0
            } else if let due = timers.first?.due {
                let now = NIODeadline.now().uptimeNanoseconds
                timeout = due <= now ? 0 : Int32(clamping: (due - now + 999_999) / 1_000_000)
            }
            let count = epoll_wait(epollFD, events, capacity, timeout)
            lock.withLock { awake = true }
            batchTime = .now()
            if count > 0 {
                for i in 0..<Int(count) {
                    let data = cepoll_data(events + i)
                    let fd = Int(data & 0xffff_ffff)
                    if fd == Int(wakeFD) {
                        var value: UInt64 = 0
                        _ = read(wakeFD, &value, 8)
                        continue
                    }
                    guard fd < table.count, table[fd].generation == UInt32(truncatingIfNeeded: data >> 32),
                        let selectable = table[fd].selectable
                    else { continue }
                    selectable.ready(events[i].events)
                }
            }
            flushQueued()
            runTimers()
            runTasks()
            flushQueued()
        }
        // What is still open closes, as with NIO's loops (its handlers hear of it).
        for registration in table { registration.selectable?.loopStopped() }
        table = []
        for _ in 0..<16 {
            runTasks()
            if lock.withLock({ incoming.isEmpty }) { break }
        }
        descriptorsClosed = true
        let callbacks = lock.withLock {
            closed = true
            Glibc.close(epollFD)
            Glibc.close(wakeFD)
            return stopped
        }
        for callback in callbacks { callback() }
    }

    private func flushQueued() {
        while !flushQueue.isEmpty {
            swap(&flushQueue, &flushing)
            for channel in flushing { channel.flushQueuedWrites() }
            flushing.removeAll(keepingCapacity: true)
        }
    }

    private func runTimers() {
        guard timers.first != nil else { return }
        let now = NIODeadline.now().uptimeNanoseconds
        while let timer = timers.first, timer.due <= now {
            timers.removeFirst()
            if let task = timer.task {
                timer.task = nil
                task()
            }
        }
    }

    private func runTasks() {
        lock.withLock { swap(&incoming, &running) }
        for task in running { task() }
        running.removeAll(keepingCapacity: true)
    }
}

/// A scheduled task (nil once run or cancelled).
final class Timer: @unchecked Sendable {  // touched on its loop only
    let due: UInt64
    /// Its place among timers due at the same time (set by the heap it goes into).
    fileprivate(set) var order: UInt64 = 0
    var task: (() -> Void)?

    init(due: UInt64, task: @escaping () -> Void) {
        self.due = due
        self.task = task
    }

    func precedes(_ other: Timer) -> Bool { due < other.due || (due == other.due && order < other.order) }
}

/// The earliest timer first.
struct TimerHeap {
    private var heap: [Timer] = []
    /// Timers due at the same time fire in the order they were scheduled.
    private var inserted: UInt64 = 0

    var first: Timer? { heap.first }

    mutating func insert(_ timer: Timer) {
        inserted &+= 1
        timer.order = inserted
        heap.append(timer)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func removeFirst() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { break }
            var child = left
            if left + 1 < heap.count && heap[left + 1].precedes(heap[left]) { child = left + 1 }
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            parent = child
        }
    }
}

/// Event loops of Switchyard's own, one thread each; connections are spread over them in turn.
public final class EpollEventLoopGroup: EventLoopGroup, @unchecked Sendable {
    let loops: [EpollEventLoop]
    private let counter = Atomic<Int>(0)

    public init(threads: Int, name: String = "sy-epoll") throws {
        loops = try (0..<max(1, threads)).map { try EpollEventLoop(name: "\(name)-\($0)") }
        for loop in loops { loop.start() }
    }

    func nextLoop() -> EpollEventLoop {
        loops[counter.wrappingAdd(1, ordering: .relaxed).oldValue % loops.count]
    }

    public func next() -> any EventLoop { nextLoop() }

    public func any() -> any EventLoop { loops.first(where: \.inEventLoop) ?? nextLoop() }

    public func makeIterator() -> EventLoopIterator { EventLoopIterator(loops) }

    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
        let left = NIOLockedValueBox(loops.count)
        let done = { @Sendable in
            if left.withLockedValue({
                $0 -= 1; return $0
            }) == 0 {
                queue.async { callback(nil) }
            }
        }
        for loop in loops { loop.shutdownGracefully(queue: queue) { _ in done() } }
    }
}
