import ArgumentParser
import Foundation
import MQTTWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SwitchyardCore

/// `switchyard bench mqtt`: an MQTT load tool in the spirit of emqtt-bench. `compare` (the
/// default) starts Switchyard (and with `--peer` Mosquitto) as child processes on loopback and
/// runs the same scenarios against each — fan-in (publishers → 1 subscriber) and 1-to-1 pairs,
/// at each QoS — then idle connections for memory per connection, and prints both and the
/// ratio. `pub`, `sub` and `conn` run one kind of load against any broker.
struct BenchMQTT: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mqtt",
        abstract: "MQTT load: compare Switchyard with Mosquitto, or pub/sub/conn against any broker.",
        discussion: """
            Payloads carry the publisher, a sequence number and the send time, so receivers report \
            loss, duplicates, out-of-order and latency percentiles (exact, from every sample). A \
            publisher keeps at most --window messages unanswered (QoS 1: unacknowledged; QoS 0, \
            in compare and pub+sub runs of this process: not yet received), so a broker is measured \
            at its own pace rather than by how much it can buffer.
            """
    )

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case compare, pub, sub, conn
    }

    @Argument(help: "compare | pub | sub | conn") var mode: Mode = .compare
    @Option(help: "Broker host (pub, sub, conn).") var host = "127.0.0.1"
    @Option(help: "Broker port (pub, sub, conn).") var port = 1883
    @Option(help: "Clients (pub: publishers, sub: subscribers, conn: connections).") var clients = 10
    @Option(help: "Messages per publisher (pub).") var count = 1000
    @Option(help: "Messages per scenario (compare).") var messages = 50_000
    @Option(help: "QoS levels, comma-separated.") var qos = "0,1"
    @Option(help: "Payload bytes (at least 20).") var payloadBytes = 64
    @Option(help: "Topic template; %i is the client index (pub: topic, sub: filter).") var topic = "bench/%i"
    @Option(help: "Unanswered messages per publisher.") var window = 10
    @Option(help: "Messages per second per publisher (pub; 0: as fast as the window allows).") var rate = 0.0
    @Option(help: "Publishers in the fan-in scenario (compare).") var publishers = 100
    @Option(help: "Publisher/subscriber pairs (compare).") var pairs = 50
    @Option(help: "Idle connections for the memory figure (compare; 0 to skip).") var idleConnections = 10_000
    @Option(help: "Seconds to run (sub, conn) or at most per scenario (compare, pub).") var duration = 60.0
    @Flag(help: "compare: also run Mosquitto (Debian package mosquitto) and print the ratio.") var peer = false
    @Flag(help: "compare: once more with the pipeline on (topics routed through the journal to a sink).") var pipeline = false
    @Option(
        help: """
            compare: Switchyard's event loops (node.threads; 0: one per core). Default 1, as \
            Mosquitto runs one thread: each broker gets one core, the load tool the other.
            """
    ) var brokerThreads = 1

    /// The load tool's connections share one event loop (the machine's other cores are the broker's).
    static let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    func run() async throws {
        let levels = qos.split(separator: ",").compactMap { UInt8($0).flatMap(QoS.init(rawValue:)) }
        guard !levels.isEmpty, levels.allSatisfy({ $0 != .exactlyOnce }) else {
            throw ValidationError("--qos takes 0 and/or 1 (e.g. 0,1)")
        }
        guard rate >= 0, rate.isFinite else { throw ValidationError("--rate must be 0 (no limit) or a number of messages per second") }
        guard (0...256).contains(brokerThreads) else { throw ValidationError("--broker-threads must be between 0 and 256 (0: one per core)") }
        guard payloadBytes >= 20 else { throw ValidationError("--payload-bytes must be at least 20 (publisher, sequence, time)") }
        emit("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")
        emit("command: switchyard bench mqtt \(CommandLine.arguments.dropFirst(3).joined(separator: " "))")
        switch mode {
        case .compare: try await compare(levels)
        case .pub: try await pubOnly(levels[0])
        case .sub: try await subOnly(levels[0])
        case .conn: try await connOnly()
        }
    }

    // MARK: - compare

    func compare(_ levels: [QoS]) async throws {
        emit(
            "switchyard: \(brokerThreads == 0 ? "one event loop per core" : "\(brokerThreads) event loop(s)") (--broker-threads); mosquitto: one thread"
        )
        var brokers: [BenchBroker] = [try await BenchBroker.switchyard(pipeline: false, threads: brokerThreads)]
        if peer {
            do {
                brokers.append(try await BenchBroker.mosquitto())
            } catch {
                emit("peer: \(error) (apt-get install mosquitto); no ratio printed")
            }
        }
        var results: [String: [String: ScenarioResult]] = [:]  // scenario → broker → result
        defer { for b in brokers { b.stop() } }
        var lost = 0  // Switchyard's lost and duplicated messages: the run fails on any
        var order: [String] = []
        for q in levels {
            for fanIn in [true, false] {
                let name = fanIn ? "fan-in \(publishers)→1, QoS \(q.rawValue)" : "pairs \(pairs)×1→1, QoS \(q.rawValue)"
                order.append(name)
                for broker in brokers {
                    let r = try await scenario(broker: broker, qos: q, fanIn: fanIn)
                    emit(r.report(title: "\(broker.name): \(name)"))
                    if broker.name == "switchyard" { lost += r.lost + r.duplicates }
                    results[name, default: [:]][broker.name] = r
                }
            }
        }
        if pipeline {
            let routed = try await BenchBroker.switchyard(pipeline: true, threads: brokerThreads)
            defer { routed.stop() }
            for q in levels {
                let name = "fan-in \(publishers)→1, QoS \(q.rawValue), pipeline on"
                let before = routed.sink?.requests ?? 0
                let r = try await scenario(broker: routed, qos: q, fanIn: true)
                emit(r.report(title: "\(routed.name): \(name)"))
                lost += r.lost + r.duplicates
                if let plain = results["fan-in \(publishers)→1, QoS \(q.rawValue)"]?["mosquitto"] {
                    emit(String(format: "  vs mosquitto without a pipeline: %.2f× the throughput", r.throughput / max(plain.throughput, 1)))
                }
                if let sink = routed.sink {
                    // Forwarding runs behind the subscribers: wait (bounded) for it to catch up.
                    for _ in 0..<200 where sink.requests - before < r.expected { try await Task.sleep(nanoseconds: 50_000_000) }
                    let forwarded = sink.requests - before
                    emit("  sink received \(forwarded) of \(r.expected) forwarded messages")
                    lost += max(0, r.expected - forwarded)
                }
            }
        }
        var idle: [String: Double] = [:]
        if idleConnections > 0 {
            // On a fresh process of each broker: one that just ran the throughput scenarios
            // may give memory back meanwhile and show a smaller (even negative) growth.
            for name in brokers.map(\.name) {
                let broker =
                    name == "switchyard"
                    ? try await BenchBroker.switchyard(pipeline: false, threads: brokerThreads) : try await BenchBroker.mosquitto()
                defer { broker.stop() }
                let perConnection = try await idleMemory(broker: broker)
                idle[broker.name] = perConnection
                emit(String(format: "%@: %d idle connections: %.1f KiB RSS per connection", broker.name, idleConnections, perConnection / 1024))
            }
        }
        if brokers.count == 2 {
            emit("\nsummary (switchyard / mosquitto):")
            for name in order {
                guard let s = results[name]?["switchyard"], let m = results[name]?["mosquitto"] else { continue }
                emit(
                    String(
                        format: "  %@: throughput %.0f vs %.0f msg/s → ratio %.2f; p99 %.2f vs %.2f ms",
                        name,
                        s.throughput,
                        m.throughput,
                        s.throughput / max(m.throughput, 1),
                        s.p99 / 1e6,
                        m.p99 / 1e6
                    )
                )
            }
            if let s = idle["switchyard"], let m = idle["mosquitto"] {
                emit(String(format: "  idle connection RSS: %.1f vs %.1f KiB", s / 1024, m / 1024))
            }
        }
        if lost > 0 {
            emit("FAILED: Switchyard lost or duplicated \(lost) messages")
            throw ExitCode(1)
        }
    }

    struct ScenarioResult {
        var expected: Int
        var sent: Int
        var unique: Int
        var duplicates: Int
        var outOfOrder: Int
        var seconds: Double
        var latencies: [UInt64]
        var brokerCPU: Double
        /// This process's CPU (the clients) over the scenario: the load tool shares the cores.
        var clientCPU: Double

        var throughput: Double { Double(unique) / max(seconds, 1e-9) }
        var lost: Int { expected - unique }
        var p99: Double { percentile(0.99) }

        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            return Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))])
        }

        func report(title: String) -> String {
            String(
                format:
                    "%@: %d/%d received in %.2f s → %.0f msg/s; lost %d, duplicates %d, out of order %d; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms; broker CPU %.1f µs/msg (clients %.1f)",
                title,
                unique,
                expected,
                seconds,
                throughput,
                lost,
                duplicates,
                outOfOrder,
                percentile(0.5) / 1e6,
                p99 / 1e6,
                Double(latencies.last ?? 0) / 1e6,
                brokerCPU / Double(max(unique, 1)) * 1e6,
                clientCPU / Double(max(unique, 1)) * 1e6
            )
        }
    }

    /// One scenario against one broker: subscribers first, then the publishers all at once.
    func scenario(broker: BenchBroker, qos: QoS, fanIn: Bool) async throws -> ScenarioResult {
        let publisherCount = fanIn ? publishers : pairs
        let perPublisher = max(1, messages / publisherCount)
        let stats = BenchStats(perPublisher: perPublisher)
        let transit = BenchTransit()
        let tag = "\(broker.name)-\(fanIn ? "f" : "p")\(qos.rawValue)-\(getpid())"
        var channels: [any Channel] = []
        defer { for c in channels { c.close(promise: nil) } }
        let subscriberFilters = fanIn ? ["bench/\(tag)/+"] : (0..<pairs).map { "bench/\(tag)/\($0)" }
        for (i, filter) in subscriberFilters.enumerated() {
            var plan = BenchMQTTClient.Plan(clientID: "sub-\(tag)-\(i)")
            plan.subscribe = filter
            plan.qos = qos
            channels.append(
                try await BenchMQTTClient.connect(port: broker.port, plan: plan, stats: stats, transit: transit).1
            )
        }
        var handlers: [BenchMQTTClient] = []
        for i in 0..<publisherCount {
            var plan = BenchMQTTClient.Plan(clientID: "pub-\(tag)-\(i)")
            plan.publishTopic = "bench/\(tag)/\(i)"
            plan.publisherIndex = i
            plan.count = perPublisher
            plan.qos = qos
            plan.payloadBytes = payloadBytes
            plan.window = window
            let (handler, channel) = try await BenchMQTTClient.connect(port: broker.port, plan: plan, stats: stats, transit: transit)
            handlers.append(handler)
            channels.append(channel)
        }
        let expected = perPublisher * publisherCount
        let cpuBefore = broker.cpuSeconds()
        let clientCPUBefore = CPUTime.process()
        let start = SystemMonotonicClock().nowNanos()
        for (h, c) in zip(handlers, channels.suffix(handlers.count)) { c.eventLoop.execute { h.start() } }
        let deadline = start + UInt64(duration * 1e9)
        var last = (count: 0, at: start)
        var lastProgress = start
        while true {
            let received = stats.counts.withLockedValue { $0.received }
            let now = SystemMonotonicClock().nowNanos()
            if received >= expected || now > deadline { break }
            if now - lastProgress > 1_000_000_000 {
                emit("  … \(broker.name): \(received) of \(expected) received")
                lastProgress = now
            }
            if received != last.count {
                last = (received, now)
            } else if now - last.at > 3_000_000_000 {
                // Stalled: a message was dropped (its publisher's window never reopens), or the
                // broker stopped sending. Say where the messages are.
                let c = stats.counts.withLockedValue { ($0.sent, $0.acked, $0.received) }
                emit("  \(broker.name): stalled for 3 s — \(c.0) published, \(c.1) acknowledged to publishers, \(c.2) received by subscribers")
                break
            }
            try await Task.sleep(nanoseconds: 5_000_000)
        }
        try await Task.sleep(nanoseconds: 100_000_000)  // late duplicates would show up now
        let c = stats.counts.withLockedValue { c in
            c.closing = true
            return c
        }
        if !c.dropped.isEmpty {
            emit("  \(broker.name): \(c.dropped.count) connection(s) closed during the run: \(c.dropped.prefix(5).joined(separator: ", "))")
        }
        let end = c.lastReceivedAt > start ? c.lastReceivedAt : SystemMonotonicClock().nowNanos()
        return ScenarioResult(
            expected: expected,
            sent: c.sent,
            unique: stats.unique,
            duplicates: c.duplicates,
            outOfOrder: c.outOfOrder,
            seconds: Double(end - start) / 1e9,
            latencies: c.latencies.sorted(),
            brokerCPU: broker.cpuSeconds() - cpuBefore,
            clientCPU: CPUTime.process() - clientCPUBefore
        )
    }

    /// RSS growth of the broker per idle connection.
    func idleMemory(broker: BenchBroker) async throws -> Double {
        let stats = BenchStats(perPublisher: 1)
        let transit = BenchTransit()
        try await Task.sleep(nanoseconds: 500_000_000)
        let before = broker.residentBytes()
        var channels: [any Channel] = []
        channels.reserveCapacity(idleConnections)
        var index = 0
        while index < idleConnections {
            let batch = min(250, idleConnections - index)
            try await withThrowingTaskGroup(of: (any Channel).self) { tasks in
                for i in index..<(index + batch) {
                    tasks.addTask {
                        let plan = BenchMQTTClient.Plan(clientID: "idle-\(broker.name)-\(i)")
                        return try await BenchMQTTClient.connect(port: broker.port, plan: plan, stats: stats, transit: transit).1
                    }
                }
                for try await c in tasks { channels.append(c) }
            }
            index += batch
        }
        try await Task.sleep(nanoseconds: 1_000_000_000)
        let after = broker.residentBytes()
        for c in channels { c.close(promise: nil) }
        try await Task.sleep(nanoseconds: 500_000_000)
        return Double(after - before) / Double(idleConnections)
    }

    // MARK: - against any broker

    func pubOnly(_ q: QoS) async throws {
        let stats = BenchStats(perPublisher: count)
        let transit = BenchTransit(receivers: 0)
        var pairs: [(BenchMQTTClient, any Channel)] = []
        for i in 0..<clients {
            var plan = BenchMQTTClient.Plan(clientID: "pub-\(getpid())-\(i)")
            plan.publishTopic = topic.replacing("%i", with: String(i))
            plan.publisherIndex = i
            plan.count = count
            plan.qos = q
            plan.payloadBytes = payloadBytes
            plan.window = window
            plan.rate = rate
            pairs.append(try await BenchMQTTClient.connect(host: host, port: port, plan: plan, stats: stats, transit: transit))
        }
        let start = SystemMonotonicClock().nowNanos()
        for (h, c) in pairs { c.eventLoop.execute { h.start() } }
        let target = clients * count
        var lastPrint = start
        while true {
            let c = stats.counts.withLockedValue { ($0.sent, $0.acked) }
            let now = SystemMonotonicClock().nowNanos()
            let finished = q == .atMostOnce ? c.0 >= target : c.1 >= target
            if finished || Double(now - start) / 1e9 > duration { break }
            if now - lastPrint > 1_000_000_000 {
                emit("  … sent \(c.0), acknowledged \(c.1)")
                lastPrint = now
            }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        let seconds = Double(SystemMonotonicClock().nowNanos() - start) / 1e9
        let c = stats.counts.withLockedValue { $0 }
        emit(
            String(
                format: "pub: %d clients sent %d (acknowledged %d) in %.2f s → %.0f msg/s",
                clients,
                c.sent,
                c.acked,
                seconds,
                Double(c.sent) / seconds
            )
        )
        for (_, ch) in pairs { ch.close(promise: nil) }
    }

    func subOnly(_ q: QoS) async throws {
        let stats = BenchStats(perPublisher: 10_000_000)
        let transit = BenchTransit()
        var channels: [any Channel] = []
        for i in 0..<clients {
            var plan = BenchMQTTClient.Plan(clientID: "sub-\(getpid())-\(i)")
            plan.subscribe = topic.replacing("%i", with: String(i))
            plan.qos = q
            channels.append(try await BenchMQTTClient.connect(host: host, port: port, plan: plan, stats: stats, transit: transit).1)
        }
        emit("sub: \(clients) subscribers on \(topic); running \(duration) s")
        let start = SystemMonotonicClock().nowNanos()
        while Double(SystemMonotonicClock().nowNanos() - start) / 1e9 < duration {
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let c = stats.counts.withLockedValue { ($0.received, $0.duplicates, $0.outOfOrder) }
            emit("  … received \(c.0), duplicates \(c.1), out of order \(c.2)")
        }
        let c = stats.counts.withLockedValue { $0 }
        let sorted = c.latencies.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1e6 }
        emit(
            String(
                format: "sub: received %d (%d distinct), duplicates %d, out of order %d; latency p50 %.2f ms, p99 %.2f ms (same-host clock)",
                c.received,
                stats.unique,
                c.duplicates,
                c.outOfOrder,
                pct(0.5),
                pct(0.99)
            )
        )
        for ch in channels { ch.close(promise: nil) }
    }

    func connOnly() async throws {
        let stats = BenchStats(perPublisher: 1)
        let transit = BenchTransit()
        var channels: [any Channel] = []
        let start = SystemMonotonicClock().nowNanos()
        for i in 0..<clients {
            let plan = BenchMQTTClient.Plan(clientID: "conn-\(getpid())-\(i)")
            do {
                channels.append(try await BenchMQTTClient.connect(host: host, port: port, plan: plan, stats: stats, transit: transit).1)
            } catch {
                emit("  connection \(i) failed: \(error)")
            }
            if (i + 1) % 1000 == 0 { emit("  … \(i + 1) connected") }
        }
        let seconds = Double(SystemMonotonicClock().nowNanos() - start) / 1e9
        emit(
            String(
                format: "conn: %d of %d connected in %.2f s (%.0f/s); holding %.0f s",
                channels.count,
                clients,
                seconds,
                Double(channels.count) / seconds,
                duration
            )
        )
        try await Task.sleep(nanoseconds: UInt64(duration * 1e9))
        for ch in channels { ch.close(promise: nil) }
    }
}

