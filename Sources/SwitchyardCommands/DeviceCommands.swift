import ArgumentParser
import Foundation

/// `switchyard devices …`: MQTT device credentials of a running node, through its admin API.
struct DeviceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "Add, list, disable, enable, rotate or remove device credentials (admin API).",
        subcommands: [Add.self, List.self, Disable.self, Enable.self, Rotate.self, Remove.self]
    )

    struct Device: ParsableArguments {
        @Argument(help: "Product key.") var product: String
        @Argument(help: "Device name.") var device: String

        var path: String {
            let allowed = CharacterSet.urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))
            let p = product.addingPercentEncoding(withAllowedCharacters: allowed) ?? product
            let d = device.addingPercentEncoding(withAllowedCharacters: allowed) ?? device
            return "/admin/devices/\(p)/\(d)"
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Register a device; prints its secret (shown once).")
        @OptionGroup var connection: AdminConnection
        @OptionGroup var device: Device
        @Flag(help: "Keep the secret sealed so that the device may sign in with an Alibaba-style signed password.") var signing = false

        func run() async throws {
            let body = try JSONSerialization.data(
                withJSONObject: ["product": device.product, "device": device.device, "signing": signing] as [String: Any]
            )
            try await connection.call("POST", "/admin/devices", body: body)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every device (no secrets).")
        @OptionGroup var connection: AdminConnection
        func run() async throws { try await connection.call("GET", "/admin/devices") }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Refuse the device's next sign-in.")
        @OptionGroup var connection: AdminConnection
        @OptionGroup var device: Device
        func run() async throws { try await connection.call("POST", device.path + "/disable") }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a disabled device sign in again.")
        @OptionGroup var connection: AdminConnection
        @OptionGroup var device: Device
        func run() async throws { try await connection.call("POST", device.path + "/enable") }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A new secret (printed once); the old one stops working.")
        @OptionGroup var connection: AdminConnection
        @OptionGroup var device: Device
        func run() async throws { try await connection.call("POST", device.path + "/rotate") }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Forget the device.")
        @OptionGroup var connection: AdminConnection
        @OptionGroup var device: Device
        func run() async throws { try await connection.call("DELETE", device.path) }
    }
}
