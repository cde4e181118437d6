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

    struct Connection: ParsableArguments {
        @Option(help: "The node's admin address.") var admin = "http://127.0.0.1:8090"
        @Option(help: "Admin token (default: $SWITCHYARD_ADMIN_TOKEN, else <data-dir>/admin-token).") var token: String?
        @Option(help: "The node's data directory, to read its admin token.") var dataDir = "./switchyard-data"

        func resolvedToken() throws -> String {
            if let token { return token }
            if let env = ProcessInfo.processInfo.environment["SWITCHYARD_ADMIN_TOKEN"], !env.isEmpty { return env }
            guard let text = try? String(contentsOfFile: "\(dataDir)/admin-token", encoding: .utf8) else {
                throw ValidationError("no admin token: pass --token, set SWITCHYARD_ADMIN_TOKEN or point --data-dir at the node's data dir")
            }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// Sends the request and prints the body; a non-2xx answer is an error exit.
        func call(_ method: String, _ path: String, body: Data? = nil) async throws {
            guard let url = URL(string: admin + path) else { throw ValidationError("bad --admin address \(admin)") }
            var request = URLRequest(url: url)
            request.httpMethod = method
            request.setValue("Bearer \(try resolvedToken())", forHTTPHeaderField: "authorization")
            if let body {
                request.httpBody = body
                request.setValue("application/json", forHTTPHeaderField: "content-type")
            }
            let (data, response) = try await URLSession.shared.data(for: request)
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            print(String(decoding: data, as: UTF8.self))
            if !(200..<300).contains(status) { throw ExitCode(1) }
        }
    }

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
        @OptionGroup var connection: Connection
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
        @OptionGroup var connection: Connection
        @Argument(help: "Its key (see list).") var key: UInt64
        func run() async throws { try await connection.call("GET", "/admin/dead-letters/\(key)") }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Deliver the selected dead letters again (same message ids).")
        @OptionGroup var connection: Connection
        @OptionGroup var selection: Selection
        func run() async throws { try await connection.call("POST", "/admin/dead-letters/replay", body: selection.json) }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove the selected dead letters for good.")
        @OptionGroup var connection: Connection
        @OptionGroup var selection: Selection
        func run() async throws { try await connection.call("POST", "/admin/dead-letters/purge", body: selection.json) }
    }
}
