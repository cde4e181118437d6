import ArgumentParser
import Foundation

/// `switchyard registry …`: the registry and config center of a running node, through its admin API.
struct RegistryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "registry",
        abstract: "List services, instances, configs and config history; roll a config back (admin API).",
        subcommands: [Services.self, Instances.self, Configs.self, History.self, Rollback.self]
    )

    static func query(_ items: [(String, String?)]) -> String {
        var c = URLComponents()
        c.queryItems = items.compactMap { name, value in value.map { URLQueryItem(name: name, value: $0) } }
        return c.percentEncodedQuery.map { "?" + $0 } ?? ""
    }

    struct Services: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Services of a namespace, with instance counts.")
        @OptionGroup var connection: AdminConnection
        @Option(help: "Namespace id.") var namespace = "public"
        func run() async throws { try await connection.call("GET", "/admin/registry/services" + query([("namespace", namespace)])) }
    }

    struct Instances: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Instances of a service (health, weight, lane, metadata).")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Service name.") var service: String
        @Option(help: "Namespace id.") var namespace = "public"
        @Option(help: "Group.") var group = "DEFAULT_GROUP"
        func run() async throws {
            try await connection.call(
                "GET",
                "/admin/registry/instances" + query([("service", service), ("namespace", namespace), ("group", group)])
            )
        }
    }

    struct Configs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Configs (md5, type, revision, beta) of a tenant, or of all.")
        @OptionGroup var connection: AdminConnection
        @Option(help: "Tenant (namespace) id; \"public\" for the public one; all when left out.") var tenant: String?
        func run() async throws { try await connection.call("GET", "/admin/registry/configs" + query([("tenant", tenant)])) }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A config's changes, newest first (revision, operation, content).")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "dataId.") var dataId: String
        @Option(help: "Group.") var group = "DEFAULT_GROUP"
        @Option(help: "Tenant (namespace) id.") var tenant = ""
        @Option(help: "How many rows.") var limit = 20
        func run() async throws {
            try await connection.call(
                "GET",
                "/admin/registry/history" + query([("data_id", dataId), ("group", group), ("tenant", tenant), ("limit", String(limit))])
            )
        }
    }

    struct Rollback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish again the content of a revision (byte for byte; listeners are told)."
        )
        @OptionGroup var connection: AdminConnection
        @Argument(help: "dataId.") var dataId: String
        @Argument(help: "Revision, as `history` lists it.") var revision: Int64
        @Option(help: "Group.") var group = "DEFAULT_GROUP"
        @Option(help: "Tenant (namespace) id.") var tenant = ""
        func run() async throws {
            let body = try JSONSerialization.data(
                withJSONObject: ["data_id": dataId, "group": group, "tenant": tenant, "revision": revision] as [String: Any]
            )
            try await connection.call("POST", "/admin/registry/rollback", body: body)
        }
    }
}
