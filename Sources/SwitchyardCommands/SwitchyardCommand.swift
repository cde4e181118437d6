// SwitchyardCommands: the `switchyard` command line (serve, check-config, explain, bench, version).
public import ArgumentParser
import SwitchyardCore

public struct SwitchyardCommand: AsyncParsableCommand {
    public static let version = SwitchyardVersion.current

    public static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "The cloud side of an IoT product line: ingest, filter, lane and route device messages.",
        version: version,
        subcommands: [
            Serve.self, CheckConfig.self, Explain.self, DeadLetterCommand.self, DeviceCommand.self, RegistryCommand.self, ServicesCommand.self,
            DrainCommand.self, UndrainCommand.self, RegisterCommand.self, DeregisterCommand.self, Bench.self, Version.self,
        ],
        defaultSubcommand: Serve.self
    )

    public init() {}
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")
    func run() {
        print("switchyard \(SwitchyardCommand.version)")
    }
}

extension SwitchyardCommand {
    /// Entry point of the executable.
    public static func start() async {
        await main()
    }
}
