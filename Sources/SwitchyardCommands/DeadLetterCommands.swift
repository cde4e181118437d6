import ArgumentParser
import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `switchyard dlq …`: the dead-letter list of a running node, through its admin API.
struct DeadLetterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List, inspect, replay or purge dead letters of a running node (admin API).",
        subcommands: [List.self, Show.self, Replay.self, Purge.self]
    )

    struct Selection: ParsableArguments {
        @Option(help: "Dead-letter key (repeatable).") var key: [UInt64] = []
        @Option(help: "Message id.") var id: String?
        @Option(help: "Route name.") var route: String?
        @Option(help: "Reason (unrouted, service_error, expired, …).") var reason: String?
        @Option(help: "Dead-lettered at or after (RFC 3339 or seconds since the epoch).") var since: String?
        @Option(help: "Dead-lettered at or before.") var until: String?
        @Flag(help: "Every dead letter.") var all = false

        var json: Data {
            var o: [String: Any] = [:]
            if !key.isEmpty { o["keys"] = key }
            if let id { o["id"] = id }
            if let route { o["route"] = route }
            if let reason { o["reason"] = reason }
            if let since { o["since"] = since }
            if let until { o["until"] = until }
            if all { o["all"] = true }
            return (try? JSONSerialization.data(withJSONObject: o)) ?? Data("{}".utf8)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Newest first, filtered.")
        @OptionGroup var connection: AdminConnection
        @Option(help: "Route name.") var route: String?
        @Option(help: "Reason.") var reason: String?
        @Option(help: "Message id.") var id: String?
        @Option(help: "Dead-lettered at or after (RFC 3339 or seconds since the epoch).") var since: String?
        @Option(help: "At most this many.") var limit = 100

        func run() async throws {
            var items = [URLQueryItem(name: "limit", value: String(limit))]
            for (name, value) in [("route", route), ("reason", reason), ("id", id), ("since", since)] {
                if let value { items.append(URLQueryItem(name: name, value: value)) }
            }
            var components = URLComponents()
            components.queryItems = items
            try await connection.call("GET", "/admin/dead-letters?" + (components.percentEncodedQuery ?? ""))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One dead letter with its whole envelope.")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Its key (see list).") var key: UInt64
        func run() async throws { try await connection.call("GET", "/admin/dead-letters/\(key)") }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Deliver the selected dead letters again (same message ids).")
        @OptionGroup var connection: AdminConnection
        @OptionGroup var selection: Selection
        func run() async throws { try await connection.call("POST", "/admin/dead-letters/replay", body: selection.json) }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove the selected dead letters for good.")
        @OptionGroup var connection: AdminConnection
        @OptionGroup var selection: Selection
        func run() async throws { try await connection.call("POST", "/admin/dead-letters/purge", body: selection.json) }
    }
}
