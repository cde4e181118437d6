import ArgumentParser
import Foundation
import HTTPForwarder
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchyardConfig
import SwitchyardCore
import SwitchyardServer

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks that print the machine, the command and the figures.",
        subcommands: [BenchHTTP.self, BenchMQTT.self, BenchRegistry.self, BenchPipeline.self, BenchJournal.self]
    )
}

/// Posts messages to the HTTP channel of an in-process Switchyard that forwards them to a
/// minimal NIO sink in this process; optionally runs the same load through nginx
/// (proxy_pass to the same sink) and prints the ratio.
struct BenchHTTP: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http",
        abstract: "HTTP channel → controller → router → sink, end to end."
    )

    @Option(help: "Messages to send (bounded load).") var messages = 200_000
    @Option(help: "Concurrent client connections.") var connections = 32
    @Option(help: "Requests pipelined per connection.") var depth = 4
    @Option(help: "Payload size in bytes.") var payloadBytes = 128
    @Option(help: "Give up after this many seconds.") var timeLimit = 120.0
    @Option(help: "Event loop threads for Switchyard.") var threads = System.coreCount
    @Flag(help: "Also run the same load through nginx (needs nginx installed) and print the ratio.") var peer = false
    @Flag(help: "No filters, tags or lanes: only the channel, the route and the forwarder.") var bare = false
    @Option(help: "max_concurrency of the sink service (requests in flight to it).") var upstreamConcurrency = 512
    @Option(help: "Deliver in batches of up to this many messages (5 ms linger); 0 = one request per message.") var batch = 0
    @Flag(help: "Without the journal: 202 means in memory, not on disk (for comparison only).") var noJournal = false
    @Option(help: "Post this many messages per request to POST /v1/batch (NDJSON); 0 = one message per POST /v1/messages.")
    var ingestBatch = 0
    @Option(help: "journal.max_commit_latency in milliseconds (default: the configuration's, 2 ms).") var commitLatencyMs: Double?

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .error
            return h
        }
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")
        print(
            "command: switchyard bench http --messages \(messages) --connections \(connections) --depth \(depth) --payload-bytes \(payloadBytes)\(peer ? " --peer" : "")\(bare ? " --bare" : "")\(batch > 0 ? " --batch \(batch)" : "")\(ingestBatch > 0 ? " --ingest-batch \(ingestBatch)" : "")\(noJournal ? " --no-journal" : "")\(commitLatencyMs.map { " --commit-latency-ms \($0)" } ?? "")"
        )
        let sinkGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let sink = try await BenchSink.start(group: sinkGroup)
        let dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let yaml = """
            node: {data_dir: \(dataDir)}
            listeners:
              http: {host: 127.0.0.1, port: 0}
              admin: {host: 127.0.0.1, port: 0}
              mqtt: {host: 127.0.0.1, port: 0}
              nacos: {host: 127.0.0.1, port: 0}
            journal: {enabled: \(!noJournal)\(commitLatencyMs.map { ", max_commit_latency: \($0)ms" } ?? "")}
            \(bare ? "" : BenchConfig.controller)
            \(BenchConfig.routing(sinkURL: "http://127.0.0.1:\(sink.port)", maxConcurrency: upstreamConcurrency, batch: batch))
            """
        let config = try ConfigLoader.parse(yaml: yaml)
        let threadsBefore = CPUTime.threadIDs()
        let app = try SwitchyardApplication(
            configuration: config,
            dataDir: dataDir,
            logger: Logger(label: "bench"),
            threads: threads,
            environment: ["SWITCHYARD_ADMIN_TOKEN": "bench"]
        )
        let appThreads = CPUTime.threadIDs().subtracting(threadsBefore)  // the app's event loops
        let runTask = Task { try await app.run(handleSignals: false) }
        let address = try await app.ingestAddress!.get()

        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        /// The same load against either proxy.
        func load(port: Int) async throws -> LoadResult {
            try await LoadGenerator.run(
                group: clientGroup,
                port: port,
                messages: messages,
                connections: connections,
                depth: depth,
                payloadBytes: payloadBytes,
                ingestBatch: ingestBatch,
                timeLimit: timeLimit,
                sink: sink
            )
        }
        let cpuBefore = CPUTime.process()
        let appThreadsBefore = CPUTime.threadsSplit(appThreads)
        var result = try await load(port: address.port!)
        result.cpuSeconds = CPUTime.process() - cpuBefore
        let appThreadsAfter = CPUTime.threadsSplit(appThreads)
        result.proxyCPUSeconds = appThreadsAfter.user + appThreadsAfter.system - appThreadsBefore.user - appThreadsBefore.system
        result.proxySystemCPUSeconds = appThreadsAfter.system - appThreadsBefore.system
        let ledger = app.ledger.snapshot()
        print(result.report(title: "switchyard"))
        print(
            "ledger: received \(ledger.receivedTotal), forwarded \(ledger.forwardedTotal), rejected \(ledger.rejectedTotal), dead-lettered \(ledger.deadLetteredTotal), in flight \(ledger.inFlight)"
        )
        runTask.cancel()
        _ = try? await runTask.value

        if peer && ingestBatch > 0 {
            print("peer: nginx does not take batches apart; no ratio for --ingest-batch")
        } else if peer {
            if let nginx = try? await NginxPeer.start(sinkPort: sink.port) {
                sink.reset()
                let nginxBefore = CPUTime.of(pid: nginx.process.processIdentifier)
                let before = CPUTime.process() + nginxBefore
                var peerResult = try await load(port: nginx.port)
                peerResult.cpuSeconds = CPUTime.process() + CPUTime.of(pid: nginx.process.processIdentifier) - before
                peerResult.proxyCPUSeconds = CPUTime.of(pid: nginx.process.processIdentifier) - nginxBefore
                nginx.stop()
                print(peerResult.report(title: "nginx (proxy_pass, same sink)"))
                print(String(format: "ratio switchyard/nginx: %.2f (throughput)", result.throughput / max(peerResult.throughput, 1)))
            } else {
                print("peer: nginx not found or failed to start (apt-get install nginx-light); no ratio printed")
            }
        }
        try await clientGroup.shutdownGracefully()
        await sink.stop()
        try await sinkGroup.shutdownGracefully()
        if result.delivered < result.sent { throw ExitCode(1) }
    }
}

