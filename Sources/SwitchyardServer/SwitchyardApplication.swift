public import ConfigCenter
import Controller
public import DeviceRegistry
import EpollTransport
import Foundation
import Gateway
import HTTPForwarder
import HTTPIngress
import Journal
public import Logging
import MQTTBroker
import Metrics
import NIOConcurrencyHelpers
public import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NacosAPI
public import Registry
import Router
import SQLiteStore
import ServiceLifecycle
public import SwitchyardConfig
public import SwitchyardCore
import Telemetry
import UnixSignals

/// One Switchyard node: the HTTP channel, the admin API and the reload watcher, composed
/// in one `ServiceGroup`. Shutdown order: stop watching → stop accepting messages →
/// let deliveries in flight finish → stop the admin port → close connections.
public final class SwitchyardApplication: Sendable {
    public let configPath: String?
    public let dataDir: String
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    /// The plain HTTP listener's event loops: Switchyard's own (`channels.http.transport: epoll`)
    /// or `group`.
    let httpGroup: any EventLoopGroup
    let forwarder: HTTPForwarder
    let shared: SharedParts
    let pipeline: Pipeline
    let ingest: HTTPServer?
    /// The same channel and gateway over TLS (`listeners.https`).
    let ingestTLS: HTTPServer?
    let mqtt: MQTTServer?
    /// Device credentials (MQTT sign-in), managed through the admin API.
    public let devices: DeviceStore
    let admin: HTTPServer
    let adminToken: String
    /// The service registry and config center (nil when `registry.enabled` is false).
    public let registry: Registry?
    public let configCenter: ConfigCenter?
    let nacos: HTTPServer?
    let registryMaintenance: RegistryMaintenance?
    let journal: Journal?
    /// Unsettled messages found on disk at start, redelivered when the node runs.
    private let recovered: NIOLockedValueBox<[(sequence: UInt64, envelope: Envelope, attempts: Int)]>
    private let ready = NIOLockedValueBox(false)
    private let reloads = NIOLockedValueBox<(ok: Int, rejected: Int)>((0, 0))
    private let drainSeconds: Double
    /// The configuration from the file (or the embedded defaults) before the config center's
    /// sections are laid over it.
    private let fileConfiguration: NIOLockedValueBox<SwitchyardConfiguration>
    /// One config-center change applied at a time, each reading the content current then.
    private let overlayApplying = NIOLock()

    public var deadLetters: DeadLetterList { shared.deadLetters }
    public var ledger: MessageLedger { shared.ledger }

