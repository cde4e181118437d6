import Foundation
import Gateway
import Logging
import NIOCore
import NIOEmbedded
import Router
public import SwitchyardCore

/// `switchyard explain` without a running server: compiles the configuration and runs
/// the same dry run as `POST /admin/explain`. Returns pretty JSON.
public enum OfflineExplain {
    public static func run(configuration: SwitchyardConfiguration, request: ExplainRequest) throws -> String {
        let snapshot = try PipelineSnapshot.offline(configuration)
        return String(decoding: try AdminJSON.encoder().encode(Explainer.explain(request, snapshot: snapshot)), as: UTF8.self)
    }

    /// The gateway's dry run of an HTTP request (registry services are not known offline).
    public static func run(
        configuration: SwitchyardConfiguration,
        method: String,
        uri: String,
        headers: [(String, String)],
        client: String?
    ) throws -> String {
        let snapshot = try PipelineSnapshot.offline(configuration)
        let explanation = snapshot.gateway.explain(method: method, uri: uri, headers: headers, client: client)
        return String(decoding: try AdminJSON.encoder().encode(explanation), as: UTF8.self)
    }
}

extension PipelineSnapshot {
    /// A snapshot that can decide but never send (explain, benchmarks of the domain logic).
    static func offline(_ configuration: SwitchyardConfiguration) throws -> PipelineSnapshot {
        let shared = SharedParts(
            clock: SystemMonotonicClock(),
            forwarder: NoForwarder(),
            deadLetters: DeadLetterList(limit: 1),
            ledger: MessageLedger(),
            balancer: Balancer(),
            logger: Logger(label: "switchyard.offline"),
            registryView: nil
        )
        return try PipelineSnapshot(configuration: configuration, shared: shared, previous: nil)
    }
}

/// The JSON the admin API and the CLI print: snake_case keys, sorted, indented.
enum AdminJSON {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}

/// Explain never sends; a forwarder that refuses makes that certain.
struct NoForwarder: Forwarder {
    let loop = EmbeddedEventLoop()
    func anyEventLoop() -> any EventLoop { loop }
    func forward(_ request: ForwardRequest, to instance: ServiceInstance, timeout: TimeAmount, on loop: any EventLoop) -> EventLoopFuture<
        ForwardResponse
    > {
        loop.makeFailedFuture(ForwardError(.shutdown, "explain does not send"))
    }
}