/// The configuration both benchmarks run: a typical filter chain, a tag rule and a 5 % lane,
/// then one route to the sink.
enum BenchConfig {
    static let controller = """
        filters:
          - max_payload: 64KiB
          - rate_limit: {scope: device, rate: 1000000, burst: 1000000}
        tags:
          - match: {topic: "^bench/.+/data$"}
            set: {kind: telemetry}
        lanes:
          - name: gray
            entry: {percentage: 5}
        """

    static func routing(sinkURL: String, maxConcurrency: Int, batch: Int = 0) -> String {
        let target =
            batch > 0
            ? "{service: sink, path: /ingest, timeout: 5s, retries: 2, batch: {max: \(batch), linger: 5ms}}"
            : "{service: sink, path: \"/ingest/{device}\", timeout: 5s, retries: 2}"
        return """
            channels:
              device_patterns: ["bench/{device}/#"]
            routes:
              - name: bench
                match: "^bench/(?<device>[^/]+)/data$"
                targets:
                  - \(target)
            services:
              sink:
                max_concurrency: \(maxConcurrency)
                instances: [{url: "\(sinkURL)"}]
            """
    }
}

struct LoadResult {
    var sent: Int
    var accepted: Int
    var delivered: Int
    var seconds: Double
    var acceptLatencies: [UInt64]
    var endToEndLatencies: [UInt64]
    /// CPU seconds used during the run: this process (switchyard, load generator, sink) and the peer's.
    var cpuSeconds: Double = 0
    /// CPU seconds of the proxy alone (Switchyard's event loops, or the nginx processes).
    var proxyCPUSeconds: Double = 0
    /// Of which in the kernel (only known for Switchyard's own threads).
    var proxySystemCPUSeconds: Double?

    var throughput: Double { Double(delivered) / seconds }

