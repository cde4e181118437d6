import NIOConcurrencyHelpers
import SwitchyardCore
import SwitchyardTesting
import Testing

@testable import Registry

@Suite struct RegistryTests {
    let orders = ServiceName(name: "orders")

    @Test func heartbeatTimelineHealthyAt14UnhealthyAt16RemovedAt31() throws {
        let clock = ManualClock()
        let registry = try Registry(store: InMemoryRegistryStore(), clock: clock)
        let changes = NIOLockedValueBox(0)
        registry.watch { _, _ in changes.withLockedValue { $0 += 1 } }
        try registry.register(Instance(ip: "10.0.0.1", port: 8080), in: orders)
        let address = InstanceAddress(ip: "10.0.0.1", port: 8080)

        clock.advance(seconds: 14)
        registry.sweep()
        #expect(registry.instance(address, in: orders)?.healthy == true)
        clock.advance(seconds: 2)  // 16 s without a beat
        #expect(registry.sweep() == (unhealthy: 1, removed: 0))
        #expect(registry.instance(address, in: orders)?.healthy == false)
        #expect(registry.list(orders, healthyOnly: true).hosts.isEmpty)
        clock.advance(seconds: 15)  // 31 s
        #expect(registry.sweep() == (unhealthy: 0, removed: 1))
        #expect(registry.instance(address, in: orders) == nil)
        #expect(registry.list(orders).exists == false)
        #expect(changes.withLockedValue { $0 } == 3)  // registered, unhealthy, removed
    }

    @Test func aBeatKeepsAnInstanceAndRevivesAnUnhealthyOne() throws {
        let clock = ManualClock()
        let registry = try Registry(store: InMemoryRegistryStore(), clock: clock)
        try registry.register(Instance(ip: "10.0.0.1", port: 8080), in: orders)
        let address = InstanceAddress(ip: "10.0.0.1", port: 8080)
        for _ in 0..<10 {
            clock.advance(seconds: 5)
            #expect(registry.beat(address, in: orders) == .ok(intervalMillis: 5000))
            registry.sweep()
        }
        #expect(registry.instance(address, in: orders)?.healthy == true)
        clock.advance(seconds: 20)
        registry.sweep()
        #expect(registry.instance(address, in: orders)?.healthy == false)
        #expect(registry.beat(address, in: orders) == .ok(intervalMillis: 5000))
        #expect(registry.instance(address, in: orders)?.healthy == true)
    }

    @Test func preservedMetadataOverridesTheTimeouts() throws {
        let clock = ManualClock()
        let registry = try Registry(store: InMemoryRegistryStore(), clock: clock)
        let meta = ["preserved.heart.beat.timeout": "3000", "preserved.ip.delete.timeout": "6000", "preserved.heart.beat.interval": "1000"]
        try registry.register(Instance(ip: "10.0.0.2", port: 1, metadata: meta), in: orders)
        let address = InstanceAddress(ip: "10.0.0.2", port: 1)
        #expect(registry.beat(address, in: orders) == .ok(intervalMillis: 1000))
        clock.advance(seconds: 3.5)
        registry.sweep()
        #expect(registry.instance(address, in: orders)?.healthy == false)
        clock.advance(seconds: 3)
        registry.sweep()
        #expect(registry.instance(address, in: orders) == nil)
    }

    @Test func aLightBeatForAnUnknownInstanceAsksToRegisterAndAFullBeatReRegisters() throws {
        let registry = try Registry(store: InMemoryRegistryStore(), clock: ManualClock())
        let address = InstanceAddress(ip: "10.0.0.3", port: 9000)
        #expect(registry.beat(address, in: orders) == .unknown)
        #expect(registry.instance(address, in: orders) == nil)
        let described = Instance(ip: "10.0.0.3", port: 9000, metadata: ["lane": "gray"])
        #expect(registry.beat(address, in: orders, describing: described) == .ok(intervalMillis: 5000))
        #expect(registry.instance(address, in: orders)?.metadata["lane"] == "gray")
    }

