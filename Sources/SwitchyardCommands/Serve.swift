import ArgumentParser
import Foundation
import Logging
import NIOCore
import SwitchyardConfig
import SwitchyardCore
import SwitchyardServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run Switchyard (embedded defaults when no config is given)."
    )

    @Option(name: .long, help: "YAML configuration file (hot reloaded on change and SIGHUP).")
    var config: String?

    @Option(name: .long, help: "Data directory (overrides node.data_dir; default ./switchyard-data).")
    var dataDir: String?

    func run() async throws {
        // A file-size limit (ulimit -f) must make a journal write fail with EFBIG, which the
        // journal survives, rather than kill the process.
        signal(SIGXFSZ, SIG_IGN)
        let configuration: SwitchyardConfiguration
        if let config {
            do {
                configuration = try ConfigLoader.load(path: config)
            } catch {
                FileHandle.standardError.write(Data("switchyard: \(config) is not valid:\n\(error)\n".utf8))
                throw ExitCode(2)
            }
        } else {
            configuration = SwitchyardConfiguration()
        }
        let level = Logger.Level(rawValue: configuration.telemetry.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "switchyard")
        let app: SwitchyardApplication
        do {
            app = try SwitchyardApplication(
                configuration: configuration,
                configPath: config,
                dataDir: dataDir,
                logger: logger,
                threads: configuration.node.threads > 0 ? configuration.node.threads : System.coreCount
            )
        } catch {
            FileHandle.standardError.write(Data("switchyard: cannot start: \(error)\n".utf8))
            throw ExitCode(1)
        }
        logger.info(
            "starting",
            metadata: [
                "config": "\(config ?? "(embedded defaults)")",
                "data_dir": "\(app.dataDir)",
                "admin_token": "\(app.dataDir)/admin-token (or SWITCHYARD_ADMIN_TOKEN)",
            ]
        )
        try await app.run()
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file: exit 0 when valid, 1 with every error otherwise."
    )

    @Argument(help: "The YAML configuration file.")
    var file: String

    func run() throws {
        do {
            let c = try ConfigLoader.load(path: file)
            print(
                "\(file): ok (\(c.filters.count) filters, \(c.tags.count) tag rules, \(c.lanes.count) lanes, "
                    + "\(c.routes.count) routes, \(c.services.count) services)"
            )
        } catch {
            FileHandle.standardError.write(Data("\(file): \(error.issues.count) error(s)\n\(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Dry-run one message through filters, tags, lanes and routes (or, with --uri, one HTTP request through the gateway), and print why each decision was taken."
    )

    @Option(name: .long, help: "YAML configuration file (embedded defaults when omitted).")
    var config: String?

    @Option(name: .long, help: "The message topic, e.g. devices/p1/d1/telemetry.")
    var topic: String?

    @Option(name: .long, help: "An HTTP request's path and query (explains the gateway's decision instead of a message's).")
    var uri: String?

    @Option(name: .long, help: "The HTTP request's method (with --uri).")
    var method = "GET"

    @Option(name: .long, help: "The HTTP request's Host (with --uri).")
    var host: String?

    @Option(name: .long, help: "The caller's address (with --uri; trusted or not). Default: an outside client.")
    var client: String?

    @Option(name: .long, help: "Device id (as the x-device-id header would give it).")
    var device: String?

    @Option(name: .long, help: "Product key (as the x-product-key header would give it).")
    var product: String?

    @Option(name: .long, help: "A sender header, name=value (repeatable).")
    var header: [String] = []

    @Option(name: .long, help: "The payload text.")
    var payload: String?

    func run() throws {
        var configuration = SwitchyardConfiguration()
        if let config {
            do { configuration = try ConfigLoader.load(path: config) } catch {
                FileHandle.standardError.write(Data("\(config) is not valid:\n\(error)\n".utf8))
                throw ExitCode(1)
            }
        }
        var headers: [String: String] = [:]
        for h in header {
            let kv = h.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { throw ValidationError("--header must be name=value, got \"\(h)\"") }
            headers[String(kv[0])] = String(kv[1])
        }
        if let uri {
            var fields = headers.map { ($0.key.lowercased(), $0.value) }
            if !fields.contains(where: { $0.0 == "host" }) { fields.append(("host", host ?? "localhost")) }
            print(try OfflineExplain.run(configuration: configuration, method: method, uri: uri, headers: fields, client: client))
            return
        }
        guard let topic else { throw ValidationError("give --topic (a message) or --uri (an HTTP request)") }
        print(
            try OfflineExplain.run(
                configuration: configuration,
                request: ExplainRequest(topic: topic, device: device, product: product, headers: headers, payload: payload)
            )
        )
    }
}