    func report(title: String) -> String {
        func pct(_ values: [UInt64], _ p: Double) -> String {
            guard !values.isEmpty else { return "-" }
            let sorted = values.sorted()
            let v = sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
            return String(format: "%.2f ms", Double(v) / 1e6)
        }
        return """
            \(title): \(sent) sent, \(accepted) accepted (202), \(delivered) delivered in \(String(format: "%.2f", seconds)) s \
            → \(String(format: "%.0f", throughput)) messages/s end to end
              accept latency (POST → 202): p50 \(pct(acceptLatencies, 0.5)), p99 \(pct(acceptLatencies, 0.99))
              end-to-end latency (POST → sink): p50 \(pct(endToEndLatencies, 0.5)), p99 \(pct(endToEndLatencies, 0.99))
              CPU per message: \(String(format: "%.0f", proxyCPUSeconds / Double(max(delivered, 1)) * 1e6)) µs in the proxy\(proxySystemCPUSeconds.map { String(format: " (%.0f µs of it in the kernel)", $0 / Double(max(delivered, 1)) * 1e6) } ?? ""), \(String(format: "%.0f", cpuSeconds / Double(max(delivered, 1)) * 1e6)) µs with load generator and sink
            """
    }
}

enum LoadGenerator {
    static func run(
        group: any EventLoopGroup,
        port: Int,
        messages: Int,
        connections: Int,
        depth: Int,
        payloadBytes: Int,
        ingestBatch: Int = 0,
        timeLimit: Double,
        sink: BenchSink
    ) async throws -> LoadResult {
        let perRequest = max(1, ingestBatch)
        let requestsPerConnection = max(1, messages / connections / perRequest)
        let total = requestsPerConnection * perRequest * connections
        let start = SystemMonotonicClock().nowNanos()
        var channels: [any Channel] = []
        var handlers: [EventLoopFuture<[UInt64]>] = []
        for c in 0..<connections {
            let loop = group.next()
            let done = loop.makePromise(of: [UInt64].self)
            let channel = try await ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            LoadHandler(
                                count: requestsPerConnection,
                                depth: depth,
                                payloadBytes: payloadBytes,
                                batch: ingestBatch,
                                device: "dev-\(c)",
                                done: done
                            )
                        )
                    }
                }
                .connect(host: "127.0.0.1", port: port).get()
            channels.append(channel)
            handlers.append(done.futureResult)
        }
        var accept: [UInt64] = []
        let deadline = Date().addingTimeInterval(timeLimit)
        for f in handlers {
            accept += (try? await f.get()) ?? []
            if Date() > deadline { break }
        }
        while sink.count < total && Date() < deadline {
            try await Task.sleep(nanoseconds: 2_000_000)
        }
        let seconds = Double(sink.lastArrival.map { $0 - start } ?? (SystemMonotonicClock().nowNanos() - start)) / 1e9
        for ch in channels { try? await ch.close() }
        return LoadResult(
            sent: total,
            accepted: accept.count * perRequest,
            delivered: sink.count,
            seconds: seconds,
            acceptLatencies: accept,
            endToEndLatencies: sink.latencies
        )
    }
}

