import Foundation
import NIOConcurrencyHelpers
import SwitchyardTesting
import Testing

/// One of three instances turns slow (+500 ms): the shared balancer (power of two choices on
/// outstanding requests) stops choosing it within a second, answers slower than
/// `resilience.slow_call` open its circuit, and the service's p99 recovers.
@Suite struct SlowInstanceTests {
    @Test func aSlowInstanceLosesItsShareAndP99Recovers() async throws {
        let fast1 = try await TestHTTPService.start(), fast2 = try await TestHTTPService.start(), slow = try await TestHTTPService.start()
        let server = try await TestServer.start(
            """
            resilience: {slow_call: 250ms}
            gateway:
              routes: [{name: api, path_prefix: /api, service: api, timeout: 5s}]
            services:
              api: {instances: [{url: "\(fast1.url)"}, {url: "\(fast2.url)"}, {url: "\(slow.url)"}]}
            """
        )
        let latencies = NIOLockedValueBox([(at: Double, ms: Double)]())
        let running = NIOLockedValueBox(true)
        let started = Date()
        var tasks: [Task<Void, Never>] = []
        for _ in 0..<8 {
            tasks.append(
                Task {
                    let client = KeepAliveHTTPClient(port: server.httpPort)
                    while running.withLockedValue({ $0 }) {
                        let t0 = Date()
                        _ = try? await client.request(.GET, "/api/x", timeoutSeconds: 10)
                        let ms = Date().timeIntervalSince(t0) * 1000
                        latencies.withLockedValue { $0.append((t0.timeIntervalSince(started), ms)) }
                        try? await Task.sleep(nanoseconds: 5_000_000)
                    }
                    await client.close()
                }
            )
        }
        try await Task.sleep(nanoseconds: 2_000_000_000)
        slow.setDelay(seconds: 0.5)
        let slowSince = Date().timeIntervalSince(started)
        let before = slow.received.count
        var shares: [Double] = []
        var lastFive = (slow: 0, all: 0)
        for second in 0..<10 {
            let (s0, all0) = (slow.received.count, fast1.received.count + fast2.received.count + slow.received.count)
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let (s1, all1) = (slow.received.count, fast1.received.count + fast2.received.count + slow.received.count)
            shares.append(all1 > all0 ? Double(s1 - s0) / Double(all1 - all0) : 0)
            if second >= 5 { lastFive = (lastFive.slow + s1 - s0, lastFive.all + all1 - all0) }
        }
        running.withLockedValue { $0 = false }
        for task in tasks { await task.value }
        func p99(_ from: Double, _ to: Double) -> Double {
            let window = latencies.withLockedValue { $0.filter { $0.at >= from && $0.at < to }.map(\.ms) }.sorted()
            return window.isEmpty ? 0 : window[min(window.count - 1, Int(Double(window.count) * 0.99))]
        }
        let (healthy, last) = (p99(0, slowSince), p99(slowSince + 7, slowSince + 10))
        print(
            "slow instance's share per second after +500 ms: \(shares.map { String(format: "%.1f%%", $0 * 100) }.joined(separator: " ")); p99 before \(String(format: "%.0f", healthy)) ms, in the last 3 s \(String(format: "%.0f", last)) ms; it got \(slow.received.count - before) requests while slow"
        )
        // A third of the traffic before; a few percent at most once the balancer has noticed
        // (over the last five seconds together: on a loaded machine one probe in a second of
        // few requests is a large share of that second).
        let share = lastFive.all > 0 ? Double(lastFive.slow) / Double(lastFive.all) : 1
        #expect(share < 0.05 && lastFive.all > 20, "\(lastFive) \(shares)")
        // Back to what it was before the slowdown (the machine may be loaded by other tests, so
        // relative to that, not absolute); a 1 % share of 500 ms answers would put it past 500.
        // With the whole suite running, the clients' tasks (on the test's cooperative pool) are
        // starved for up to a second at times: p99s of ~1 s before *and* after, noise against
        // noise (the share above still holds). The latency is compared only when the healthy
        // phase shows the clients were not starved.
        if healthy < 200 {
            #expect(last <= max(healthy * 2, 50), "p99 of the last 3 s: \(last) ms, before: \(healthy) ms")
        } else {
            print("NOTE: p99 recovery not compared: the healthy phase's p99 was \(Int(healthy)) ms (test clients starved by other tests)")
        }
    }
}