    @Test func persistentInstancesSurviveARestartAndEphemeralOnesDoNot() throws {
        let store = InMemoryRegistryStore()
        let registry = try Registry(store: store, clock: ManualClock())
        try registry.register(Instance(ip: "10.0.0.1", port: 1), in: orders)
        try registry.register(Instance(ip: "10.0.0.2", port: 2, ephemeral: false), in: orders)
        try registry.createNamespace(Namespace(id: "dev", name: "Development"))
        try registry.createService(ServiceSettings(name: ServiceName(namespace: "dev", name: "billing"), protectThreshold: 0.5))
        let again = try Registry(store: store, clock: ManualClock())
        #expect(again.list(orders).hosts.map(\.ip) == ["10.0.0.2"])
        #expect(again.namespaces().map(\.id) == ["public", "dev"])
        #expect(again.service(ServiceName(namespace: "dev", name: "billing"))?.settings.protectThreshold == 0.5)
    }

    @Test func aFailedStoreWriteChangesNothing() throws {
        let store = InMemoryRegistryStore()
        let registry = try Registry(store: store, clock: ManualClock())
        store.failing = true
        #expect(throws: RegistryError.self) { try registry.register(Instance(ip: "10.0.0.2", port: 2, ephemeral: false), in: orders) }
        #expect(registry.list(orders).exists == false)
        // Ephemeral instances are not stored: they still register.
        try registry.register(Instance(ip: "10.0.0.1", port: 1), in: orders)
        #expect(registry.list(orders).hosts.count == 1)
    }

    @Test func protectionThresholdReturnsEveryInstanceWhenTooFewAreHealthy() throws {
        let registry = try Registry(store: InMemoryRegistryStore(), clock: ManualClock())
        try registry.createService(ServiceSettings(name: orders, protectThreshold: 0.6))
        try registry.register(Instance(ip: "10.0.0.1", port: 1), in: orders)
        try registry.register(Instance(ip: "10.0.0.2", port: 2, healthy: false, ephemeral: false), in: orders)
        try registry.register(Instance(ip: "10.0.0.3", port: 3, healthy: false, ephemeral: false), in: orders)
        let view = registry.list(orders, healthyOnly: true)
        #expect(view.reachedProtectionThreshold)
        #expect(view.hosts.count == 3)
        try registry.setHealthy(true, InstanceAddress(ip: "10.0.0.2", port: 2), in: orders)
        let healthier = registry.list(orders, healthyOnly: true)
        #expect(!healthier.reachedProtectionThreshold)
        #expect(healthier.hosts.map(\.ip) == ["10.0.0.1", "10.0.0.2"])
    }

    @Test func servicesAreDeletedOnlyWithoutInstances() throws {
        let registry = try Registry(store: InMemoryRegistryStore(), clock: ManualClock())
        try registry.createService(ServiceSettings(name: orders))
        #expect(throws: RegistryError(.conflict, "service public/DEFAULT_GROUP@@orders already exists")) {
            try registry.createService(ServiceSettings(name: orders))
        }
        try registry.register(Instance(ip: "10.0.0.1", port: 1), in: orders)
        #expect(throws: RegistryError.self) { try registry.deleteService(orders) }
        try registry.deregister(InstanceAddress(ip: "10.0.0.1", port: 1), in: orders)
        #expect(registry.list(orders).exists)  // created explicitly: stays without instances
        try registry.deleteService(orders)
        #expect(registry.services(namespace: "public").isEmpty)
        #expect(throws: RegistryError.self) { try registry.createService(ServiceSettings(name: orders, protectThreshold: 2)) }
    }

    @Test func badInstancesAreRefusedWithTheReason() throws {
        let registry = try Registry(store: InMemoryRegistryStore(), clock: ManualClock())
        #expect(throws: RegistryError(.invalid, "port must be between 1 and 65535 (got 0)")) {
            try registry.register(Instance(ip: "10.0.0.1", port: 0), in: orders)
        }
        #expect(throws: RegistryError(.invalid, "ip is required")) { try registry.register(Instance(ip: "", port: 1), in: orders) }
        #expect(throws: RegistryError.self) { try registry.update(Instance(ip: "10.0.0.9", port: 1), in: orders) }
    }
}
