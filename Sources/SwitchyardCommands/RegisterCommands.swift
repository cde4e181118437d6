import ArgumentParser
import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `switchyard register`: readiness alignment for a service that registers through Switchyard —
/// waits until the service's readiness check answers 2xx, then a further delay (caches warmed,
/// connections opened), and only then registers it, so no caller reaches it before it is ready.
struct RegisterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "register",
        abstract: "Register a service instance once its readiness check passes and a delay has gone by (readiness alignment)."
    )
    @Option(help: "The registry's Nacos API.") var nacos = "http://127.0.0.1:8848"
    @Option(help: "Access token for the registry (when its auth is on).") var accessToken: String?
    @Option(help: "Service name.") var service: String
    @Option(help: "The instance's address.") var ip = "127.0.0.1"
    @Option(help: "The instance's port.") var port: Int
    @Option(help: "Readiness URL: registration waits until it answers 2xx.") var ready: String?
    @Option(help: "Seconds to wait after the readiness check first passes.") var delay: Double = 0
    @Option(help: "Give up when not ready within this many seconds.") var timeout: Double = 300
    @Option(help: "Instance metadata, key=value (repeatable; e.g. lane=gray).") var metadata: [String] = []

    func run() async throws {
        if let ready {
            guard let url = URL(string: ready) else { throw ValidationError("bad --ready URL \(ready)") }
            let deadline = Date().addingTimeInterval(timeout)
            var attempts = 0
            while true {
                attempts += 1
                var request = URLRequest(url: url)
                request.timeoutInterval = 2
                let status = ((try? await URLSession.shared.data(for: request))?.1 as? HTTPURLResponse)?.statusCode ?? 0
                if (200..<300).contains(status) { break }
                if Date() > deadline {
                    FileHandle.standardError.write(
                        Data("\(service) \(ip):\(port) not ready after \(Int(timeout)) s (\(ready) answered \(status)); not registered\n".utf8)
                    )
                    throw ExitCode(1)
                }
                try await Task.sleep(nanoseconds: 500_000_000)
            }
            print("ready after \(attempts) check(s)")
        }
        if delay > 0 {
            print("waiting \(delay) s before registering")
            try await Task.sleep(nanoseconds: UInt64(delay * 1e9))
        }
        var items = [
            URLQueryItem(name: "serviceName", value: service), URLQueryItem(name: "ip", value: ip),
            URLQueryItem(name: "port", value: String(port)), URLQueryItem(name: "ephemeral", value: "false"),
        ]
        if !metadata.isEmpty {
            var map: [String: String] = [:]
            for pair in metadata {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw ValidationError("--metadata must be key=value, got \"\(pair)\"") }
                map[String(kv[0])] = String(kv[1])
            }
            let json = String(decoding: try JSONSerialization.data(withJSONObject: map, options: .sortedKeys), as: UTF8.self)
            items.append(URLQueryItem(name: "metadata", value: json))
        }
        if let accessToken { items.append(URLQueryItem(name: "accessToken", value: accessToken)) }
        try await NacosCall.send("POST", nacos + "/nacos/v1/ns/instance", items)
        print("registered \(service) \(ip):\(port)")
    }
}

/// `switchyard deregister`: the last step of a graceful drain (after `switchyard drain` and in-flight 0).
struct DeregisterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "deregister", abstract: "Remove a service instance from the registry.")
    @Option(help: "The registry's Nacos API.") var nacos = "http://127.0.0.1:8848"
    @Option(help: "Access token for the registry (when its auth is on).") var accessToken: String?
    @Option(help: "Service name.") var service: String
    @Option(help: "The instance's address.") var ip = "127.0.0.1"
    @Option(help: "The instance's port.") var port: Int

    func run() async throws {
        var items = [
            URLQueryItem(name: "serviceName", value: service), URLQueryItem(name: "ip", value: ip),
            URLQueryItem(name: "port", value: String(port)), URLQueryItem(name: "ephemeral", value: "false"),
        ]
        if let accessToken { items.append(URLQueryItem(name: "accessToken", value: accessToken)) }
        try await NacosCall.send("DELETE", nacos + "/nacos/v1/ns/instance", items)
        print("deregistered \(service) \(ip):\(port)")
    }
}

enum NacosCall {
    /// One form call to the Nacos API; a non-2xx answer is an error exit with the answer printed.
    static func send(_ method: String, _ address: String, _ items: [URLQueryItem]) async throws {
        guard var components = URLComponents(string: address) else { throw ValidationError("bad --nacos address \(address)") }
        components.queryItems = items
        guard let url = components.url else { throw ValidationError("bad --nacos address \(address)") }
        var request = URLRequest(url: url)
        request.httpMethod = method
        let (data, response) = try await URLSession.shared.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard (200..<300).contains(status) else {
            FileHandle.standardError.write(Data("registry answered \(status): \(String(decoding: data, as: UTF8.self))\n".utf8))
            throw ExitCode(1)
        }
    }
}
