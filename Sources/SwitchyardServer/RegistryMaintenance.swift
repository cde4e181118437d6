import Logging
import NIOCore
import NIOPosix
import Registry
import ServiceLifecycle

/// Keeps the registry true: ephemeral instances without beats turn unhealthy and are removed
/// (swept twice a second), and persistent instances are checked every `healthCheckInterval`:
/// by TCP connect (healthy when a connection opens within two seconds), or, with metadata
/// `health.check: http`, by `GET {health.path, default /}` (healthy on 2xx/3xx within two seconds).
struct RegistryMaintenance: Service {
    let registry: Registry
    let group: any EventLoopGroup
    let healthCheckIntervalSeconds: Double
    let logger: Logger

    /// Health checks in flight at once (each holds a connection).
    static let checksAtOnce = 64

    func run() async throws {
        // Two loops: a slow health check must not delay the sweep (the beat timeline is ±0.5 s).
        await withTaskGroup(of: Void.self) { loops in
            loops.addTask {
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    let (unhealthy, removed) = registry.sweep()
                    if unhealthy + removed > 0 {
                        logger.info("instances without beats", metadata: ["now_unhealthy": "\(unhealthy)", "removed": "\(removed)"])
                    }
                    // (Cut short by a graceful shutdown: it must not wait out the sleep.)
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(nanoseconds: 500_000_000) }
                }
            }
            if healthCheckIntervalSeconds > 0 {
                loops.addTask {
                    while !Task.isCancelled && !Task.isShuttingDownGracefully {
                        await checkPersistentInstances()
                        // (A shutdown waited out up to this interval, 5 s by default.)
                        let interval = UInt64(healthCheckIntervalSeconds * 1e9)
                        try? await cancelWhenGracefulShutdown { try await Task.sleep(nanoseconds: interval) }
                    }
                }
            }
        }
    }

    func checkPersistentInstances() async {
        let targets = registry.snapshot().flatMap { name, instances in instances.filter { !$0.ephemeral }.map { (name, $0) } }
        for start in stride(from: 0, to: targets.count, by: Self.checksAtOnce) {
            await check(targets[start..<min(targets.count, start + Self.checksAtOnce)])
        }
    }

    func check(_ targets: ArraySlice<(ServiceName, Instance)>) async {
        await withTaskGroup(of: Void.self) { tasks in
            for (name, instance) in targets {
                tasks.addTask {
                    let healthy =
                        instance.metadata["health.check"]?.lowercased() == "http"
                        ? await answersHTTP(instance.ip, instance.port, path: instance.metadata["health.path"] ?? "/")
                        : await reachable(instance.ip, instance.port)
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

    func answersHTTP(_ host: String, _ port: Int, path: String) async -> Bool {
        let target = path.hasPrefix("/") ? path : "/" + path
        do {
            let channel = try await ClientBootstrap(group: group).connectTimeout(.seconds(2))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(StatusLineReader()) }
                }
                .connect(host: host, port: port).get()
            defer { channel.close(promise: nil) }
            let reader = try await channel.pipeline.handler(type: StatusLineReader.self).get()
            let status = try await channel.eventLoop.flatSubmit { () -> EventLoopFuture<Int> in
                let hostHeader = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
                let request = "GET \(target) HTTP/1.1\r\nHost: \(hostHeader)\r\nUser-Agent: switchyard-health\r\nConnection: close\r\n\r\n"
                channel.writeAndFlush(ByteBuffer(string: request), promise: nil)
                channel.eventLoop.scheduleTask(in: .seconds(2)) { reader.finish(0) }
                return reader.status.futureResult
            }.get()
            return (200..<400).contains(status)
        } catch {
            return false
        }
    }

    func reachable(_ host: String, _ port: Int) async -> Bool {
        await Self.reachable(host, port, group: group)
    }

    /// Whether a TCP connection to `host:port` opens within two seconds.
    static func reachable(_ host: String, _ port: Int, group: any EventLoopGroup) async -> Bool {
        do {
            let channel = try await ClientBootstrap(group: group).connectTimeout(.seconds(2)).connect(host: host, port: port).get()
            try? await channel.close()
            return true
        } catch {
            return false
        }
    }
}

/// Reads an HTTP response's status line ("HTTP/1.1 200 OK") and reports the code (0: none).
final class StatusLineReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    var seen = ByteBuffer()
    var promise: EventLoopPromise<Int>?
    var done = false

    var status: EventLoopPromise<Int> {
        guard let promise else { fatalError("status read before the handler was added") }
        return promise
    }

    func handlerAdded(context: ChannelHandlerContext) { promise = context.eventLoop.makePromise() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        seen.writeBuffer(&buffer)
        let bytes = seen.readableBytesView
        guard let end = bytes.firstIndex(of: UInt8(ascii: "\r")) ?? (bytes.count > 256 ? bytes.endIndex : nil) else { return }
        let parts = String(decoding: bytes[..<end], as: UTF8.self).split(separator: " ")
        finish(parts.count >= 2 && parts[0].hasPrefix("HTTP/") ? Int(parts[1]) ?? 0 : 0)
    }

    func channelInactive(context: ChannelHandlerContext) { finish(0) }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { finish(0) }
    func handlerRemoved(context: ChannelHandlerContext) { finish(0) }

    func finish(_ code: Int) {
        guard !done, let promise else { return }
        done = true
        promise.succeed(code)
    }
}
