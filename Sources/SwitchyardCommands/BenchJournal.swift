import ArgumentParser
import Foundation
import Journal
import Logging
import NIOCore
import NIOPosix
import SwitchyardCore

/// Journal appends per second with group commit and fsync, on this machine's disk.
struct BenchJournal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journal",
        abstract: "Durable appends per second (group commit, fsync), and fsyncs per second."
    )

    @Option(help: "Records to append.") var records = 200_000
    @Option(help: "Appends in flight at once (like concurrent senders).") var inFlight = 1024
    @Option(help: "Payload bytes per record.") var payloadBytes = 128
    @Option(help: "Directory for the journal (a temporary one by default).") var directory: String?

    func run() async throws {
        let dir = directory ?? FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-journal-bench-\(getpid())").path
        defer { if directory == nil { try? FileManager.default.removeItem(atPath: dir) } }
        let (journal, _) = try Journal.open(directory: dir, logger: Logger(label: "bench"))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let payload = ByteBuffer(string: String(repeating: "x", count: payloadBytes))
        let template = Envelope(
            id: "",
            channel: "http",
            topic: "bench/d/data",
            device: "d",
            payload: payload,
            receivedAt: 0,
            trace: .generate()
        )
        let clock = SystemMonotonicClock()
        let start = clock.nowNanos()
        var window: [EventLoopFuture<UInt64>] = []
        window.reserveCapacity(inFlight)
        for i in 0..<records {
            var e = template
            e.id = String(i)
            window.append(journal.append(e, on: loop))
            if window.count == inFlight {
                _ = try await EventLoopFuture.whenAllSucceed(window, on: loop).get()
                window.removeAll(keepingCapacity: true)
            }
        }
        _ = try await EventLoopFuture.whenAllSucceed(window, on: loop).get()
        let seconds = Double(clock.nowNanos() - start) / 1e9
        let fsyncs = journal.fsyncCount
        journal.close()
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("command: switchyard bench journal --records \(records) --in-flight \(inFlight) --payload-bytes \(payloadBytes)")
        print(
            String(
                format: "journal: %d appends in %.2f s → %.0f appends/s durable (fsync), %llu fsyncs (%.0f records per fsync)",
                records,
                seconds,
                Double(records) / seconds,
                fsyncs,
                Double(records) / Double(max(fsyncs, 1))
            )
        )
    }
}