/// Keeps `depth` requests in flight on one connection until `count` were answered; each
/// request carries one message, or `batch` messages as NDJSON to `POST /v1/batch`.
///
/// Requests are written as bytes and answers read with the forwarder's byte-level parser:
/// the generator shares the machine's cores with the proxy it measures, so it should cost
/// as little as wrk would, not as much as a general HTTP client.
final class LoadHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let count: Int
    let depth: Int
    let payloadBytes: Int
    let batch: Int
    let device: String
    let devicesPerConnection = 100
    var messagesSent = 0
    let done: EventLoopPromise<[UInt64]>
    var sent = 0
    var answered = 0
    var sendTimes: CircularBuffer<UInt64> = []
    var latencies: [UInt64] = []
    var parser = HTTP1ResponseParser()
    /// `bench/<device>-<n>` for each of the connection's devices.
    let topics: [String]

    init(count: Int, depth: Int, payloadBytes: Int, batch: Int = 0, device: String, done: EventLoopPromise<[UInt64]>) {
        self.count = count
        self.depth = depth
        self.payloadBytes = payloadBytes
        self.batch = batch
        self.device = device
        self.done = done
        topics = (0..<devicesPerConnection).map { "bench/\(device)-\($0)" }
        latencies.reserveCapacity(count)
    }

    func channelActive(context: ChannelHandlerContext) {
        for _ in 0..<min(depth, count) { send(context: context) }
        context.flush()
    }

    /// The payload: the send time as 20 digits, then `x` up to the payload size.
    private func writePayload(_ now: UInt64, into buffer: inout ByteBuffer) {
        BenchStamp.write(now, into: &buffer)
        buffer.writeRepeatingByte(UInt8(ascii: "x"), count: max(0, payloadBytes - BenchStamp.digits))
    }

    func send(context: ChannelHandlerContext) {
        let now = SystemMonotonicClock().nowNanos()
        // Each connection speaks for `devicesPerConnection` devices in turn (per-device order
        // allows one message in delivery per device, so the device count sets the parallelism).
        var request: ByteBuffer
        if batch > 0 {
            var body = context.channel.allocator.buffer(capacity: batch * (payloadBytes + 64))
            for _ in 0..<batch {
                body.writeStaticString("{\"topic\":\"")
                body.writeString(topics[messagesSent % devicesPerConnection])
                body.writeStaticString("/data\",\"payload\":\"")
                writePayload(now, into: &body)
                body.writeStaticString("\"}\n")
                messagesSent += 1
            }
            request = context.channel.allocator.buffer(capacity: body.readableBytes + 96)
            request.writeStaticString("POST /v1/batch HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-ndjson\r\ncontent-length: ")
            request.writeString(String(body.readableBytes))
            request.writeStaticString("\r\n\r\n")
            request.writeBuffer(&body)
        } else {
            request = context.channel.allocator.buffer(capacity: payloadBytes + 128)
            request.writeStaticString("POST /v1/messages/")
            request.writeString(topics[messagesSent % devicesPerConnection])
            request.writeStaticString("/data HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: ")
            request.writeString(String(max(payloadBytes, BenchStamp.digits)))
            request.writeStaticString("\r\n\r\n")
            writePayload(now, into: &request)
            messagesSent += 1
        }
        context.write(wrapOutboundOut(request), promise: nil)
        sendTimes.append(now)
        sent += 1
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        var more = false
        for event in parser.feed(&bytes) {
            switch event {
            case .response(let response):
                let t = sendTimes.removeFirst()
                // 202 (or 200 through nginx); a 207 means some of a batch were refused.
                if response.status == 202 || response.status == 200 { latencies.append(SystemMonotonicClock().nowNanos() - t) }
                answered += 1
                if sent < count {
                    send(context: context)
                    more = true
                } else if answered == count {
                    done.succeed(latencies)
                }
            case .error(let message):
                print("load generator: bad answer from the proxy: \(message)")
                done.succeed(latencies)
                context.close(promise: nil)
                return
            }
        }
        if more { context.flush() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        done.succeed(latencies)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.succeed(latencies)
    }
}

/// The send time each benchmark payload starts with: nanoseconds as 20 ASCII digits.
enum BenchStamp {
    static let digits = 20

    static func write(_ value: UInt64, into buffer: inout ByteBuffer) {
        JSONText.writeDecimal(value, into: &buffer, minimumDigits: digits)
    }

    /// The stamp at `offset`, if 20 digits are there.
    static func read(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt64? {
        guard offset >= 0, offset + digits <= bytes.count else { return nil }
        var v: UInt64 = 0
        for i in offset..<(offset + digits) {
            let b = bytes[i]
            guard b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") else { return nil }
            v = v &* 10 &+ UInt64(b - UInt8(ascii: "0"))
        }
        return v
    }
}

/// A minimal HTTP sink: answers 200 at once and records end-to-end latency from the
/// timestamp the load generator put at the start of each payload.
final class BenchSink: Sendable {
    let channel: any Channel
    let state: NIOLockedValueBox<(latencies: [UInt64], last: UInt64?)>

