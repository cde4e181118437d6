import ArgumentParser
import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// How CLI commands reach a running node: its admin address and token.
struct AdminConnection: ParsableArguments {
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
        let (status, data) = try await fetch(method, path, body: body)
        print(String(decoding: data, as: UTF8.self))
        if !(200..<300).contains(status) { throw ExitCode(1) }
    }

    /// Sends the request; returns the status and body.
    func fetch(_ method: String, _ path: String, body: Data? = nil) async throws -> (status: Int, body: Data) {
        guard let url = URL(string: admin + path) else { throw ValidationError("bad --admin address \(admin)") }
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.setValue("Bearer \(try resolvedToken())", forHTTPHeaderField: "authorization")
        if let body {
            request.httpBody = body
            request.setValue("application/json", forHTTPHeaderField: "content-type")
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, data)
    }
}
