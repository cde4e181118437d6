import Foundation
import SwitchyardTesting
import Testing

@Suite(.serialized) struct DeadLetterTests {
    static func yaml(_ svc: TestHTTPService) -> String {
        """
        routes:
          - {name: r, match: "^devices/(?<device>[^/]+)/x$", targets: [{service: s, path: "/in/{device}", retries: 0}]}
        services:
          s: {instances: [{url: "\(svc.url)"}]}
        """
    }

    func total(_ server: TestServer) async throws -> Int {
        let body = try await server.admin("GET", "/admin/dead-letters").body
        let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as! [String: Any]
        return json["total"] as! Int
    }

    @Test func deadLettersSurviveARestartAndReplayDeliversThem() async throws {
        let svc = try await TestHTTPService.start(status: 400)
        let first = try await TestServer.start(Self.yaml(svc))
        for i in 0..<5 {
            #expect(try await first.post("devices/d\(i)/x", body: "m\(i)", headers: [("x-message-id", "id-\(i)")]).status == 202)
        }
        await first.settle()
        #expect(try await total(first) == 5)
        await first.stop(keepingData: true)

        let second = try await TestServer.start(Self.yaml(svc), dir: first.dir)
        #expect(try await total(second) == 5)
        let listed = try await second.admin("GET", "/admin/dead-letters?reason=rejected_by_service&limit=2").body
        #expect(listed.contains("\"reason\" : \"rejected_by_service\""))
        let key = try #require(
            (try JSONSerialization.jsonObject(with: Data(listed.utf8)) as? [String: Any]).flatMap {
                ($0["entries"] as? [[String: Any]])?.first?["key"] as? Int
            }
        )
        let one = try await second.admin("GET", "/admin/dead-letters/\(key)")
        #expect(one.status == 200)
        #expect(one.body.contains("payload_base64"))
        #expect(try await second.admin("POST", "/admin/dead-letters/replay", body: "{}").status == 400)  // say what to replay

        svc.setStatus(200)
        let replay = try await second.admin("POST", "/admin/dead-letters/replay", body: #"{"route":"r"}"#)
        #expect(replay.body == #"{"replayed":5}"#)
        let got = await svc.waitFor(count: 10)
        let replayed = got.suffix(5)
        #expect(Set(replayed.compactMap { $0.header("x-switchyard-message-id") }) == Set((0..<5).map { "id-\($0)" }))
        #expect(replayed.allSatisfy { $0.header("x-switchyard-delivery-attempt") == "2" })  // attempt 1 was refused
        await second.settle()
        #expect(try await total(second) == 0)
        await second.stop(keepingData: true)

        // The removal is durable too.
        let third = try await TestServer.start(Self.yaml(svc), dir: first.dir)
        #expect(try await total(third) == 0)
        await third.stop()
        await svc.stop()
    }

    @Test func attemptNumbersGoOnAfterARestart() async throws {
        let svc = try await TestHTTPService.start(status: 503)
        let yaml = """
            routes:
              - name: r
                match: "^devices/(?<device>[^/]+)/x$"
                targets: [{service: s, path: "/in/{device}", retries: 20, backoff: {base: 300ms, max: 300ms}}]
            services:
              s: {instances: [{url: "\(svc.url)"}], circuit: {failures: 0}}
            """
        let first = try await TestServer.start(yaml)
        #expect(try await first.post("devices/d1/x", body: "m").status == 202)
        let failed = await svc.waitFor(count: 3)
        await first.stop(keepingData: true)
        let seen = failed.compactMap { Int($0.header("x-switchyard-delivery-attempt") ?? "") }
        #expect(Array(seen.prefix(3)) == [1, 2, 3])

        svc.setStatus(200)
        let second = try await TestServer.start(yaml, dir: first.dir)
        let all = await svc.waitFor(count: seen.count + 1)
        let next = try #require(Int(all.last?.header("x-switchyard-delivery-attempt") ?? ""))
        #expect(next > seen.max()!)  // never a number the service has seen for this message
        await second.stop()
        await svc.stop()
    }

    @Test func purgeRemovesForGood() async throws {
        let svc = try await TestHTTPService.start(status: 400)
        let server = try await TestServer.start(Self.yaml(svc))
        for i in 0..<3 { _ = try await server.post("devices/d\(i)/x", body: "m\(i)") }
        await server.settle()
        #expect(try await total(server) == 3)
        let bad = try await server.admin("POST", "/admin/dead-letters/purge", body: #"{"since":"yesterday"}"#)
        #expect(bad.status == 400)
        let purge = try await server.admin("POST", "/admin/dead-letters/purge", body: #"{"reason":"rejected_by_service"}"#)
        #expect(purge.body == #"{"purged":3}"#)
        #expect(try await total(server) == 0)
        #expect(try await server.admin("GET", "/admin/dead-letters/1").status == 404)
        await server.stop()
        await svc.stop()
    }
}
