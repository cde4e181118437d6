import ArgumentParser
import Foundation

/// `switchyard drain SERVICE INSTANCE [--wait SECONDS]`: a running node stops sending new
/// requests and messages to the instance; once the in-flight ones have finished the drain is
/// complete and the instance leaves the registry. `switchyard undrain` takes it back.
struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Stop sending new requests and messages to an instance; it leaves the registry once in-flight ones finish."
    )
    @OptionGroup var target: InstanceTarget
    @Option(help: "Wait up to this many seconds for the drain to complete (exit 1 if it does not); 0 returns at once.")
    var wait: Double = 0

    func run() async throws {
        try await target.post("drain")
        guard wait > 0 else { return }
        let deadline = Date().addingTimeInterval(wait)
        var last = Data()
        while Date() < deadline {
            let (status, body) = try await target.connection.fetch("GET", "/admin/instances/\(target.id)")
            last = body
            if status == 200, String(decoding: body, as: UTF8.self).contains("\"drain\":\"completed\"") {
                print(String(decoding: body, as: UTF8.self))
                return
            }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        print(String(decoding: last, as: UTF8.self))
        throw ValidationError("the drain did not complete within \(wait) s: requests or messages are still in flight to the instance")
    }
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

    /// The instance id, percent-encoded for a path.
    var id: String { InstanceID.make(service, instance) }

    func post(_ action: String) async throws {
        try await connection.call("POST", "/admin/instances/\(id)/\(action)")
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
