import Foundation
import Logging
import NIOCore
import SwitchyardConfig
import SwitchyardCore
import SwitchyardTesting

@testable import SwitchyardServer

/// A Switchyard node in this process on loopback ports chosen by the OS, with its config in
/// a temporary file (so tests can rewrite it to exercise hot reload).
final class TestServer: Sendable {
    let app: SwitchyardApplication
    let task: Task<Void, any Error>
    let httpPort: Int
    let adminPort: Int
    let configPath: String
    let dir: String
    /// The MQTT listener's port (when the channel is on).
    func mqttPort() async throws -> Int { try await app.mqttAddress!.get().port! }
    static let token = "test-token-\(UInt64.random(in: 0...UInt64.max))"

    init(app: SwitchyardApplication, task: Task<Void, any Error>, httpPort: Int, adminPort: Int, configPath: String, dir: String) {
        self.app = app
        self.task = task
        self.httpPort = httpPort
        self.adminPort = adminPort
        self.configPath = configPath
        self.dir = dir
    }

    /// `dir`: reuse a previous server's directory (its journal and dead letters) to test a restart.
    /// `listeners`: more listener lines (e.g. `  mqtts: {…}`).
    static func start(_ yaml: String, dir existing: String? = nil, listeners: String = "") async throws -> TestServer {
        let dir = existing ?? FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = "\(dir)/switchyard.yaml"
        try withListeners(yaml, dir: dir, more: listeners).write(toFile: path, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: path)
        var logger = Logger(label: "switchyard-test")
        logger.logLevel = .critical
        let app = try SwitchyardApplication(
            configuration: config,
            configPath: path,
            logger: logger,
            threads: 2,
            drainSeconds: 2,
            environment: ["SWITCHYARD_ADMIN_TOKEN": token]
        )
        let task = Task { try await app.run(handleSignals: false) }
        let http = try await app.ingestAddress!.get().port!
        let admin = try await app.adminAddress.get().port!
        return TestServer(app: app, task: task, httpPort: http, adminPort: admin, configPath: path, dir: dir)
    }

    /// Rewrites the config file (listeners kept) for hot-reload tests.
    func rewrite(_ yaml: String) throws {
        try Self.withListeners(yaml, dir: dir).write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    /// The test's config plus loopback listeners on ports the OS picks and a private data dir.
    static func withListeners(_ yaml: String, dir: String, more: String = "") -> String {
        """
        node: {data_dir: "\(dir)/data"}
        listeners:
          http: {host: 127.0.0.1, port: 0}
          admin: {host: 127.0.0.1, port: 0}
          mqtt: {host: 127.0.0.1, port: 0}
          nacos: {host: 127.0.0.1, port: 0}
        \(more)
        \(yaml)
        """
    }

    func post(_ topic: String, body: String = #"{"v":1}"#, headers: [(String, String)] = []) async throws -> TestHTTPClient.Response {
        try await TestHTTPClient.request("POST", port: httpPort, path: "/v1/messages/\(topic)", headers: headers, body: body)
    }

    func admin(_ method: String, _ path: String, body: String = "", token: String? = TestServer.token) async throws -> TestHTTPClient.Response {
        var headers: [(String, String)] = []
        if let token { headers.append(("authorization", "Bearer \(token)")) }
        return try await TestHTTPClient.request(method, port: adminPort, path: path, headers: headers, body: body)
    }

    func stop(keepingData: Bool = false) async {
        task.cancel()
        _ = try? await task.value
        if !keepingData { try? FileManager.default.removeItem(atPath: dir) }
    }

    /// Waits until no message is in flight, and the journal has recorded every outcome (its
    /// settlements are written by its own thread, just after the ledger counts them).
    func settle(timeoutSeconds: Double = 10) async {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while app.ledger.snapshot().inFlight > 0 || (app.journal?.unsettledCount ?? 0) > 0, Date() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
    }
}

/// Parses the message counters out of a Prometheus text page and checks the identity.
struct ScrapedLedger {
    var received = 0.0, forwarded = 0.0, rejected = 0.0, deadLettered = 0.0, brokerOnly = 0.0, inFlight = 0.0

    init(_ text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let name = line[..<space].split(separator: "{").first.map(String.init) ?? ""
            switch name {
            case "switchyard_messages_received_total": received += value
            case "switchyard_messages_forwarded_total": forwarded += value
            case "switchyard_messages_rejected_total": rejected += value
            case "switchyard_messages_dead_lettered_total": deadLettered += value
            case "switchyard_messages_broker_only_total": brokerOnly += value
            case "switchyard_messages_in_flight": inFlight += value
            default: break
            }
        }
    }

    var balances: Bool { received == forwarded + rejected + deadLettered + brokerOnly + inFlight }
}

extension TestServer {
    /// Polls `GET /admin/instances/{id}` until its drain is complete (or 2 s passed); returns the last answer.
    func drainState(_ id: String) async throws -> String {
        var state = ""
        for _ in 0..<100 {
            state = try await admin("GET", "/admin/instances/\(id)").body
            if state.contains("\"drain\":\"completed\"") { break }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        return state
    }
}
