public import NIOCore
public import SwitchyardCore

/// Per-device order: messages of one device are delivered one at a time, in the order they
/// were dispatched, even across retries (a device waits on its own head message); devices
/// never wait on each other. Devices are spread over the event loops by a stable hash, and
/// each loop keeps its devices' queues without locks. Messages without a device go at once.
public final class OrderedDispatcher: Sendable {
    /// Delivers one message; the future completes when its outcome is final.
    public typealias Deliver = @Sendable (Envelope, any EventLoop) -> EventLoopFuture<Void>

    private let shards: [Shard]

    public init(group: any EventLoopGroup) {
        shards = group.makeIterator().map { Shard(loop: $0) }
        precondition(!shards.isEmpty, "an event loop group has at least one loop")
    }

    /// Queues `envelope` behind its device's earlier messages; `deliver` runs when it is its turn.
    public func dispatch(_ envelope: Envelope, deliver: @escaping Deliver) {
        guard let device = envelope.device else {
            let loop = shards[Int(FastRandom.next() % UInt64(shards.count))].loop
            loop.execute { _ = deliver(envelope, loop) }
            return
        }
        let shard = shards[Int(StableHash.fnv1a(device) % UInt64(shards.count))]
        let item = Shard.Item(envelope: envelope, deliver: deliver)
        if shard.loop.inEventLoop {
            shard.enqueue(device, item)
        } else {
            shard.loop.execute { shard.enqueue(device, item) }
        }
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
        var queues: [String: CircularBuffer<Item>] = [:]

        init(loop: any EventLoop) { self.loop = loop }

        func enqueue(_ device: String, _ item: Item) {
            if queues[device] != nil {
                queues[device]!.append(item)
                return
            }
            queues[device] = CircularBuffer()
            start(device, item)
        }

        private func start(_ device: String, _ item: Item) {
            item.deliver(item.envelope, loop).hop(to: loop).whenComplete { _ in
                self.next(device)
            }
        }

        private func next(_ device: String) {
            guard let following = queues[device]?.popFirst() else {
                queues.removeValue(forKey: device)
                return
            }
            start(device, following)
        }
    }
}
