import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Router
import SwitchyardCore
import Testing

@Suite struct OrderedDispatcherTests {
    func envelope(_ device: String?, _ n: Int) -> Envelope {
        Envelope(id: "\(device ?? "-")-\(n)", channel: "http", topic: "t", device: device, payload: ByteBuffer(), receivedAt: 0, trace: .generate())
    }

    @Test func oneDeviceWaitsOnItsHeadOthersDoNot() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let dispatcher = OrderedDispatcher(group: group)
        let log = NIOLockedValueBox([String]())
        let held = NIOLockedValueBox<EventLoopPromise<Void>?>(nil)
        // a-1 is held open; a-2 must wait for it, b-1 must not.
        dispatcher.dispatch(envelope("a", 1)) { e, loop, done in
            log.withLockedValue { $0.append("start \(e.id)") }
            let p = loop.makePromise(of: Void.self)
            held.withLockedValue { $0 = p }
            p.futureResult.whenComplete { _ in done() }
        }
        for e in [envelope("a", 2), envelope("b", 1), envelope(nil, 1)] {
            dispatcher.dispatch(e) { e, loop, done in
                log.withLockedValue { $0.append("start \(e.id)") }
                done()
            }
        }
        try await Task.sleep(nanoseconds: 100_000_000)
        var seen = log.withLockedValue { $0 }
        #expect(seen.contains("start a-1") && seen.contains("start b-1") && seen.contains("start --1"))
        #expect(!seen.contains("start a-2"))
        held.withLockedValue { $0 }?.succeed(())
        try await Task.sleep(nanoseconds: 100_000_000)
        seen = log.withLockedValue { $0 }
        #expect(seen.last == "start a-2")
        #expect(try await dispatcher.busyDevices().get() == 0)
        try await group.shutdownGracefully()
    }

    /// Messages without a device go without waiting on each other, but no more than
    /// `unorderedLimit` at once; the rest wait for a slot and all are delivered.
    @Test func messagesWithoutADeviceAreBoundedInDelivery() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let dispatcher = OrderedDispatcher(group: group, unorderedLimit: 4)
        let state = NIOLockedValueBox((running: 0, most: 0, delivered: 0, held: [@Sendable () -> Void]()))
        for n in 0..<50 {
            dispatcher.dispatch(envelope(nil, n)) { _, _, done in
                state.withLockedValue { s in
                    s.running += 1
                    s.most = max(s.most, s.running)
                    s.held.append {
                        state.withLockedValue { s in
                            s.running -= 1
                            s.delivered += 1
                        }
                        done()
                    }
                }
            }
        }
        try await Task.sleep(nanoseconds: 100_000_000)
        #expect(dispatcher.unorderedCounts == (4, 46))
        // Release whatever is in delivery until all 50 are through.
        for _ in 0..<500 {
            let held = state.withLockedValue { s in
                defer { s.held.removeAll() }
                return s.held
            }
            for release in held { release() }
            if state.withLockedValue({ $0.delivered }) == 50 { break }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        let s = state.withLockedValue { $0 }
        #expect(s.delivered == 50 && s.most == 4, "delivered \(s.delivered), at most \(s.most) at once")
        #expect(dispatcher.unorderedCounts == (0, 0))
        try await group.shutdownGracefully()
    }

    /// Messages of one device dispatched in turn from different event loops (the device's
    /// connection moved) keep their order: the owning loop takes them in dispatch order.
    @Test func orderHoldsWhenADeviceArrivesOnDifferentLoops() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = Array(group.makeIterator())
        let dispatcher = OrderedDispatcher(group: group)
        let seen = NIOLockedValueBox([String: [Int]]())
        for n in 0..<600 {
            let device = "d\(n % 5)"
            // Each dispatch happens after the previous one, alternating loops.
            try await loops[(n / 5) % 2].submit {
                dispatcher.dispatch(self.envelope(device, n)) { _, loop, done in
                    // Later messages finish faster: only the owner's queue keeps them in order.
                    loop.scheduleTask(in: .microseconds(Int64(3 - n % 3) * 400)) {
                        seen.withLockedValue { $0[device, default: []].append(n) }
                        done()
                    }
                }
            }.get()
        }
        for _ in 0..<300 where seen.withLockedValue({ $0.values.reduce(0) { $0 + $1.count } }) < 600 {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        #expect(seen.withLockedValue { $0.values.reduce(0) { $0 + $1.count } } == 600)
        for (device, list) in seen.withLockedValue({ $0 }) {
            #expect(list == list.sorted(), "\(device) out of order")
        }
        #expect(try await dispatcher.busyDevices().get() == 0)
        try await group.shutdownGracefully()
    }

    /// `done` may come from any thread (a delivery finished elsewhere): the device's next
    /// message still starts on its owner loop, in order.
    @Test func doneFromAnotherThreadKeepsOrder() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let other = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let dispatcher = OrderedDispatcher(group: group)
        let seen = NIOLockedValueBox([Int]())
        let onOwner = NIOLockedValueBox(true)
        let owner = NIOLockedValueBox<ObjectIdentifier?>(nil)
        for n in 0..<200 {
            dispatcher.dispatch(envelope("d", n)) { _, loop, done in
                let id = ObjectIdentifier(loop)
                owner.withLockedValue { o in
                    if o == nil { o = id }
                    if o != id || !loop.inEventLoop { onOwner.withLockedValue { $0 = false } }
                }
                seen.withLockedValue { $0.append(n) }
                other.next().execute { done() }
            }
        }
        for _ in 0..<200 where seen.withLockedValue({ $0.count }) < 200 {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        #expect(seen.withLockedValue { $0 } == Array(0..<200))
        #expect(onOwner.withLockedValue { $0 })
        // The last `done` is still on its way back to the owner loop when the 200th starts.
        for _ in 0..<100 where try await dispatcher.busyDevices().get() > 0 {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        #expect(try await dispatcher.busyDevices().get() == 0)
        try await group.shutdownGracefully()
        try await other.shutdownGracefully()
    }

    @Test func orderHoldsUnderLoad() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let dispatcher = OrderedDispatcher(group: group)
        let seen = NIOLockedValueBox([String: [Int]]())
        for n in 0..<2000 {
            let device = "d\(n % 13)"
            dispatcher.dispatch(envelope(device, n)) { e, loop, done in
                // Completes later, on another tick, like a network round trip.
                loop.scheduleTask(in: .microseconds(Int64(n % 7) * 50)) {
                    seen.withLockedValue { $0[device, default: []].append(n) }
                    done()
                }
            }
        }
        for _ in 0..<200 where seen.withLockedValue({ $0.values.reduce(0) { $0 + $1.count } }) < 2000 {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        for (device, list) in seen.withLockedValue({ $0 }) {
            #expect(list == list.sorted(), "\(device) out of order")
        }
        #expect(seen.withLockedValue { $0.values.reduce(0) { $0 + $1.count } } == 2000)
        try await group.shutdownGracefully()
    }
}