    var port: Int { channel.localAddress!.port! }
    var count: Int { state.withLockedValue { $0.latencies.count } }
    /// Requests answered (whatever their body).
    var requests: Int { requestCount.withLockedValue { $0 } }
    let requestCount: NIOLockedValueBox<Int>
    var latencies: [UInt64] { state.withLockedValue { $0.latencies } }
    var lastArrival: UInt64? { state.withLockedValue { $0.last } }

    init(channel: any Channel, state: NIOLockedValueBox<(latencies: [UInt64], last: UInt64?)>, requestCount: NIOLockedValueBox<Int>) {
        self.channel = channel
        self.state = state
        self.requestCount = requestCount
    }

    func reset() { state.withLockedValue { $0 = ([], nil) } }

    static func start(group: any EventLoopGroup) async throws -> BenchSink {
        let state = NIOLockedValueBox<(latencies: [UInt64], last: UInt64?)>(([], nil))
        let requestCount = NIOLockedValueBox(0)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SinkHandler(state: state, requests: requestCount))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return BenchSink(channel: channel, state: state, requestCount: requestCount)
    }

    func stop() async { try? await channel.close() }
}

/// The sink's side of a connection, on bytes: heads framed by `content-length` (what
/// Switchyard's forwarder and nginx send); anything else is answered 400 and closed,
/// with a line on standard output, so a miscount cannot pass unnoticed.
final class SinkHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let state: NIOLockedValueBox<(latencies: [UInt64], last: UInt64?)>
    let requests: NIOLockedValueBox<Int>
    private var received: ByteBuffer?
    /// The current request's body length and kind once its head was read.
    private var body: (length: Int, batch: Bool)?
    private var answers = 0
    private var stamps: [UInt64] = []
    static let ok = ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    static let marker = Array("\"payload\":\"".utf8)

    init(state: NIOLockedValueBox<(latencies: [UInt64], last: UInt64?)>, requests: NIOLockedValueBox<Int>) {
        self.state = state
        self.requests = requests
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if received == nil {
            received = bytes
        } else {
            received!.discardReadBytes()  // a request cut across reads: keep only its bytes
            received!.writeBuffer(&bytes)
        }
        while true {
            if body == nil {
                guard let length = HTTP1Syntax.headLength(received!) else { return }
                guard let framing = received!.withUnsafeReadableBytes({ Self.framing(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }) else {
                    print("sink: a request without content-length (or with transfer-encoding); answered 400")
                    context.writeAndFlush(
                        wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"))
                    )
                    .whenComplete { _ in context.close(promise: nil) }
                    received = nil
                    return
                }
                received!.moveReaderIndex(forwardBy: length)
                body = framing
            }
            guard let framing = body, received!.readableBytes >= framing.length else { return }
            let length = framing.length
            received!.withUnsafeReadableBytes { all in
                let bytes = UnsafeRawBufferPointer(rebasing: all[0..<length])
                if framing.batch {
                    Self.batchStamps(bytes, into: &stamps)
                } else if let stamp = BenchStamp.read(bytes, at: 0) {
                    stamps.append(stamp)
                }
            }
            received!.moveReaderIndex(forwardBy: length)
            body = nil
            answers += 1
            context.write(wrapOutboundOut(Self.ok), promise: nil)
            if received!.readableBytes == 0 { received = nil }
            if received == nil { return }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard answers > 0 else { return }
        let now = SystemMonotonicClock().nowNanos()
        let answered = answers
        requests.withLockedValue { $0 += answered }
        if !stamps.isEmpty {
            state.withLockedValue {
                for s in stamps { $0.latencies.append(now &- s) }
                $0.last = now
            }
            stamps.removeAll(keepingCapacity: true)
        }
        answers = 0
        context.flush()
    }

    /// `content-length` and whether the request is a batch (`x-switchyard-batch-size`); nil
    /// when the body is not framed by a length.
    static func framing(_ head: UnsafeRawBufferPointer) -> (length: Int, batch: Bool)? {
        var length: Int?
        var batch = false
        var lineStart = 0
        var first = true
        for i in 0..<head.count where head[i] == 10 {
            let line = UnsafeRawBufferPointer(rebasing: head[lineStart..<(i > lineStart && head[i - 1] == 13 ? i - 1 : i)])
            lineStart = i + 1
            if first {
                first = false
                continue
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let name = UnsafeRawBufferPointer(rebasing: line[0..<colon])
            let value = HTTP1Syntax.trimmed(UnsafeRawBufferPointer(rebasing: line[(colon + 1)...]))
            if HTTP1Syntax.name(name, is: "content-length") {
                guard let n = HTTP1Syntax.decimal(value), length == nil || length == n else { return nil }
                length = n
            } else if HTTP1Syntax.name(name, is: "transfer-encoding") {
                return nil
            } else if HTTP1Syntax.name(name, is: "x-switchyard-batch-size") {
                batch = true
            }
        }
        return length.map { ($0, batch) }
    }

    /// Each message of a batch: ..."payload":"<20-digit stamp>xxxx"...
    static func batchStamps(_ bytes: UnsafeRawBufferPointer, into stamps: inout [UInt64]) {
        let marker = Self.marker
        var i = 0
        while i + marker.count + BenchStamp.digits <= bytes.count {
            var matches = true
            for j in 0..<marker.count where bytes[i + j] != marker[j] {
                matches = false
                break
            }
            if matches, let stamp = BenchStamp.read(bytes, at: i + marker.count) {
                stamps.append(stamp)
                i += marker.count + BenchStamp.digits
            } else {
                i += 1
            }
        }
    }
}

/// CPU time from the kernel's accounting.
enum CPUTime {
    static func process() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    /// This process's thread ids.
    static func threadIDs() -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [])
    }

    /// CPU seconds of these threads of this process, from /proc.
    static func threads(_ tids: Set<String>) -> Double {
        let (user, system) = threadsSplit(tids)
        return user + system
    }

    /// User and system CPU seconds of these threads.
    static func threadsSplit(_ tids: Set<String>) -> (user: Double, system: Double) {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var user = 0.0
        var system = 0.0
        for tid in tids {
            guard let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) {
                user += u / ticks
                system += s / ticks
            }
        }
        return (user, system)
    }

    /// utime + stime of a process and its children so far (nginx: master + worker).
    static func of(pid: Int32) -> Double {
        var total = 0.0
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        for candidate in [pid] + children(of: pid) {
            guard let stat = try? String(contentsOfFile: "/proc/\(candidate)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // fields[0] is the state (field 3); utime and stime are fields 14 and 15.
            if fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) { total += (u + s) / ticks }
        }
        return total
    }

    static func children(of pid: Int32) -> [Int32] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8) else { return [] }
        return text.split(separator: " ").compactMap { Int32($0) }
    }
}

