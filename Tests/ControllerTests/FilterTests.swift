import Controller
import NIOCore
import SwitchyardCore
import SwitchyardTesting
import Testing

func envelope(
    topic: String = "devices/p1/d1/telemetry",
    device: String? = "d1",
    product: String? = "p1",
    payload: String = "{}",
    channel: String = "http",
    address: String? = "127.0.0.1",
    id: String = MessageID.generate(),
    idFromSender: Bool = false
) -> Envelope {
    Envelope(
        id: id,
        channel: channel,
        topic: topic,
        product: product,
        device: device,
        payload: ByteBuffer(string: payload),
        receivedAt: 0,
        trace: .generate(),
        clientAddress: address.flatMap { try? SocketAddress(ipAddress: $0, port: 1234) },
        idFromSender: idFromSender
    )
}

func controller(_ filters: [SwitchyardConfiguration.FilterRule], clock: ManualClock = ManualClock()) throws -> Controller {
    var config = SwitchyardConfiguration()
    config.filters = filters
    return try Controller(config: config, clock: clock)
}

func rejection(_ c: Controller, _ e: Envelope) -> Rejection? {
    var e = e
    if case .rejected(let r) = c.admit(&e) { return r }
    return nil
}

@Suite struct SourceFilterTests {
    @Test func deniedChannelIsRejectedWithReason() throws {
        let c = try controller([.source(allowChannels: [], denyChannels: ["http"], allowCIDRs: [], denyCIDRs: [])])
        let r = try #require(rejection(c, envelope()))
        #expect(r.reason == "channel_denied")
        #expect(r.status == 403)
        #expect(r.filter == "source")
    }

    @Test func channelAllowListAdmitsOnlyListedChannels() throws {
        let c = try controller([.source(allowChannels: ["mqtt"], denyChannels: [], allowCIDRs: [], denyCIDRs: [])])
        #expect(rejection(c, envelope(channel: "http"))?.reason == "channel_denied")
        #expect(rejection(c, envelope(channel: "mqtt")) == nil)
    }

    @Test func cidrDenyAndAllow() throws {
        let c = try controller([.source(allowChannels: [], denyChannels: [], allowCIDRs: ["10.0.0.0/8", "::1/128"], denyCIDRs: ["10.9.0.0/16"])])
        #expect(rejection(c, envelope(address: "10.1.2.3")) == nil)
        #expect(rejection(c, envelope(address: "::1")) == nil)
        #expect(rejection(c, envelope(address: "10.9.1.1"))?.reason == "address_denied")
        #expect(rejection(c, envelope(address: "192.168.1.1"))?.reason == "address_denied")
        #expect(rejection(c, envelope(address: nil))?.reason == "address_denied")
    }

    @Test func ipv4MappedIPv6MatchesIPv4Network() throws {
        let cidr = try CIDR("127.0.0.0/8")
        #expect(cidr.contains(try SocketAddress(ipAddress: "::ffff:127.0.0.1", port: 1)))
        #expect(!cidr.contains(try SocketAddress(ipAddress: "::1", port: 1)))
    }

    @Test func invalidCIDRIsAConfigError() {
        #expect(throws: (any Error).self) { try CIDR("10.0.0.0/33") }
        #expect(throws: (any Error).self) { try CIDR("not-an-ip") }
    }
}

@Suite struct PayloadAndListFilterTests {
    @Test func maxPayload() throws {
        let c = try controller([.maxPayload(bytes: 4)])
        #expect(rejection(c, envelope(payload: "1234")) == nil)
        let r = try #require(rejection(c, envelope(payload: "12345")))
        #expect(r.reason == "payload_too_large")
        #expect(r.status == 413)
    }

    @Test func productAllowAndDenyLists() throws {
        let c = try controller([.products(allow: ["p1", "p2"], deny: ["p2"])])
        #expect(rejection(c, envelope(product: "p1")) == nil)
        #expect(rejection(c, envelope(product: "p2"))?.reason == "product_denied")
        #expect(rejection(c, envelope(product: "p3"))?.reason == "product_denied")
        #expect(rejection(c, envelope(product: nil))?.reason == "product_denied")
    }

    @Test func deviceDenyList() throws {
        let c = try controller([.devices(allow: [], deny: ["bad"])])
        #expect(rejection(c, envelope(device: "bad"))?.message.contains("deny list") == true)
        #expect(rejection(c, envelope(device: "good")) == nil)
        #expect(rejection(c, envelope(device: nil)) == nil)
    }

    @Test func filtersRunInConfiguredOrder() throws {
        let c = try controller([.devices(allow: [], deny: ["d1"]), .maxPayload(bytes: 1)])
        #expect(rejection(c, envelope(device: "d1", payload: "too big"))?.filter == "devices")
        let d = try controller([.maxPayload(bytes: 1), .devices(allow: [], deny: ["d1"])])
        #expect(rejection(d, envelope(device: "d1", payload: "too big"))?.filter == "max_payload")
    }
}

