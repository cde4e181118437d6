import ConfigCenter
import Foundation
import NIOConcurrencyHelpers
import Testing

@Suite struct ConfigCenterTests {
    let key = ConfigKey(dataId: "app.yaml")

    @Test func md5IsNacosHexMD5OfTheUTF8Content() {
        #expect(ConfigItem.md5("") == "d41d8cd98f00b204e9800998ecf8427e")
        #expect(ConfigItem.md5("hello") == "5d41402abc4b2a76b9719d911017c592")
        #expect(ConfigItem.md5("配置") == "224e2ccda861c2514faa683b3683c361")
    }

    @Test func publishGetDeleteAndCompareAndSet() throws {
        let center = try ConfigCenter(store: InMemoryConfigStore())
        #expect(center.get(key) == nil)
        #expect(try center.publish(key, content: "a: 1", type: "yaml"))
        #expect(center.get(key)?.content == "a: 1")
        #expect(center.get(key)?.type == "yaml")
        let md5 = try #require(center.get(key)?.md5)
        #expect(try center.publish(key, content: "a: 2", casMD5: "not-the-md5") == false)
        #expect(center.get(key)?.content == "a: 1")
        #expect(try center.publish(key, content: "a: 2", casMD5: md5))
        #expect(center.get(key)?.content == "a: 2")
        #expect(center.get(key)?.type == "yaml")  // kept when a publish does not say
        #expect(try center.delete(key))
        #expect(try center.delete(key) == false)
        #expect(center.get(key) == nil)
        #expect(throws: ConfigError.self) { try center.publish(ConfigKey(dataId: "bad id"), content: "x") }
        #expect(throws: ConfigError.self) { try center.publish(key, content: "") }
    }

    @Test func historyRecordsEveryChangeAndRollbackIsByteExactAndWakesListeners() throws {
        let center = try ConfigCenter(store: InMemoryConfigStore())
        let first = "name: \"ü\"\r\n\ttabs and trailing spaces   \n"
        try center.publish(key, content: first, source: .init(ip: "10.1.1.1", user: "ops"))
        try center.publish(key, content: "second")
        try center.delete(key)
        let (total, rows) = try center.history(of: key)
        #expect(total == 3)
        #expect(rows.map(\.operation) == [.delete, .update, .insert])
        #expect(rows.last?.sourceIP == "10.1.1.1")
        let woke = NIOLockedValueBox<[ConfigKey]>([])
        guard case .waiting = center.listen([(key, "")], clientIP: "10.0.0.1", wake: { keys in woke.withLockedValue { $0 += keys } }) else {
            Issue.record("a deleted config should not count as changed for a client holding nothing")
            return
        }
        try center.rollback(key, to: try #require(rows.last?.id))
        #expect(center.get(key)?.content == first)
        #expect(center.get(key)?.md5 == ConfigItem.md5(first))
        #expect(woke.withLockedValue { $0 } == [key])
        #expect(throws: ConfigError.self) { try center.rollback(key, to: rows[0].id) }  // a deletion
        #expect(throws: ConfigError.self) { try center.rollback(ConfigKey(dataId: "other"), to: rows[1].id) }
        #expect(try center.history(of: key).total == 4)
    }

    @Test func betaServesListedClientsUntilStopped() throws {
        let center = try ConfigCenter(store: InMemoryConfigStore())
        try center.publish(key, content: "main")
        let betaWoke = NIOLockedValueBox(0)
        let otherWoke = NIOLockedValueBox(0)
        let mainMD5 = ConfigItem.md5("main")
        _ = center.listen([(key, mainMD5)], clientIP: "10.0.0.5") { _ in betaWoke.withLockedValue { $0 += 1 } }
        _ = center.listen([(key, mainMD5)], clientIP: "10.0.0.6") { _ in otherWoke.withLockedValue { $0 += 1 } }
        try center.publish(key, content: "beta", betaIPs: ["10.0.0.5"])
        let served = try #require(center.get(key, clientIP: "10.0.0.5"))
        #expect(served.content == "beta" && served.md5 == ConfigItem.md5("beta") && served.isBeta)
        #expect(center.get(key, clientIP: "10.0.0.6")?.content == "main")
        #expect(betaWoke.withLockedValue { $0 } == 1)
        #expect(otherWoke.withLockedValue { $0 } == 0)  // what it reads did not change
        #expect(try center.stopBeta(key))
        #expect(center.get(key, clientIP: "10.0.0.5")?.content == "main")
        #expect(try center.history(of: key).revisions.map(\.release) == [.beta, .beta, .formal])
    }

    @Test func aBetaOfANewConfigIsInvisibleToEveryoneElse() throws {
        let center = try ConfigCenter(store: InMemoryConfigStore())
        try center.publish(key, content: "only beta", betaIPs: ["10.0.0.5"])
        #expect(center.get(key, clientIP: "10.0.0.6") == nil)
        #expect(center.get(key, clientIP: "10.0.0.5")?.content == "only beta")
        try center.stopBeta(key)
        #expect(center.get(key, clientIP: "10.0.0.5") == nil)
    }

    @Test func aFailedStoreCommitChangesNothingAndWakesNobody() throws {
        let store = InMemoryConfigStore()
        let center = try ConfigCenter(store: store)
        try center.publish(key, content: "v1")
        let woke = NIOLockedValueBox(0)
        _ = center.listen([(key, ConfigItem.md5("v1"))], clientIP: "") { _ in woke.withLockedValue { $0 += 1 } }
        store.failing = true
        #expect(throws: ConfigError.self) { try center.publish(key, content: "v2") }
        #expect(center.get(key)?.content == "v1")
        #expect(woke.withLockedValue { $0 } == 0)
        #expect(center.waitingListeners == 1)
    }

    /// 1,000 rapid publishes of one key while 50 listeners long-poll (each re-listening with
    /// the MD5 it last read, as a client does): every listener ends at the final content.
    @Test func noLostUpdateUnderRapidPublishes() async throws {
        let center = try ConfigCenter(store: InMemoryConfigStore())
        try center.publish(key, content: "v0")
        let listeners = 50, publishes = 1000
        let finalContent = "v\(publishes)"
        try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<listeners {
                group.addTask {
                    var held = center.get(key)!
                    let deadline = Date().addingTimeInterval(30)
                    while held.content != finalContent && Date() < deadline {
                        let md5 = held.md5
                        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                            let once = NIOLockedValueBox(false)
                            let resume: @Sendable () -> Void = {
                                if once.withLockedValue({
                                    let was = $0; $0 = true; return !was
                                }) {
                                    done.resume()
                                }
                            }
                            switch center.listen([(key, md5)], clientIP: "10.0.0.\(i)", wake: { _ in resume() }) {
                            case .changed: resume()
                            case .waiting: break
                            }
                        }
                        held = center.get(key)!
                    }
                    return held.content
                }
            }
            group.addTask {
                for v in 1...publishes { try center.publish(key, content: "v\(v)") }
                return "publisher"
            }
            var finals: [String] = []
            for try await result in group where result != "publisher" { finals.append(result) }
            #expect(finals.count == listeners)
            #expect(finals.allSatisfy { $0 == finalContent })
        }
        #expect(center.waitingListeners == 0)
    }
}
