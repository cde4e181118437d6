import Logging
import NIOCore
import NIOPosix
import Registry
import ServiceLifecycle

/// Keeps the registry true: ephemeral instances without beats turn unhealthy and are removed
/// (swept twice a second), and persistent instances are checked by TCP connect every
/// `healthCheckInterval` (healthy when a connection opens within two seconds).
struct RegistryMaintenance: Service {
    let registry: Registry
    let group: any EventLoopGroup
    let healthCheckIntervalSeconds: Double
    let logger: Logger

    func run() async throws {
        var sinceCheck = Double.infinity
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let (unhealthy, removed) = registry.sweep()
            if unhealthy + removed > 0 {
                logger.info("instances without beats", metadata: ["now_unhealthy": "\(unhealthy)", "removed": "\(removed)"])
            }
            if healthCheckIntervalSeconds > 0 && sinceCheck >= healthCheckIntervalSeconds {
                sinceCheck = 0
                await checkPersistentInstances()
            }
            try? await Task.sleep(nanoseconds: 500_000_000)
            sinceCheck += 0.5
        }
    }

    func checkPersistentInstances() async {
        let targets = registry.snapshot().flatMap { name, instances in instances.filter { !$0.ephemeral }.map { (name, $0) } }
        guard !targets.isEmpty else { return }
        await withTaskGroup(of: Void.self) { tasks in
            for (name, instance) in targets {
                tasks.addTask {
                    let healthy = await reachable(instance.ip, instance.port)
                    guard healthy != instance.healthy else { return }
                    do {
                        try registry.setHealthy(healthy, instance.address, in: name)
                        logger.notice(
                            "persistent instance health changed",
                            metadata: ["service": "\(name)", "instance": "\(instance.address)", "healthy": "\(healthy)"]
                        )
                    } catch {
                        logger.warning("cannot record an instance's health", metadata: ["service": "\(name)", "error": "\(error)"])
                    }
                }
            }
        }
    }

    func reachable(_ host: String, _ port: Int) async -> Bool {
        do {
            let channel = try await ClientBootstrap(group: group).connectTimeout(.seconds(2)).connect(host: host, port: port).get()
            try? await channel.close()
            return true
        } catch {
            return false
        }
    }
}