@Suite struct RateLimitTests {
    @Test func tokenBucketPerDeviceWithInjectedClock() throws {
        let clock = ManualClock()
        let c = try controller([.rateLimit(scope: .device, rate: 2, burst: 3, maxKeys: 1000)], clock: clock)
        for _ in 0..<3 { #expect(rejection(c, envelope(device: "a")) == nil) }
        let r = try #require(rejection(c, envelope(device: "a")))
        #expect(r.reason == "rate_limited")
        #expect(r.status == 429)
        #expect(abs((r.retryAfterSeconds ?? 0) - 0.5) < 0.01)
        // Another device has its own bucket.
        #expect(rejection(c, envelope(device: "b")) == nil)
        clock.advance(seconds: 0.5)
        #expect(rejection(c, envelope(device: "a")) == nil)
        #expect(rejection(c, envelope(device: "a")) != nil)
        clock.advance(seconds: 10)  // refills to burst, not beyond
        for _ in 0..<3 { #expect(rejection(c, envelope(device: "a")) == nil) }
        #expect(rejection(c, envelope(device: "a")) != nil)
    }

    @Test func productChannelAndGlobalScopes() throws {
        let clock = ManualClock()
        let c = try controller(
            [
                .rateLimit(scope: .product, rate: 1, burst: 2, maxKeys: 100),
                .rateLimit(scope: .global, rate: 1, burst: 3, maxKeys: 100),
            ],
            clock: clock
        )
        #expect(rejection(c, envelope(device: "a", product: "p")) == nil)
        #expect(rejection(c, envelope(device: "b", product: "p")) == nil)
        #expect(rejection(c, envelope(device: "c", product: "p"))?.filter == "rate_limit(product)")
        #expect(rejection(c, envelope(device: "d", product: "q")) == nil)
        #expect(rejection(c, envelope(device: "e", product: "r"))?.filter == "rate_limit(global)")

        let ch = try controller([.rateLimit(scope: .channel, rate: 1, burst: 1, maxKeys: 100)], clock: clock)
        #expect(rejection(ch, envelope(channel: "http")) == nil)
        #expect(rejection(ch, envelope(channel: "http")) != nil)
        #expect(rejection(ch, envelope(channel: "mqtt")) == nil)
    }

    @Test func hundredThousandDevicesStayBounded() {
        let clock = ManualClock()
        let limiter = KeyedRateLimiter(rate: 10, burst: 10, maxKeys: 20_000, clock: clock)
        for i in 0..<100_000 {
            #expect(limiter.acquire("device-\(i)") == 0)
            if i % 10_000 == 0 { clock.advance(seconds: 0.01) }
        }
        #expect(limiter.trackedKeys <= 20_000)
        // Once idle long enough to refill, buckets are swept entirely.
        clock.advance(seconds: 5)
        for i in 0..<5000 { _ = limiter.acquire("again-\(i)") }
        #expect(limiter.trackedKeys < 10_000)
    }
}

@Suite struct DedupTests {
    @Test func duplicateWithinWindowIsSuppressedAndExpires() throws {
        let clock = ManualClock()
        let c = try controller([.dedup(windowSeconds: 60, maxEntries: 1000)], clock: clock)
        var e = envelope(id: "m-1", idFromSender: true)
        #expect(c.admit(&e) == .accepted)
        e = envelope(id: "m-1", idFromSender: true)
        #expect(c.admit(&e) == .duplicate)
        // Same id from another device is a different message.
        e = envelope(device: "d2", id: "m-1", idFromSender: true)
        #expect(c.admit(&e) == .accepted)
        clock.advance(seconds: 61)
        e = envelope(id: "m-1", idFromSender: true)
        #expect(c.admit(&e) == .accepted)
    }

    @Test func rejectedMessageIsNotRememberedAsSeen() throws {
        let clock = ManualClock()
        let c = try controller(
            [.dedup(windowSeconds: 60, maxEntries: 1000), .rateLimit(scope: .device, rate: 1, burst: 1, maxKeys: 100)],
            clock: clock
        )
        var e = envelope(id: "a", idFromSender: true)
        #expect(c.admit(&e) == .accepted)
        e = envelope(id: "b", idFromSender: true)
        #expect(rejection(c, e)?.reason == "rate_limited")
        clock.advance(seconds: 2)
        e = envelope(id: "b", idFromSender: true)
        #expect(c.admit(&e) == .accepted)  // the resend after 429 is not a "duplicate"
    }

    @Test func boundedMemory() {
        let f = DuplicateFilter(windowSeconds: 3600, maxEntries: 1600, clock: ManualClock())
        for i in 0..<10_000 { _ = f.insertIfNew("id-\(i)") }
        #expect(f.trackedIDs <= 1600 + 16)
    }
}

extension Admission: Equatable {
    public static func == (a: Admission, b: Admission) -> Bool {
        switch (a, b) {
        case (.accepted, .accepted), (.duplicate, .duplicate): true
        case (.rejected(let x), .rejected(let y)): x == y
        default: false
        }
    }
}
