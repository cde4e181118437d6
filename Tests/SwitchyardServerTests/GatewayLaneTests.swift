import NIOCore
import NIOHTTP1
import SwitchyardConfig
import SwitchyardCore
import Testing

@testable import Gateway

/// Lane entry rules for requests, decided once at the edge.
@Suite struct GatewayLaneTests {
    static func snapshot(_ yaml: String) throws -> GatewaySnapshot {
        try GatewaySnapshot(configuration: try ConfigLoader.parse(yaml: yaml), directory: StaticServiceDirectory([:]))
    }

    static func request(_ uri: String = "/", _ headers: [(String, String)] = []) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: HTTPHeaders(headers))
    }

    static let untrusted = try! SocketAddress(ipAddress: "203.0.113.9", port: 4000)

    @Test func aStablePercentageOfUsersThatOnlyGrows() throws {
        let at20 = try Self.snapshot("lanes: [{name: beta, entry: {percentage: 20, hash_key: \"header:x-user-id\"}}]")
        let at40 = try Self.snapshot("lanes: [{name: beta, entry: {percentage: 40, hash_key: \"header:x-user-id\"}}]")
        var gray20: Set<Int> = []
        var gray40: Set<Int> = []
        for user in 0..<10_000 {
            let head = Self.request("/", [("x-user-id", "user-\(user)")])
            if at20.lane(for: head, from: Self.untrusted).lane == "beta" { gray20.insert(user) }
            if at40.lane(for: head, from: Self.untrusted).lane == "beta" { gray40.insert(user) }
            // The same user lands the same way every time.
            #expect(at20.lane(for: head, from: Self.untrusted).lane == (gray20.contains(user) ? "beta" : nil))
        }
        #expect((1_800...2_200).contains(gray20.count), "\(gray20.count) of 10000 at 20 %")
        #expect((3_800...4_200).contains(gray40.count), "\(gray40.count) of 10000 at 40 %")
        #expect(gray20.isSubset(of: gray40))  // raising the percentage keeps every earlier gray user gray
        #expect(at20.lane(for: Self.request(), from: Self.untrusted).lane == nil)  // no key: baseline
    }

    @Test func cookieAndParameterRulesAndTheTrustBoundary() throws {
        let s = try Self.snapshot(
            """
            lanes:
              - {name: dev, entry: {cookies: {tester: ["yes"]}}}
              - {name: gray, entry: {params: {beta: ["1", "true"]}}}
            gateway: {trusted_cidrs: [10.0.0.0/8]}
            """
        )
        #expect(s.lane(for: Self.request("/", [("cookie", "a=b; tester=yes")]), from: Self.untrusted).lane == "dev")
        #expect(s.lane(for: Self.request("/x?beta=true&y=2"), from: Self.untrusted).lane == "gray")
        #expect(s.lane(for: Self.request("/x?beta=0"), from: Self.untrusted).lane == nil)
        let spoof = Self.request("/", [("x-switchyard-lane", "dev"), ("baggage", "lane=gray")])
        #expect(s.lane(for: spoof, from: Self.untrusted).lane == nil)
        let trusted = try SocketAddress(ipAddress: "10.1.2.3", port: 1)
        #expect(s.lane(for: spoof, from: trusted).lane == "dev")
        #expect(s.lane(for: Self.request("/", [("baggage", "x=1, lane=gray")]), from: trusted).lane == "gray")
        #expect(s.lane(for: Self.request("/", [("x-switchyard-lane", "nonsense")]), from: trusted).lane == nil)  // not a declared lane
    }
}