    /// Builds every part from `configuration`. `dataDir` overrides `node.data_dir`.
    public init(
        configuration: SwitchyardConfiguration,
        configPath: String? = nil,
        dataDir: String? = nil,
        logger: Logger,
        threads: Int = System.coreCount,
        drainSeconds: Double = 10,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws {
        Telemetry.bootstrapMetrics()
        self.configPath = configPath
        self.dataDir = dataDir ?? configuration.node.dataDir
        self.logger = logger
        self.drainSeconds = drainSeconds
        fileConfiguration = NIOLockedValueBox(configuration)
        adminToken = try AdminToken.load(dataDir: self.dataDir, environment: environment)
        devices = try DeviceStore(path: self.dataDir + "/devices.json")
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        switch configuration.channels.http.transport {
        case .epoll: httpGroup = try EpollEventLoopGroup(threads: max(1, threads), name: "sy-http")
        case .nio: httpGroup = group
        }
        forwarder = HTTPForwarder(group: group)
        var restoredLetters: [DeadLetter] = []
        if configuration.journal.enabled {
            var options = JournalOptions()
            options.segmentBytes = configuration.journal.segmentBytes
            options.maxCommitLatencySeconds = configuration.journal.maxCommitLatencySeconds
            options.sync = configuration.journal.sync
            let (journal, report) = try Journal.open(directory: self.dataDir + "/journal", options: options, logger: logger)
            self.journal = journal
            recovered = NIOLockedValueBox(report.unsettled)
            restoredLetters = report.deadLetters
            logger.info(
                "journal recovered",
                metadata: [
                    "segments": "\(report.segments)", "records": "\(report.recordsRead)", "redeliver": "\(report.unsettled.count)",
                    "problems": "\(report.problems.count)",
                ]
            )
        } else {
            journal = nil
            recovered = NIOLockedValueBox([])
        }
        let clock = SystemMonotonicClock()
        let health = InstanceHealth(clock: clock, logger: logger.with("component", "instances"))
        // Probes run on the process-wide group: one may still be connecting when this node's
        // group shuts down.
        health.setProber { host, port in await RegistryMaintenance.reachable(host, port, group: MultiThreadedEventLoopGroup.singleton) }
        health.setWarmUp(configuration.resilience.warmUp)
        var registryView: RegistryView?
        let registryConfig = configuration.registry
        if registryConfig.enabled {
            let store = try SQLiteStore(path: self.dataDir + "/registry.sqlite")
            let registry = try Registry(store: store, clock: clock)
            let configs = try ConfigCenter(store: store, maxContentBytes: registryConfig.maxConfigBytes)
            let nacosListener = configuration.listeners.nacos
            let auth = try NacosAuth(
                enabled: registryConfig.authEnabled(listenerHost: nacosListener.host),
                dataDir: self.dataDir,
                registry: registry,
                tokenTTLSeconds: registryConfig.tokenTTLSeconds
            )
            if !auth.enabled { logger.notice("registry API without auth: it listens on loopback only", metadata: ["host": "\(nacosListener.host)"]) }
            self.registry = registry
            configCenter = configs
            registryView = RegistryView(
                registry: registry,
                clock: clock,
                emptyProtectionSeconds: registryConfig.emptyProtectionSeconds,
                logger: logger.with("component", "registry"),
                health: health
            )
            nacos = HTTPServer(
                host: nacosListener.host,
                port: nacosListener.port,
                group: group,
                // A config travels form-encoded (up to three bytes per byte) with its other fields.
                maxBodyBytes: registryConfig.maxConfigBytes * 3 + (64 << 10),
                responder: NacosResponder(
                    registry: registry,
                    configs: configs,
                    auth: auth,
                    logger: logger.with("listener", "nacos"),
                    protectedKeys: Set([Self.selfConfigKey(registryConfig)].compactMap { $0 })
                ),
                logger: logger.with("listener", "nacos")
            )
            registryMaintenance = RegistryMaintenance(
                registry: registry,
                group: group,
                healthCheckIntervalSeconds: registryConfig.healthCheckIntervalSeconds,
                logger: logger.with("component", "registry")
            )
        } else {
            registry = nil
            configCenter = nil
            nacos = nil
            registryMaintenance = nil
        }
        shared = SharedParts(
            clock: clock,
            forwarder: forwarder,
            deadLetters: DeadLetterList(limit: configuration.journal.deadLetterLimit, persistence: journal, restored: restoredLetters),
            ledger: MessageLedger(),
            balancer: Balancer(breakers: CircuitBreakers(clock: clock, logger: logger.with("component", "circuit")), health: health),
            logger: logger,
            registryView: registryView
        )
        var effective = configuration
        if let configs = configCenter, let key = Self.selfConfigKey(configuration.registry), let content = configs.get(key)?.content {
            do {
                effective = try ConfigLoader.overlay(yaml: content, onto: configuration)
                logger.info("routes, lanes and filters from the config center", metadata: ["config": "\(key)"])
            } catch {
                logger.error(
                    "the config center's Switchyard config is invalid; starting on the file's",
                    metadata: ["config": "\(key)", "errors": "\(error)"]
                )
            }
        }
        let snapshot = try PipelineSnapshot(configuration: effective, shared: shared, previous: nil)
        pipeline = Pipeline(
            snapshot: snapshot,
            ledger: shared.ledger,
            journal: journal,
            dispatcher: OrderedDispatcher(group: group),
            maxBacklogBytes: configuration.journal.maxBytes,
            brokerOnlyChannels: configuration.channels.mqtt.unroutedToSubscribersOnly ? ["mqtt"] : []
        )
        for (name, rule) in configuration.services { forwarder.setConcurrencyLimit(rule.maxConcurrency, forService: name) }

        let http = configuration.channels.http
        if http.enabled {
            var options = MessageIngestResponder.Options()
            options.deviceHeader = http.deviceHeader
            options.productHeader = http.productHeader
            options.messageIDHeader = http.messageIDHeader
            options.maxBatchItems = http.maxBatchItems
            let ledger = shared.ledger
            let responder = MessageIngestResponder(sink: pipeline, options: options) { reason in
                ledger.receivedAndRejected(channel: "http", reason: reason)
            }
            let gateway = GatewayResponder(snapshot: { [pipeline] in pipeline.snapshot.gateway })
            let tooLarge: @Sendable (IncomingRequestSummary) -> Void = { summary in
                // A batch too large is counted as one message: how many it held is unknown.
                if summary.uri.hasPrefix(MessageIngestResponder.pathPrefix) || summary.uri.hasPrefix(MessageIngestResponder.batchPath) {
                    ledger.receivedAndRejected(channel: "http", reason: "payload_too_large")
                }
            }
            ingest = HTTPServer(
                host: configuration.listeners.http.host,
                port: configuration.listeners.http.port,
                group: httpGroup,
                maxBodyBytes: http.maxBodyBytes,
                responder: responder,
                logger: logger.with("listener", "http"),
                headTimeoutSeconds: http.headerTimeoutSeconds,
                streaming: gateway,
                http2: http.http2,
                onBodyTooLarge: tooLarge
            )
            if let tls = try Self.httpsContext(configuration.listeners, http2: http.http2) {
                ingestTLS = HTTPServer(
                    host: configuration.listeners.https.host,
                    port: configuration.listeners.https.port,
                    group: group,
                    maxBodyBytes: http.maxBodyBytes,
                    responder: responder,
                    logger: logger.with("listener", "https"),
                    headTimeoutSeconds: http.headerTimeoutSeconds,
                    streaming: gateway,
                    tls: tls,
                    verifiesClientCertificates: configuration.listeners.httpsClientCA != nil,
                    http2: http.http2,
                    onBodyTooLarge: tooLarge
                )
            } else {
                ingestTLS = nil
            }
        } else {
            ingest = nil
            ingestTLS = nil
        }
        let mqttChannel = configuration.channels.mqtt
        if mqttChannel.enabled {
            var options = MQTTConnectionMachine.Options()
            options.allowAnonymous = mqttChannel.allowAnonymous
            options.maximumPacketSize = mqttChannel.maxPacketBytes
            options.receiveMaximum = UInt16(mqttChannel.receiveMaximum)
            options.maximumKeepAliveSeconds = UInt16(mqttChannel.maxKeepAliveSeconds)
            options.authenticator = RegistryAuthenticator(store: devices)
            options.aclTemplate = mqttChannel.aclTemplate
            options.connectionEvents = mqttChannel.connectionEvents
            options.denyPublish = mqttChannel.denyPublish
            options.denySubscribe = mqttChannel.denySubscribe
            options.allowPublish = mqttChannel.allowPublish
            options.allowSubscribe = mqttChannel.allowSubscribe
            options.maximumSessionExpirySeconds = UInt32(mqttChannel.maxSessionExpirySeconds)
            options.maximumQueued = mqttChannel.maxQueuedMessages
            options.maximumInflight = mqttChannel.maxInflight
            options.topicAliasMaximum = UInt16(mqttChannel.topicAliasMaximum)
            options.sharedSubscriptions = mqttChannel.sharedSubscriptions
            let ledger = shared.ledger
            mqtt = MQTTServer(
                host: configuration.listeners.mqtt.host,
                port: configuration.listeners.mqtt.port,
                group: group,
                sink: pipeline,
                options: options,
                maxConnections: mqttChannel.maxConnections,
                commandTopic: mqttChannel.commandTopic,
                statePath: self.dataDir + "/mqtt/state.bin",
                secure: try SwitchyardApplication.secureListener(configuration.listeners),
                maxConnectionRate: mqttChannel.maxConnectionRate,
                systemTopicsInterval: mqttChannel.sysIntervalSeconds,
                version: SwitchyardVersion.current,
                logger: logger.with("listener", "mqtt"),
                onRefused: { reason in ledger.receivedAndRejected(channel: "mqtt", reason: reason) }
            )
        } else {
            mqtt = nil
        }
        let adminBox = NIOLockedValueBox<SwitchyardApplication?>(nil)
        admin = HTTPServer(
            host: configuration.listeners.admin.host,
            port: configuration.listeners.admin.port,
            group: group,
            maxBodyBytes: 1 << 20,
            responder: LateResponder(box: adminBox),
            logger: logger.with("listener", "admin")
        )
        adminBox.withLockedValue { $0 = self }
        if let configs = configCenter, let key = Self.selfConfigKey(configuration.registry) {
            let base = fileConfiguration
            configs.setValidator(key) { content in
                let file = base.withLockedValue { $0 }
                do throws(ConfigErrors) {
                    _ = try ConfigLoader.overlay(yaml: content, onto: file)
                    return nil
                } catch {
                    return error.description
                }
            }
            // Re-read when told: two publishes' notices may arrive out of order; the current content is what counts.
            configs.watch(key) { [weak self] _ in
                guard let self else { return }
                self.overlayApplying.withLock { self.applyConfigCenter(configs.get(key)?.content) }
            }
        }
    }

    /// Where Switchyard's own sections live in the config center, when configured.
    static func selfConfigKey(_ registry: SwitchyardConfiguration.Registry) -> ConfigKey? {
        guard registry.enabled, let dataID = registry.configDataID else { return nil }
        return ConfigKey(tenant: registry.configTenant, group: registry.configGroup, dataId: dataID)
    }

    /// The file's configuration with the config center's sections over it (when there are any).
    private func effectiveConfiguration(file: SwitchyardConfiguration) throws(ConfigErrors) -> SwitchyardConfiguration {
        guard let configs = configCenter, let key = Self.selfConfigKey(file.registry), let content = configs.get(key)?.content else { return file }
        return try ConfigLoader.overlay(yaml: content, onto: file)
    }

    /// The config center's Switchyard config changed (nil: deleted, the file's sections serve again).
    func applyConfigCenter(_ content: String?) {
        let base = fileConfiguration.withLockedValue { $0 }
        guard let content else {
            apply(base, reason: "config center: deleted")
            return
        }
        do {
            apply(try ConfigLoader.overlay(yaml: content, onto: base), reason: "config center")
        } catch {
            reloads.withLockedValue { $0.rejected += 1 }
            Counter(label: "switchyard_config_reloads_total", dimensions: [("result", "rejected")]).increment()
            logger.error("config center change rejected; the previous config keeps serving", metadata: ["errors": "\(error)"])
        }
    }

    /// Address of the HTTP message channel once bound.
    public var ingestAddress: EventLoopFuture<SocketAddress>? { ingest?.boundAddress }
    /// Address of the HTTPS listener once bound (nil without `listeners.https`).
    public var ingestTLSAddress: EventLoopFuture<SocketAddress>? { ingestTLS?.boundAddress }
    /// Address of the MQTT listener once bound.
    public var mqttAddress: EventLoopFuture<SocketAddress>? { mqtt?.boundAddress }
    /// Address of the MQTT TLS listener once bound (fails when there is none).
    public var mqttSecureAddress: EventLoopFuture<SocketAddress>? { mqtt?.secureBoundAddress }
    /// MQTT connections open now.
    public var mqttConnections: Int { mqtt?.openConnections ?? 0 }
    var mqttServer: MQTTServer? { mqtt }
    public var adminAddress: EventLoopFuture<SocketAddress> { admin.boundAddress }
    /// Address of the Nacos-compatible registry API once bound (nil when the registry is off).
    public var nacosAddress: EventLoopFuture<SocketAddress>? { nacos?.boundAddress }
    public var token: String { adminToken }
    var isReady: Bool { ready.withLockedValue { $0 } }
    var journalWriteFailure: String? { journal?.writeFailure }

    /// Runs until SIGTERM/SIGINT (when `handleSignals`) or until the task is cancelled.
    public func run(handleSignals: Bool = true) async throws {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: admin),
            .init(service: DeliveryDrain(app: self)),
            .init(service: DrainWatcher(app: self)),
        ]
        if let nacos { services.append(.init(service: nacos)) }
        if let registryMaintenance { services.append(.init(service: registryMaintenance)) }
        if let ingest { services.append(.init(service: ingest)) }
        if let ingestTLS { services.append(.init(service: ingestTLS)) }
        if let mqtt { services.append(.init(service: mqtt)) }
        services.append(.init(service: ReloadWatcher(app: self)))
        // Shut down first (the group stops services in reverse order): not ready, then a pause
        // for load balancers to notice, and only then do the listeners stop accepting.
        services.append(.init(service: ShutdownDelay(app: self, seconds: pipeline.snapshot.configuration.node.shutdownDelaySeconds)))
        redeliverRecovered()
        var config = ServiceGroupConfiguration(services: services, logger: logger)
        if handleSignals { config.gracefulShutdownSignals = [.sigterm, .sigint] }
        let group = ServiceGroup(configuration: config)
        let readiness = Task { [self] in
            _ = try? await admin.boundAddress.get()
            _ = try? await ingest?.boundAddress.get()
            _ = try? await ingestTLS?.boundAddress.get()
            _ = try? await mqtt?.boundAddress.get()
            _ = try? await nacos?.boundAddress.get()
            ready.withLockedValue { $0 = true }
        }
        defer { readiness.cancel() }
        do {
            try await group.run()
        } catch {
            await shutdownResources()
            throw error
        }
        await shutdownResources()
    }

    /// Takes the matching dead letters out of the list and delivers them again under their own
    /// ids (journaled first when the journal is on). Returns how many were replayed.
    public func replayDeadLetters(_ filter: DeadLetterList.Filter) -> Int {
        let letters = shared.deadLetters.take(filter)
        let router = pipeline.snapshot.router
        for letter in letters {
            var fresh = letter.envelope
            fresh.receivedAt = WallClock.nowNanos()  // a replay is a new delivery: its TTL starts now
            let envelope = fresh
            shared.ledger.receivedAndAccepted(channel: "replay")
            guard let journal else {
                pipeline.deliver(envelope, sequence: nil, router: router, priorAttempts: letter.attempts)
                continue
            }
            let ledger = shared.ledger
            let pipeline = self.pipeline
            let deadLetters = shared.deadLetters
            journal.append(envelope, on: group.next()).whenComplete { result in
                switch result {
                case .success(let sequence): pipeline.deliver(envelope, sequence: sequence, router: router, priorAttempts: letter.attempts)
                case .failure:
                    ledger.acceptedThenRejected(channel: "replay", reason: "journal_unavailable")
                    deadLetters.append(letter)  // back where it was: nothing is dropped silently
                }
            }
        }
        logger.info("dead letters replayed", metadata: ["count": "\(letters.count)"])
        return letters.count
    }

    /// Removes the matching dead letters for good. Returns how many.
    public func purgeDeadLetters(_ filter: DeadLetterList.Filter) -> Int {
        let count = shared.deadLetters.take(filter).count
        logger.notice("dead letters purged", metadata: ["count": "\(count)"])
        return count
    }

    /// Messages the journal held at start go out again (same ids; attempt numbers go on from
    /// the journal's count, so a service never sees an attempt number twice).
    private func redeliverRecovered() {
        let messages = recovered.withLockedValue { list in
            defer { list = [] }
            return list
        }
        let router = pipeline.snapshot.router
        if !messages.isEmpty { Counter(label: "switchyard_messages_redelivered_total").increment(by: messages.count) }
        for (sequence, envelope, attempts) in messages {
            shared.ledger.receivedAndAccepted(channel: envelope.channel)
            pipeline.deliver(envelope, sequence: sequence, router: router, priorAttempts: attempts)
        }
    }

    /// `/readyz` answers 503 from now on (shutdown has begun).
    func markNotReady() {
        ready.withLockedValue { $0 = false }
    }

    private func shutdownResources() async {
        ready.withLockedValue { $0 = false }
        forwarder.shutdown()
        shared.balancer.health.stopProbing()
        journal?.close()
        if httpGroup !== group { try? await httpGroup.shutdownGracefully() }
        try? await group.shutdownGracefully()
    }

    /// Waits (bounded) for accepted messages to finish delivery; used on shutdown.
    func drainDeliveries() async {
        let deadline = Date().addingTimeInterval(drainSeconds)
        while shared.ledger.snapshot().inFlight > 0 && Date() < deadline {
            await pauseEvenIfCancelled(nanoseconds: 20_000_000)
        }
        let left = shared.ledger.snapshot().inFlight
        if left > 0 {
            logger.warning(
                journal == nil
                    ? "shutdown with messages still in delivery: they are lost (the journal is off)"
                    : "shutdown with messages still in delivery: they stay in the journal and go out after the next start",
                metadata: ["in_flight": "\(left)"]
            )
        }
    }

    // MARK: - Reload

    /// Re-reads the config file; a bad file is rejected (logged) and the old config keeps serving.
    @discardableResult
    public func reload(reason: String) -> Result<Void, ConfigErrors> {
        guard let configPath else {
            logger.warning("reload requested (\(reason)) but the node runs on embedded defaults: start it with --config FILE")
            return .failure(ConfigErrors([ConfigIssue(path: "", message: "started without --config: nothing to reload")]))
        }
        do {
            let file = try ConfigLoader.load(path: configPath)
            fileConfiguration.withLockedValue { $0 = file }
            return apply(try effectiveConfiguration(file: file), reason: reason)
        } catch {
            reloads.withLockedValue { $0.rejected += 1 }
            Counter(label: "switchyard_config_reloads_total", dimensions: [("result", "rejected")]).increment()
            logger.error("config reload rejected; the previous config keeps serving", metadata: ["reason": "\(reason)", "errors": "\(error)"])
            return .failure(error)
        }
    }

    /// Swaps in a validated configuration.
    @discardableResult
    public func apply(_ config: SwitchyardConfiguration, reason: String) -> Result<Void, ConfigErrors> {
        let old = pipeline.snapshot
        do {
            let snapshot = try PipelineSnapshot(configuration: config, shared: shared, previous: old)
            for (name, rule) in config.services { forwarder.setConcurrencyLimit(rule.maxConcurrency, forService: name) }
            pipeline.swap(snapshot)
        } catch {
            reloads.withLockedValue { $0.rejected += 1 }
            Counter(label: "switchyard_config_reloads_total", dimensions: [("result", "rejected")]).increment()
            logger.error("config reload rejected; the previous config keeps serving", metadata: ["error": "\(error)"])
            return .failure(ConfigErrors([ConfigIssue(path: "", message: "\(error)")]))
        }
        if config.listeners != old.configuration.listeners || config.channels.http != old.configuration.channels.http
            || config.channels.mqtt != old.configuration.channels.mqtt || config.node != old.configuration.node
            || config.registry != old.configuration.registry
        {
            logger.warning("node, listeners, channels.http, channels.mqtt and registry changes take effect after a restart")
        }
        reloads.withLockedValue { $0.ok += 1 }
        Counter(label: "switchyard_config_reloads_total", dimensions: [("result", "ok")]).increment()
        logger.info(
            "config reloaded",
            metadata: ["reason": "\(reason)", "routes": "\(config.routes.count)", "lanes": "\(config.lanes.count)"]
        )
        return .success(())
    }

    /// Successful and rejected reloads so far.
    public var reloadCounts: (ok: Int, rejected: Int) { reloads.withLockedValue { $0 } }

    /// The configuration currently serving.
    public var configuration: SwitchyardConfiguration { pipeline.snapshot.configuration }

    func metricsText() -> String {
        Telemetry.exposition(
            ledger: shared.ledger.snapshot(),
            gauges: [
                (
                    "switchyard_journal_backlog_bytes", "Bytes of journaled messages not yet settled (backpressure past journal.max_bytes).",
                    Double(journal?.backlogBytes ?? 0)
                ),
                (
                    "switchyard_memory_backlog_bytes",
                    "With the journal off: bytes accepted messages hold in memory until delivered, 1.25 KiB each besides payload and topic (backpressure past journal.max_bytes).",
                    Double(pipeline.memoryBacklogBytes)
                ),
                ("switchyard_journal_pending_bytes", "Bytes appended and not yet committed to disk.", Double(journal?.pendingBytes ?? 0)),
                ("switchyard_journal_unsettled_messages", "Journaled messages awaiting their final outcome.", Double(journal?.unsettledCount ?? 0)),
                ("switchyard_dead_letters_stored", "Dead letters currently kept (durably when the journal is on).", Double(shared.deadLetters.count)),
                (
                    "switchyard_dead_letters_evicted_total", "Dead letters dropped from memory because the list was full.",
                    Double(shared.deadLetters.evicted)
                ),
            ]
        )
    }
}

