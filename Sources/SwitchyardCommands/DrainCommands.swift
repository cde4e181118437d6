import ArgumentParser
import Foundation

/// `switchyard drain SERVICE INSTANCE`: a running node stops sending new requests and messages
/// to the instance; in-flight ones finish. `switchyard undrain` takes it back.
struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Stop sending new requests and messages to an instance (in-flight ones finish); see `switchyard services`."
    )
    @OptionGroup var target: InstanceTarget

    func run() async throws { try await target.post("drain") }
}

struct UndrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "undrain", abstract: "Send requests and messages to a drained instance again.")
    @OptionGroup var target: InstanceTarget

    func run() async throws { try await target.post("undrain") }
}

/// A node's admin connection and one instance of one of its services.
struct InstanceTarget: ParsableArguments {
    @OptionGroup var connection: AdminConnection
    @Argument(help: "The service.") var service: String
    @Argument(help: "The instance: host:port, or its id service@host:port as GET /admin/services lists it.") var instance: String

    func post(_ action: String) async throws {
        try await connection.call("POST", "/admin/instances/\(InstanceID.make(service, instance))/\(action)")
    }
}

/// `switchyard services`: every service the node routes to, its instances and their state.
struct ServicesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "services",
        abstract: "Services and instances of a running node: weight, warm-up, drain, circuit, in flight."
    )
    @OptionGroup var connection: AdminConnection

    func run() async throws {
        try await connection.call("GET", "/admin/services")
    }
}

enum InstanceID {
    static func make(_ service: String, _ instance: String) -> String {
        let id = instance.contains("@") ? instance : "\(service)@\(instance)"
        return id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id
    }
}