/// nginx as the peer: a reverse proxy with a keep-alive upstream to the same sink.
struct NginxPeer {
    let process: Process
    let port: Int
    let dir: String

    static func start(sinkPort: Int) async throws -> NginxPeer {
        let candidates = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        guard let binary = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw ExitCode(3)
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-nginx-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let port = 20000 + Int(getpid() % 20000)
        let conf = """
            worker_processes 1;
            daemon off;
            pid \(dir)/nginx.pid;
            error_log \(dir)/error.log error;
            events { worker_connections 4096; }
            http {
              access_log off;
              client_body_temp_path \(dir)/body;
              proxy_temp_path \(dir)/proxy;
              fastcgi_temp_path \(dir)/fastcgi;
              uwsgi_temp_path \(dir)/uwsgi;
              scgi_temp_path \(dir)/scgi;
              upstream sink { server 127.0.0.1:\(sinkPort); keepalive 512; }
              server {
                listen 127.0.0.1:\(port);
                keepalive_requests 1000000;
                location / { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection ""; }
              }
            }
            """
        try conf.write(toFile: "\(dir)/nginx.conf", atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["-c", "\(dir)/nginx.conf", "-p", dir, "-e", "\(dir)/error.log"]
        try p.run()
        // Wait until it listens.
        for _ in 0..<100 {
            if (try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get())
                .map({ $0.close(promise: nil) }) != nil
            {
                return NginxPeer(process: p, port: port, dir: dir)
            }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        p.terminate()
        throw ExitCode(3)
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
