import Logging
import Registry
import SwitchyardCore
import SwitchyardTesting
import Testing

@testable import SwitchyardServer

/// The router's view of the registry: lanes from metadata, unhealthy and disabled instances
/// left out, and push-empty protection after a store resync.
@Suite struct RegistryDirectoryTests {
    let orders = ServiceName(name: "orders")

    @Test func lanesComeFromMetadataAndOnlyHealthyEnabledInstancesServe() throws {
        let registry = try Registry(store: InMemoryRegistryStore(), clock: ManualClock())
        let view = RegistryView(registry: registry, clock: ManualClock(), emptyProtectionSeconds: 30, logger: Logger(label: "t"))
        try registry.register(Instance(ip: "10.0.0.1", port: 1, weight: 2), in: orders)
        try registry.register(Instance(ip: "10.0.0.2", port: 2, metadata: ["lane": "gray"]), in: orders)
        try registry.register(Instance(ip: "10.0.0.3", port: 3, enabled: false), in: orders)
        try registry.register(Instance(ip: "10.0.0.4", port: 4, healthy: false, ephemeral: false), in: orders)
        let list = view.instances(of: orders)
        #expect(list.map(\.host) == ["10.0.0.1", "10.0.0.2"])
        #expect(list.map(\.lane) == [nil, "gray"])
        #expect(list.map(\.weight) == [200, 100])
        try registry.deregister(InstanceAddress(ip: "10.0.0.2", port: 2), in: orders)
        #expect(view.instances(of: orders).map(\.host) == ["10.0.0.1"])  // believed at once
    }

    @Test func anEmptyResyncKeepsTheLastGoodListForTheGracePeriod() throws {
        let store = InMemoryRegistryStore()
        let clock = ManualClock()
        let registry = try Registry(store: store, clock: clock)
        let view = RegistryView(registry: registry, clock: clock, emptyProtectionSeconds: 30, logger: Logger(label: "t"))
        try registry.register(Instance(ip: "10.0.0.1", port: 1, ephemeral: false), in: orders)
        #expect(view.instances(of: orders).count == 1)
        store.reset()  // the store came back empty
        try registry.resyncFromStore()
        #expect(registry.list(orders).hosts.isEmpty)
        #expect(view.instances(of: orders).map(\.host) == ["10.0.0.1"])
        clock.advance(seconds: 29)
        #expect(view.instances(of: orders).count == 1)
        clock.advance(seconds: 2)
        #expect(view.instances(of: orders).isEmpty)
    }

    @Test func aStoreReadErrorChangesNothing() throws {
        let store = InMemoryRegistryStore()
        let registry = try Registry(store: store, clock: ManualClock())
        let view = RegistryView(registry: registry, clock: ManualClock(), emptyProtectionSeconds: 30, logger: Logger(label: "t"))
        try registry.register(Instance(ip: "10.0.0.1", port: 1, ephemeral: false), in: orders)
        store.failing = true
        #expect(throws: RegistryError.self) { try registry.resyncFromStore() }
        #expect(view.instances(of: orders).count == 1)
    }
}