/// Lets the admin server be built before the application it answers for.
struct LateResponder: HTTPResponder {
    let box: NIOLockedValueBox<SwitchyardApplication?>
    func respond(to request: IncomingRequest, on loop: any EventLoop) -> EventLoopFuture<OutgoingResponse> {
        guard let app = box.withLockedValue({ $0 }) else {
            return loop.makeSucceededFuture(.error(.serviceUnavailable, "starting", "starting up"))
        }
        return AdminResponder(app: app, token: app.adminToken).respond(to: request, on: loop)
    }
}

/// On shutdown (it stops after the ingest listener, which is later in the group) waits for deliveries.
struct DeliveryDrain: Service {
    let app: SwitchyardApplication
    func run() async throws {
        try? await gracefulShutdown()
        await app.drainDeliveries()
    }
}

extension Logger {
    func with(_ key: String, _ value: String) -> Logger {
        var copy = self
        copy[metadataKey: key] = "\(value)"
        return copy
    }

}

extension SwitchyardApplication {
    /// TLS for `listeners.https` (nil without its certificate and key): ALPN offers h2 and
    /// http/1.1; with a client CA, client certificates are verified (optional or required).
    static func httpsContext(_ listeners: SwitchyardConfiguration.Listeners, http2: Bool) throws -> NIOSSLContext? {
        guard let certPath = listeners.httpsCertificate, let keyPath = listeners.httpsKey else { return nil }
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certPath)
            let key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
            var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            tls.applicationProtocols = http2 ? ["h2", "http/1.1"] : ["http/1.1"]
            if let ca = listeners.httpsClientCA {
                tls.trustRoots = .file(ca)
                tls.certificateVerification = listeners.httpsClientAuthRequired ? .noHostnameVerification : .optionalVerification
            }
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw HTTPServerError(message: "listeners.https: cannot use \(certPath) and \(keyPath) (and the client CA) as PEM files: \(error)")
        }
    }

    /// The MQTT TLS listener from `listeners.mqtts` (nil when it has no certificate and key).
    static func secureListener(_ listeners: SwitchyardConfiguration.Listeners) throws -> MQTTServer.SecureListener? {
        guard let certPath = listeners.mqttsCertificate, let keyPath = listeners.mqttsKey else { return nil }
        let context: NIOSSLContext
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certPath)
            let key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
            let tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            context = try NIOSSLContext(configuration: tls)
        } catch {
            throw MQTTServerError(message: "listeners.mqtts: cannot use \(certPath) and \(keyPath) as a PEM certificate chain and key: \(error)")
        }
        return MQTTServer.SecureListener(host: listeners.mqtts.host, port: listeners.mqtts.port) { channel in
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
        }
    }
}

/// The first to stop on SIGTERM: marks the node not ready (`/readyz` 503) and waits
/// `node.shutdown_delay` while every listener still serves, so load balancers and callers
/// notice before connections are refused.
struct ShutdownDelay: Service {
    let app: SwitchyardApplication
    let seconds: Double

    func run() async throws {
        try? await gracefulShutdown()
        app.markNotReady()
        guard seconds > 0 else { return }
        app.logger.notice("shutting down: not ready now; listeners keep serving for the shutdown delay", metadata: ["seconds": "\(seconds)"])
        try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
    }
}
