import ArgumentParser
import Foundation
import SwitchyardConfig
import SwitchyardCore
import SwitchyardServer

/// The per-message work of the controller and router without any I/O: identity, filters,
/// tags, lane, route match and request rendering, in a loop on one thread.
struct BenchPipeline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "CPU cost of controller + router per message, without network I/O."
    )

    @Option(help: "Messages to run through.") var messages = 500_000
    @Option(help: "Distinct devices.") var devices = 10_000

    func run() throws {
        let config = try ConfigLoader.parse(
            yaml: BenchConfig.controller + "\n" + BenchConfig.routing(sinkURL: "http://127.0.0.1:9", maxConcurrency: 256)
        )
        let topics = (0..<devices).map { "bench/dev-\($0)/data" }
        let result = try PipelineProbe.run(configuration: config, topics: topics, messages: messages)
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("command: switchyard bench pipeline --messages \(messages) --devices \(devices)")
        print(
            String(
                format: "controller + router: %.2f µs per message on one core (%d messages, %.2f s)",
                result.seconds / Double(messages) * 1e6,
                messages,
                result.seconds
            )
        )
    }
}
