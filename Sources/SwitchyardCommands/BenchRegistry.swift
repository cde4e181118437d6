import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchyardCore

/// `switchyard bench registry`: the Nacos API of a `switchyard serve` child process on
/// loopback — instance registrations per second, beats sustained (every instance every 5 s,
/// with the server's CPU), and the time from a config publish to each long-polling
/// listener's wake-up.
struct BenchRegistry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "registry",
        abstract: "Registry load: registrations/s, beats sustained (server CPU), publish → listener wake-up."
    )

    @Option(help: "Ephemeral instances (spread over services of 100).") var instances = 10_000
    @Option(help: "Client connections for registrations and beats.") var connections = 16
    @Option(help: "Seconds of beating (every instance every --beat-interval).") var beatSeconds = 20.0
    @Option(help: "Seconds between an instance's beats.") var beatInterval = 5.0
    @Option(help: "Long-polling config listeners.") var listeners = 1000
    @Option(help: "Config publishes the listeners wait for.") var publishes = 20

    static let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    func run() async throws {
        emit("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")
        emit("command: switchyard bench registry \(CommandLine.arguments.dropFirst(3).joined(separator: " "))")
        let server = try await Self.startServer()
        defer { server.stop() }
        let port = server.port
        var pool: [BenchHTTPConnection] = []
        for _ in 0..<connections { pool.append(try await BenchHTTPConnection.connect(port: port, group: Self.clientGroup)) }
        defer { for c in pool { c.close() } }

        // 1. Registrations.
        let started = SystemMonotonicClock().nowNanos()
        let latencies = try await Self.spread(instances, over: pool) { i, connection in
            try await connection.timed("POST", Self.instancePath("ns/instance", i), expect: "ok")
        }
        let registerSeconds = Double(SystemMonotonicClock().nowNanos() - started) / 1e9
        emit(
            "registrations: \(instances) in \(String(format: "%.2f", registerSeconds)) s = \(Int(Double(instances) / registerSeconds))/s; "
                + "latency \(Self.percentiles(latencies))"
        )

        // 2. Beats: each instance every beatInterval, evenly spread, for beatSeconds.
        let rate = Double(instances) / beatInterval
        let total = Int(rate * beatSeconds)
        let cpuBefore = server.cpuSeconds(), clientBefore = CPUTime.process()
        let beatStart = SystemMonotonicClock().nowNanos()
        let beatLatencies = try await Self.spread(total, over: pool) { n, connection in
            // Paced: beat n is due at n / rate seconds.
            let due = beatStart + UInt64(Double(n) / rate * 1e9)
            let now = SystemMonotonicClock().nowNanos()
            if due > now { try await Task.sleep(nanoseconds: due - now) }
            return try await connection.timed("PUT", Self.instancePath("ns/instance/beat", n % instances), expect: "\"code\":10200")
        }
        let beatWall = Double(SystemMonotonicClock().nowNanos() - beatStart) / 1e9
        let serverCPU = (server.cpuSeconds() - cpuBefore) / beatWall * 100
        let clientCPU = (CPUTime.process() - clientBefore) / beatWall * 100
        emit(
            "beats: \(total) in \(String(format: "%.1f", beatWall)) s = \(Int(Double(total) / beatWall))/s "
                + "(\(instances) instances every \(beatInterval) s); server CPU \(String(format: "%.1f", serverCPU)) % of one core "
                + "(goal < 30 %); load tool \(String(format: "%.1f", clientCPU)) %; latency \(Self.percentiles(beatLatencies))"
        )
        let healthy = try await Self.healthyCount(pool[0], services: (instances + 99) / 100)
        emit("healthy after beating: \(healthy) of \(instances)")

        // 3. Config publish → listener wake-up.
        let wake = try await Self.wakeUps(port: port, listeners: listeners, publishes: publishes, publisher: pool[0])
        emit(
            "listener wake-up: \(listeners) listeners × \(publishes) publishes = \(wake.count) wake-ups; \(Self.percentiles(wake)) (goal p99 ≤ 200 ms)"
        )
        if healthy != instances || wake.count != listeners * publishes { throw ExitCode(1) }
    }

    static func instancePath(_ endpoint: String, _ i: Int) -> String {
        "/nacos/v1/\(endpoint)?serviceName=bench-\(i / 100)&ip=10.\(i / 65_536 % 256).\(i / 256 % 256).\(i % 256)&port=8080"
    }

    /// Runs `count` jobs, each connection taking the next one in turn; returns their latencies.
    static func spread(
        _ count: Int,
        over pool: [BenchHTTPConnection],
        _ job: @escaping @Sendable (Int, BenchHTTPConnection) async throws -> UInt64
    ) async throws -> [UInt64] {
        let next = NIOLockedValueBox(0)
        return try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for connection in pool {
                group.addTask {
                    var mine: [UInt64] = []
                    while true {
                        let n = next.withLockedValue { v -> Int in
                            defer { v += 1 }
                            return v
                        }
                        if n >= count { return mine }
                        mine.append(try await job(n, connection))
                    }
                }
            }
            var all: [UInt64] = []
            for try await part in group { all += part }
            return all
        }
    }

    static func healthyCount(_ connection: BenchHTTPConnection, services: Int) async throws -> Int {
        var count = 0
        for s in 0..<services {
            let (_, body) = try await connection.send("GET", "/nacos/v1/ns/instance/list?serviceName=bench-\(s)&healthyOnly=true")
            count += body.components(separatedBy: "\"healthy\":true").count - 1
        }
        return count
    }

    /// Every listener holds a long-poll on one key; each publish wakes all of them. Returns
    /// the time from each publish request's start to each listener's answer.
    static func wakeUps(port: Int, listeners: Int, publishes: Int, publisher: BenchHTTPConnection) async throws -> [UInt64] {
        let form = "dataId=bench.yaml&group=BENCH&content="
        _ = try await publisher.send("POST", "/nacos/v1/cs/configs", body: form + "v%3A+0")
        let published = NIOLockedValueBox<UInt64>(0)
        let samples = NIOLockedValueBox<[UInt64]>([])
        let listening = NIOLockedValueBox(0)
        var clients: [BenchHTTPConnection] = []
        for _ in 0..<listeners { clients.append(try await BenchHTTPConnection.connect(port: port, group: clientGroup)) }
        defer { for c in clients { c.close() } }
        let all = clients
        let tasks = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in all {
                    group.addTask {
                        for _ in 0..<publishes {
                            // As a Nacos client: read the config (its MD5), then long-poll with it.
                            let (headers, _) = try await client.send("GET", "/nacos/v1/cs/configs?dataId=bench.yaml&group=BENCH")
                            let md5 = headers.first(name: "content-md5") ?? ""
                            listening.withLockedValue { $0 += 1 }
                            let probe = "bench.yaml%02BENCH%02\(md5)%02%01"
                            _ = try await client.send(
                                "POST",
                                "/nacos/v1/cs/configs/listener",
                                body: "Listening-Configs=\(probe)",
                                headers: [("Long-Pulling-Timeout", "30000")]
                            )
                            let woke = SystemMonotonicClock().nowNanos()
                            samples.withLockedValue { $0.append(woke - published.withLockedValue { $0 }) }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        for round in 1...publishes {
            // Wait until every listener holds its poll for this round (plus a moment to arrive).
            let deadline = Date().addingTimeInterval(30)
            while listening.withLockedValue({ $0 }) < listeners * round && Date() < deadline { try await Task.sleep(nanoseconds: 5_000_000) }
            try await Task.sleep(nanoseconds: 200_000_000)
            published.withLockedValue { $0 = SystemMonotonicClock().nowNanos() }
            _ = try await publisher.send("POST", "/nacos/v1/cs/configs", body: form + "v%3A+\(round)")
        }
        try await tasks.value
        return samples.withLockedValue { $0 }
    }

    static func percentiles(_ samples: [UInt64]) -> String {
        guard !samples.isEmpty else { return "no samples" }
        let sorted = samples.sorted()
        func at(_ p: Double) -> String {
            String(format: "%.2f", Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1e6)
        }
        return "p50 \(at(0.5)) ms, p99 \(at(0.99)) ms, max \(at(1.0)) ms"
    }

    static func startServer() async throws -> BenchBroker {
        let port = try BenchBroker.freePort()
        return try await BenchBroker.serve("registry", port: port) { dir in
            """
            node: {data_dir: \(dir)/data}
            listeners:
              http: {host: 127.0.0.1, port: 0}
              admin: {host: 127.0.0.1, port: 0}
              mqtt: {host: 127.0.0.1, port: 0}
              nacos: {host: 127.0.0.1, port: \(port)}
            """
        }
    }
}

/// One keep-alive HTTP/1.1 connection; requests go one at a time, answers come back whole.
final class BenchHTTPConnection: Sendable {
    let channel: any Channel
    let handler: NIOLoopBound<BenchHTTPHandler>

    private init(channel: any Channel, handler: NIOLoopBound<BenchHTTPHandler>) {
        self.channel = channel
        self.handler = handler
    }

    static func connect(port: Int, group: any EventLoopGroup) async throws -> BenchHTTPConnection {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(BenchHTTPHandler())
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: BenchHTTPHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return BenchHTTPConnection(channel: channel, handler: handler)
    }

    func send(_ method: String, _ uri: String, body: String = "", headers: [(String, String)] = []) async throws -> (HTTPHeaders, String) {
        let promise = channel.eventLoop.makePromise(of: (HTTPResponseHead, String).self)
        let handler = self.handler
        let channel = self.channel
        channel.eventLoop.execute {
            var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: uri)
            head.headers.add(name: "host", value: "127.0.0.1")
            head.headers.add(name: "content-length", value: String(body.utf8.count))
            if !body.isEmpty { head.headers.add(name: "content-type", value: "application/x-www-form-urlencoded") }
            for (name, value) in headers { head.headers.add(name: name, value: value) }
            handler.value.waiting.append(promise)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if !body.isEmpty { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        let (head, text) = try await promise.futureResult.get()
        guard head.status == .ok else { throw BenchError("\(method) \(uri): \(head.status.code) \(text)") }
        return (head.headers, text)
    }

    /// Sends and checks the answer contains `expect`; returns the latency in nanoseconds.
    func timed(_ method: String, _ uri: String, expect: String) async throws -> UInt64 {
        let start = SystemMonotonicClock().nowNanos()
        let (_, body) = try await send(method, uri)
        guard body.contains(expect) else { throw BenchError("\(method) \(uri): unexpected answer \(body)") }
        return SystemMonotonicClock().nowNanos() - start
    }

    func close() { channel.close(promise: nil) }
}

final class BenchHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    var waiting: CircularBuffer<EventLoopPromise<(HTTPResponseHead, String)>> = []
    var head: HTTPResponseHead?
    var body = ""

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = ""
        case .body(let buffer): body += String(buffer: buffer)
        case .end:
            if let head, !waiting.isEmpty { waiting.removeFirst().succeed((head, body)) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        while !waiting.isEmpty { waiting.removeFirst().fail(BenchError("connection closed")) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        while !waiting.isEmpty { waiting.removeFirst().fail(error) }
        context.close(promise: nil)
    }
}
