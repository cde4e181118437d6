import NIOConcurrencyHelpers
public import NIOCore
public import SwitchyardCore

/// Per-device order: messages of one device are delivered one at a time, in the order they
/// were dispatched, even across retries (a device waits on its own head message); devices
/// never wait on each other. Messages without a device go at once, up to `unorderedLimit` of
/// them in delivery; more wait in arrival order for a slot (a flood of them — a topic no device
/// pattern matches — would otherwise all reach the forwarder's queues at once, wait out their
/// timeouts there and be retried together).
///
/// A device with messages pending is owned by one event loop, which keeps its queue without
/// locks. An idle device is given to the loop its next message arrives on, so a device that
/// talks over one connection is served without a thread hop; a striped table (one short lock
/// when a message is dispatched and when it finishes) says which loop owns a busy device.
public final class OrderedDispatcher: Sendable {
    /// Delivers one message on the loop given; calls `done` (once, on any loop) when its
    /// outcome is final. A callback, not a future: one future less per message.
    public typealias Deliver = @Sendable (Envelope, any EventLoop, _ done: @escaping @Sendable () -> Void) -> Void

    private let shards: [Shard]
    private let owners: [NIOLockedValueBox<[String: Owner]>]
    /// Messages without a device in delivery at once, at most.
    public let unorderedLimit: Int
    private let unordered = NIOLockedValueBox(Unordered())

    struct Unordered {
        var inDelivery = 0
        var waiting = CircularBuffer<Shard.Item>()
    }

    struct Owner {
        var shard: Int
        /// Dispatched and not finished.
        var pending: Int
        /// Handed to the owner loop and not yet queued there (inline queueing waits for these).
        var inTransit: Int
    }

    public init(group: any EventLoopGroup, unorderedLimit: Int = 1024) {
        self.unorderedLimit = max(1, unorderedLimit)
        let owners = (0..<16).map { _ in NIOLockedValueBox([String: Owner]()) }
        self.owners = owners
        shards = group.makeIterator().map { loop in
            Shard(loop: loop) { device in
                owners[Int(StableHash.fnv1a(device) % UInt64(owners.count))].withLockedValue { table in
                    guard var owner = table[device] else { return }
                    owner.pending -= 1
                    table[device] = owner.pending > 0 ? owner : nil
                }
            }
        }
        precondition(!shards.isEmpty, "an event loop group has at least one loop")
    }

    /// Queues `envelope` behind its device's earlier messages; `deliver` runs when it is its turn.
    public func dispatch(_ envelope: Envelope, deliver: @escaping Deliver) {
        guard let device = envelope.device else {
            let item = Shard.Item(envelope: envelope, deliver: deliver)
            let now = unordered.withLockedValue { u in
                guard u.inDelivery < unorderedLimit else {
                    u.waiting.append(item)
                    return false
                }
                u.inDelivery += 1
                return true
            }
            if now { startUnordered(item) }
            return
        }
        let hash = StableHash.fnv1a(device)
        let table = owners[Int(hash % UInt64(owners.count))]
        let here = shards.firstIndex { $0.loop.inEventLoop }
        let item = Shard.Item(envelope: envelope, deliver: deliver)
        let inline: Shard? = table.withLockedValue { owners in
            var owner = owners[device] ?? Owner(shard: here ?? Int(hash % UInt64(shards.count)), pending: 0, inTransit: 0)
            owner.pending += 1
            let shard = shards[owner.shard]
            if shard.loop.inEventLoop && owner.inTransit == 0 {
                owners[device] = owner
                return shard
            }
            // Handed over under the lock, so the owner loop queues this device's messages in order.
            owner.inTransit += 1
            owners[device] = owner
            shard.loop.execute {
                table.withLockedValue { $0[device]?.inTransit -= 1 }
                shard.enqueue(device, item)
            }
            return nil
        }
        inline?.enqueue(device, item)
    }

    /// A message without a device, on any loop; its slot goes to the next waiting one when it ends.
    private func startUnordered(_ item: Shard.Item) {
        let loop = shards[Int(FastRandom.next() % UInt64(shards.count))].loop
        loop.execute {
            item.deliver(item.envelope, loop) {
                let next = self.unordered.withLockedValue { u -> Shard.Item? in
                    if let next = u.waiting.popFirst() { return next }
                    u.inDelivery -= 1
                    return nil
                }
                if let next { self.startUnordered(next) }
            }
        }
    }

    /// Messages without a device in delivery and waiting for a slot (for tests).
    public var unorderedCounts: (inDelivery: Int, waiting: Int) {
        unordered.withLockedValue { ($0.inDelivery, $0.waiting.count) }
    }

    /// Devices with messages waiting or in delivery (for metrics and tests).
    public func busyDevices() -> EventLoopFuture<Int> {
        let first = shards[0].loop
        let counts = shards.map { shard in shard.loop.submit { shard.queues.count } }
        return EventLoopFuture.reduce(0, counts, on: first, +)
    }

    /// One loop's devices. `@unchecked Sendable`: every method runs on `loop`.
    final class Shard: @unchecked Sendable {
        struct Item {
            var envelope: Envelope
            var deliver: Deliver
        }

        let loop: any EventLoop
        /// Waiting messages per device; a device is present while its head is in delivery.
        /// The queue's buffer is made only when a second message arrives (most devices never
        /// have one waiting).
        var queues: [String: CircularBuffer<Item>?] = [:]
        let finished: @Sendable (String) -> Void

        init(loop: any EventLoop, finished: @escaping @Sendable (String) -> Void) {
            self.loop = loop
            self.finished = finished
        }

        func enqueue(_ device: String, _ item: Item) {
            if let index = queues.index(forKey: device) {
                if queues.values[index] == nil { queues.values[index] = CircularBuffer(initialCapacity: 4) }
                queues.values[index]!.append(item)
                return
            }
            queues[device] = .some(nil)
            start(device, item)
        }

        private func start(_ device: String, _ item: Item) {
            item.deliver(item.envelope, loop) { [self] in
                if loop.inEventLoop {
                    ended(device)
                } else {
                    loop.execute { self.ended(device) }
                }
            }
        }

        private func ended(_ device: String) {
            finished(device)
            next(device)
        }

        private func next(_ device: String) {
            guard let index = queues.index(forKey: device), let following = queues.values[index]?.popFirst() else {
                queues.removeValue(forKey: device)
                return
            }
            start(device, following)
        }
    }
}
