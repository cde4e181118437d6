import Foundation
import Testing

@testable import DeviceRegistry

@Suite struct DeviceStoreTests {
    @Test func secretsCheckOutAndSurviveAReload() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("devices-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = "\(dir)/devices.json"
        let store = try DeviceStore(path: path)
        let secret = try store.add(product: "p", device: "d")
        #expect(secret.count == 43)
        #expect((try? store.authenticate(product: "p", device: "d", secret: secret).get()) != nil)
        #expect(store.authenticate(product: "p", device: "d", secret: secret + "x") == .failure(.wrongSecret))
        #expect(store.authenticate(product: "p", device: "e", secret: secret) == .failure(.unknownDevice))
        #expect(throws: DeviceRegistryError.self) { try store.add(product: "p", device: "d") }
        #expect(throws: DeviceRegistryError.self) { try store.add(product: "p#", device: "d") }
        try store.setDisabled(true, product: "p", device: "d")
        #expect(store.authenticate(product: "p", device: "d", secret: secret) == .failure(.disabled))

        let reloaded = try DeviceStore(path: path)
        #expect(reloaded.authenticate(product: "p", device: "d", secret: secret) == .failure(.disabled))
        try reloaded.setDisabled(false, product: "p", device: "d")
        let next = try reloaded.rotate(product: "p", device: "d")
        #expect(reloaded.authenticate(product: "p", device: "d", secret: secret) == .failure(.wrongSecret))
        #expect((try? reloaded.authenticate(product: "p", device: "d", secret: next).get()) != nil)
        try reloaded.remove(product: "p", device: "d")
        #expect(reloaded.count == 0)
        #expect(throws: DeviceRegistryError.self) { try reloaded.remove(product: "p", device: "d") }
    }

    @Test func twoDevicesWithTheSameSecretHaveDifferentDigests() throws {
        let store = try DeviceStore(path: nil)
        _ = try store.add(product: "p", device: "a")
        _ = try store.add(product: "p", device: "b")
        let records = store.list()
        #expect(records[0].salt != records[1].salt)
    }
}