/// A broker under test, run as a child process on loopback.
final class BenchBroker: @unchecked Sendable {
    let name: String
    let process: Process
    let port: Int
    let dir: String
    /// The service forwarded messages go to (Switchyard with the pipeline on).
    let sink: BenchSink?
    let sinkGroup: MultiThreadedEventLoopGroup?

    init(name: String, process: Process, port: Int, dir: String, sink: BenchSink? = nil, sinkGroup: MultiThreadedEventLoopGroup? = nil) {
        self.name = name
        self.process = process
        self.port = port
        self.dir = dir
        self.sink = sink
        self.sinkGroup = sinkGroup
    }

    func cpuSeconds() -> Double { CPUTime.of(pid: process.processIdentifier) }

    func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kb = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kb * 1024
    }

    func stop() {
        process.terminate()
        // Polled: waitUntilExit needs a run loop this async command does not have.
        for _ in 0..<300 where process.isRunning { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: dir)
        if let sinkGroup { try? sinkGroup.syncShutdownGracefully() }
    }

    static func freePort() throws -> Int {
        let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).wait()
        defer { try? channel.close().wait() }
        return channel.localAddress!.port!
    }

    static func tempDir(_ name: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-bench-\(name)-\(getpid())").path
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// This binary's `serve`, anonymous MQTT; with `pipeline`, `bench/…` is routed through the
    /// journal to a sink in this process (otherwise no route: subscribers only). The in-flight
    /// window towards subscribers is as open as Mosquitto's below (`max_inflight_messages 0`,
    /// no limit): both brokers then pace QoS 1 by the clients alone.
    static func switchyard(pipeline: Bool, threads: Int) async throws -> BenchBroker {
        let port = try freePort()
        var sink: BenchSink?
        var sinkGroup: MultiThreadedEventLoopGroup?
        var routes = ""
        if pipeline {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            sinkGroup = group
            let s = try await BenchSink.start(group: group)
            sink = s
            routes = """
                routes:
                  - name: bench
                    match: "^bench/(?<run>[^/]+)/(?<device>[^/]+)$"
                    targets: [{service: sink, path: "/ingest/{device}", timeout: 5s, retries: 2}]
                services:
                  sink: {max_concurrency: 512, instances: [{url: "http://127.0.0.1:\(s.port)"}]}
                """
        }
        return try await serve(pipeline ? "switchyard-routed" : "switchyard", port: port, sink: sink, sinkGroup: sinkGroup) { dir in
            """
            node: {data_dir: \(dir)/data, threads: \(threads)}
            listeners:
              http: {host: 127.0.0.1, port: 0}
              admin: {host: 127.0.0.1, port: 0}
              mqtt: {host: 127.0.0.1, port: \(port)}
              nacos: {host: 127.0.0.1, port: 0}
            channels:
              mqtt: {allow_anonymous: true, max_connections: 1000000, max_connection_rate: 0, max_inflight: 65535}
            \(routes)
            """
        }
    }

    /// This binary's `serve` on the config `yaml(dir)` gives, in a fresh temporary directory
    /// (output discarded); ready once `port` accepts connections.
    static func serve(
        _ dirName: String,
        port: Int,
        sink: BenchSink? = nil,
        sinkGroup: MultiThreadedEventLoopGroup? = nil,
        yaml: (String) -> String
    ) async throws -> BenchBroker {
        let dir = try tempDir(dirName)
        try yaml(dir).write(toFile: "\(dir)/switchyard.yaml", atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        p.arguments = ["serve", "--config", "\(dir)/switchyard.yaml"]
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        let broker = BenchBroker(name: "switchyard", process: p, port: port, dir: dir, sink: sink, sinkGroup: sinkGroup)
        try await broker.waitUntilListening()
        return broker
    }

    /// Mosquitto 2 from the Debian package: anonymous, no persistence.
    static func mosquitto() async throws -> BenchBroker {
        let candidates = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        guard let binary = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw BenchError("mosquitto not found")
        }
        let dir = try tempDir("mosquitto")
        let port = try freePort()
        let conf = """
            listener \(port) 127.0.0.1
            allow_anonymous true
            persistence false
            log_dest none
            max_queued_messages 10000
            max_inflight_messages 0
            """
        try conf.write(toFile: "\(dir)/mosquitto.conf", atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["-c", "\(dir)/mosquitto.conf"]
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        let broker = BenchBroker(name: "mosquitto", process: p, port: port, dir: dir)
        try await broker.waitUntilListening()
        return broker
    }

    func waitUntilListening() async throws {
        for _ in 0..<200 {
            if let c = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get() {
                try? await c.close()
                return
            }
            guard process.isRunning else { throw BenchError("\(name) exited at start (status \(process.terminationStatus))") }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        stop()
        throw BenchError("\(name) did not listen on \(port) within 10 s")
    }
}

/// A line on stdout at once (progress shows as it happens, also through a pipe).
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
