import Logging
import MQTTWire
import Metrics
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import ServiceLifecycle
public import SwitchyardCore
import Synchronization

/// The MQTT listener, run as a `Service`: devices connect, publish, and their messages go
/// to the `MessageSink` (the pipeline); a QoS 1/2 acknowledgement waits for acceptance
/// (the journal commit). On shutdown v5 clients get DISCONNECT 0x8B.
public final class MQTTServer: Service, Sendable {
    public let host: String
    public let port: Int
    let group: any EventLoopGroup
    let sink: any MessageSink
    let options: MQTTConnectionMachine.Options
    let maxConnections: Int
    let logger: Logger
    let onRefused: @Sendable (String) -> Void
    private let bound: EventLoopPromise<SocketAddress>
    /// The TLS listener, when there is one: where, and what goes first in each connection's
    /// pipeline (the TLS handler; this module does not know TLS itself).
    public struct SecureListener: Sendable {
        public var host: String
        public var port: Int
        public var addHandlers: @Sendable (any Channel) throws -> Void
        public init(host: String, port: Int, addHandlers: @escaping @Sendable (any Channel) throws -> Void) {
            self.host = host
            self.port = port
            self.addHandlers = addHandlers
        }
    }

    let secure: SecureListener?
    private let secureBound: EventLoopPromise<SocketAddress>
    /// Sessions by client id: connected (the newest connection wins, an older one is taken
    /// over) or kept for a client that is away.
    let sessions = NIOLockedValueBox(SessionTable())
    let connections = NIOLockedValueBox([ObjectIdentifier: any Channel]())
    let connectionCount = Atomic<Int>(0)
    let connectionsGauge = Gauge(label: "switchyard_mqtt_connections")
    /// Who gets what: one trie for every connection (subscriptions end with their connection).
    let trie = NIOLockedValueBox(SubscriptionTrie())
    /// The last retained message per topic.
    let retained = NIOLockedValueBox([String: MQTTRetained]())
    let subscriptionsGauge = Gauge(label: "switchyard_mqtt_subscriptions")
    /// Deliveries to subscribers by QoS (made once: this is counted per message).
    let messagesOut = (0...2).map { Counter(label: "switchyard_mqtt_messages_out_total", dimensions: [("qos", String($0))]) }
    /// Commands waiting for their device's reply, by command id.
    let replies = NIOLockedValueBox([String: EventLoopPromise<CommandOutcome>]())
    /// Where commands to a device go (`{product}`, `{device}`; the command id is appended).
    let commandTopic: String
    let retainedGauge = Gauge(label: "switchyard_mqtt_retained_messages")
    let offlineGauge = Gauge(label: "switchyard_mqtt_sessions_offline")
    let queuedOffline = Counter(label: "switchyard_mqtt_messages_queued_offline_total")
    /// Where sessions and retained messages are kept between runs (nil: memory only).
    let statePath: String?
    /// Something to save changed since the last snapshot.
    let dirty = Atomic<Bool>(false)
    let stats = MQTTStats()
    let connectionRate: ConnectionRateLimit
    /// Seconds between `$SYS/broker/…` updates (0: none).
    let systemTopicsInterval: Int
    let version: String
    /// Wills waiting for their Will Delay Interval, by client id.
    let delayedWills = NIOLockedValueBox([String: Scheduled<Void>]())

    /// `onRefused` is told the reason for each PUBLISH refused before it reached the sink.
    public init(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        sink: any MessageSink,
        options: MQTTConnectionMachine.Options,
        maxConnections: Int,
        commandTopic: String = "devices/{product}/{device}/commands",
        statePath: String? = nil,
        secure: SecureListener? = nil,
        maxConnectionRate: Double = 0,
        systemTopicsInterval: Int = 0,
        version: String = "",
        logger: Logger,
        onRefused: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.commandTopic = commandTopic
        self.statePath = statePath
        self.secure = secure
        connectionRate = ConnectionRateLimit(perSecond: maxConnectionRate)
        self.systemTopicsInterval = systemTopicsInterval
        self.version = version
        self.host = host
        self.port = port
        self.group = group
        self.sink = sink
        self.options = options
        self.maxConnections = maxConnections
        self.logger = logger
        self.onRefused = onRefused
        bound = group.any().makePromise(of: SocketAddress.self)
        secureBound = group.any().makePromise(of: SocketAddress.self)
        if secure == nil { secureBound.fail(MQTTServerError(message: "no TLS listener (listeners.mqtts)")) }
    }

    public var boundAddress: EventLoopFuture<SocketAddress> { bound.futureResult }
    /// Where the TLS listener listens (fails when there is none).
    public var secureBoundAddress: EventLoopFuture<SocketAddress> { secureBound.futureResult }
    /// Connections open now.
    public var openConnections: Int { connectionCount.load(ordering: .relaxed) }

    public func run() async throws {
        try restore()
        let channel: any Channel
        do {
            channel = try await bootstrap(tls: nil).bind(host: host, port: port).get()
        } catch {
            let failure = MQTTServerError(message: "cannot listen on \(host):\(port): \(error)")
            bound.fail(failure)
            secureBound.fail(failure)
            throw failure
        }
        var secureChannel: (any Channel)?
        if let secure {
            do {
                secureChannel = try await bootstrap(tls: secure.addHandlers).bind(host: secure.host, port: secure.port).get()
            } catch {
                let failure = MQTTServerError(message: "cannot listen on \(secure.host):\(secure.port) (TLS): \(error)")
                bound.fail(failure)
                secureBound.fail(failure)
                try? await channel.close()
                throw failure
            }
            secureBound.succeed(secureChannel!.localAddress!)
            logger.info("listening (TLS)", metadata: ["address": "\(secureChannel!.localAddress!)"])
        }
        bound.succeed(channel.localAddress!)
        logger.info("listening", metadata: ["address": "\(channel.localAddress!)"])
        let housekeeping = group.any().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in
            expireSessions(now: WallClock.nowNanos())
        }
        let systemTopics =
            systemTopicsInterval > 0
            ? group.any().scheduleRepeatedTask(initialDelay: .zero, delay: .seconds(Int64(systemTopicsInterval))) { [self] _ in
                publishSystemTopics(version: version)
            } : nil
        let saver = Task { [self] in
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: 5_000_000_000)
                if dirty.exchange(false, ordering: .relaxed) { await save() }
            }
        }
        try? await gracefulShutdown()
        try? await channel.close()
        try? await secureChannel?.close()
        let open = sessions.withLockedValue { $0.online }
        for handler in open { handler.shutDown() }
        // Let the DISCONNECTs go out, if any (also when the shutdown came as a cancellation,
        // where Task.sleep would return at once).
        if !open.isEmpty { await pauseEvenIfCancelled(nanoseconds: 100_000_000) }
        for c in connections.withLockedValue({ Array($0.values) }) { try? await c.close() }
        housekeeping.cancel()
        systemTopics?.cancel()
        saver.cancel()
        await saver.value  // one save at a time: they share the temporary file
        await save()
        logger.info("stopped", metadata: ["address": "\(host):\(port)"])
    }

    /// One listener's bootstrap: limits first, then (TLS) the given handlers and the
    /// connection handler (which decodes its packets itself).
    func bootstrap(tls: (@Sendable (any Channel) throws -> Void)?) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let open = connectionCount.wrappingAdd(1, ordering: .relaxed).newValue
                    connectionsGauge.record(open)
                    channel.closeFuture.whenComplete { [self] _ in
                        connectionsGauge.record(connectionCount.wrappingSubtract(1, ordering: .relaxed).newValue)
                    }
                    if open > maxConnections {
                        Counter(label: "switchyard_mqtt_connects_total", dimensions: [("result", "max_connections")]).increment()
                        logger.warning("connection refused: channels.mqtt.max_connections reached", metadata: ["limit": "\(maxConnections)"])
                        channel.close(promise: nil)
                        return
                    }
                    if !connectionRate.admit() {
                        // Closed before a byte is read: a reconnect storm costs no CONNECT parsing.
                        Counter(label: "switchyard_mqtt_connects_total", dimensions: [("result", "rate_limited")]).increment()
                        logger.debug("connection refused: channels.mqtt.max_connection_rate", metadata: ["rate": "\(connectionRate.rate)"])
                        channel.close(promise: nil)
                        return
                    }
                    try tls?(channel)
                    try channel.pipeline.syncOperations.addHandler(
                        MQTTConnectionHandler(server: self, loop: channel.eventLoop, remoteAddress: channel.remoteAddress)
                    )
                    let id = ObjectIdentifier(channel)
                    connections.withLockedValue { $0[id] = channel }
                    channel.closeFuture.whenComplete { [connections] _ in
                        connections.withLockedValue { _ = $0.removeValue(forKey: id) }
                    }
                }
            }
    }

    // MARK: - Subscriptions and fan-out

    /// Where one message went.
    public struct FanOut: Sendable, Equatable {
        /// Connected clients it was handed to.
        public var online = 0
        /// Sessions of clients that are away, where it waits.
        public var queued = 0
    }

    /// Sends an accepted message to every matching subscriber (and one member of each
    /// matching shared subscription), queues it for sessions whose client is away (unless
    /// `queueOffline` is false), and keeps it when retained.
    @discardableResult
    func fanOut(_ publish: MQTTPacket.Publish, from publisher: String?, queueOffline: Bool = true) -> FanOut {
        var expiresAt: UInt64?
        if !publish.properties.isEmpty, let interval = publish.properties.messageExpiryInterval {
            expiresAt = WallClock.nowNanos() + UInt64(interval) * 1_000_000_000
        }
        if publish.retain { keepRetained(publish, expiresAt: expiresAt) }
        let (direct, shared) = trie.withLockedValue { $0.cachedLookup(publish.topic) }
        guard !direct.isEmpty || !shared.isEmpty else { return FanOut() }
        var result = FanOut()
        var targets: [(MQTTConnectionHandler, MQTTOutbound)] = []
        var dropped = 0
        let limit = options.maximumQueued
        sessions.withLockedValue { table in
            func hand(_ clientID: String, _ m: MQTTOutbound) {
                switch table.slots[clientID] {
                case .online(let handler):
                    targets.append((handler, m))
                    result.online += 1
                case .offline(let box) where queueOffline:
                    if box.session.enqueue(m, limit: limit) { dropped += 1 }
                    result.queued += 1
                default: break
                }
            }
            for (clientID, match) in direct {
                if match.noLocal && clientID == publisher { continue }
                var out = publish
                out.qos = min(publish.qos, match.qos)
                out.retain = match.retainAsPublished && publish.retain
                out.dup = false
                if !out.properties.isEmpty || !match.identifiers.isEmpty {
                    out.properties.topicAlias = nil
                    out.properties.subscriptionIdentifiers = match.identifiers
                }
                hand(clientID, MQTTOutbound(publish: out, expiresAt: expiresAt))
            }
            for set in shared {
                guard let member = table.choose(from: set, excluding: nil, queueOffline: queueOffline) else { continue }
                var out = publish
                out.qos = min(publish.qos, member.entry.qos)
                out.retain = false
                out.dup = false
                if !out.properties.isEmpty || member.entry.identifier != nil {
                    out.properties.topicAlias = nil
                    out.properties.subscriptionIdentifiers = member.entry.identifier.map { [$0] } ?? []
                }
                hand(member.clientID, MQTTOutbound(publish: out, expiresAt: expiresAt, shareFilter: set.filter))
            }
        }
        for (handler, m) in targets {
            messagesOut[Int(m.publish.qos.rawValue)].increment()
            handler.deliver(m)
        }
        stats.messagesOut.wrappingAdd(targets.count, ordering: .relaxed)
        if result.queued > 0 {
            queuedOffline.increment(by: result.queued)
            dirty.store(true, ordering: .relaxed)
        }
        if dropped > 0 { countDropped("queue_full", dropped) }
        return result
    }

    func countDropped(_ reason: String, _ count: Int = 1) {
        Counter(label: "switchyard_mqtt_messages_dropped_total", dimensions: [("reason", reason)]).increment(by: count)
    }

    func keepRetained(_ publish: MQTTPacket.Publish, expiresAt: UInt64?) {
        let isSystem = publish.topic.hasPrefix("$SYS/")
        let count = retained.withLockedValue { store in
            if publish.payload.readableBytes == 0 {
                store.removeValue(forKey: publish.topic)  // an empty retained message clears the topic
            } else {
                var kept = publish
                kept.dup = false
                kept.packetID = nil
                kept.properties.topicAlias = nil
                kept.properties.subscriptionIdentifiers = []
                store[publish.topic] = MQTTRetained(publish: kept, expiresAt: expiresAt)
            }
            return store.count
        }
        retainedGauge.record(count)
        if !isSystem { dirty.store(true, ordering: .relaxed) }  // $SYS figures are not kept across runs
    }

    /// Messages a client left unacknowledged on a shared subscription go to another member of
    /// the group; with none connected they stay in the leaving session (if it is kept) or are
    /// dropped (counted).
    func redistribute(_ messages: [MQTTOutbound], leaving clientID: String) {
        guard !messages.isEmpty else { return }
        var targets: [(MQTTConnectionHandler, MQTTOutbound)] = []
        var lost = 0
        let limit = options.maximumQueued
        let sets = trie.withLockedValue { trie in
            Dictionary(Set(messages.compactMap(\.shareFilter)).compactMap { f in trie.sharedSet(f).map { (f, $0) } }) { a, _ in a }
        }
        sessions.withLockedValue { table in
            for m in messages {
                if let filter = m.shareFilter, let set = sets[filter],
                    let member = table.choose(from: set, excluding: clientID, queueOffline: false),
                    case .online(let handler) = table.slots[member.clientID]
                {
                    targets.append((handler, m))
                } else if case .offline(let box) = table.slots[clientID] {
                    if box.session.enqueue(m, limit: limit) { lost += 1 }
                } else {
                    lost += 1
                }
            }
        }
        for (handler, m) in targets {
            messagesOut[Int(m.publish.qos.rawValue)].increment()
            handler.deliver(m)
        }
        if lost > 0 { countDropped("no_subscriber", lost) }
    }

    func subscribe(_ clientID: String, _ added: [(MQTTPacket.Subscription, isNew: Bool)], identifier: Int?) -> [MQTTOutbound] {
        let count = trie.withLockedValue { trie in
            for (sub, _) in added {
                trie.subscribe(
                    clientID,
                    filter: sub.filter,
                    entry: SubscriptionTrie.Entry(
                        qos: sub.qos,
                        noLocal: sub.noLocal,
                        retainAsPublished: sub.retainAsPublished,
                        identifier: identifier
                    )
                )
            }
            return trie.count
        }
        subscriptionsGauge.record(count)
        dirty.store(true, ordering: .relaxed)
        // Retained messages for the new subscriptions (retain handling 0: always, 1: if new,
        // 2: never; never for a shared subscription).
        let wanted = added.filter { sub, isNew in
            MQTTTopic.shared(sub.filter) == nil && (sub.retainHandling == .sendOnSubscribe || (sub.retainHandling == .sendIfNew && isNew))
        }
        guard !wanted.isEmpty else { return [] }
        let now = WallClock.nowNanos()
        return retained.withLockedValue { store in
            var out: [MQTTOutbound] = []
            for (topic, kept) in store {
                if let at = kept.expiresAt, at <= now { continue }
                for (sub, _) in wanted where MQTTTopic.matches(filter: sub.filter, topic: topic) {
                    var m = kept.publish
                    m.qos = min(m.qos, sub.qos)
                    m.retain = true
                    if let identifier { m.properties.subscriptionIdentifiers = [identifier] }
                    out.append(MQTTOutbound(publish: m, expiresAt: kept.expiresAt))
                    break
                }
            }
            return out
        }
    }

    func unsubscribe(_ clientID: String, _ filters: [String]) {
        guard !filters.isEmpty else { return }
        let count = trie.withLockedValue { trie in
            for f in filters { trie.unsubscribe(clientID, filter: f) }
            return trie.count
        }
        subscriptionsGauge.record(count)
        dirty.store(true, ordering: .relaxed)
    }

    // MARK: - Sessions

    /// Makes `handler` the connection of `clientID` and finds its session: kept from an
    /// earlier connection (resumed unless `cleanStart`, expired, or another device's), or
    /// handed over by a connection it takes over. Completes on `loop`.
    func attach(
        _ handler: MQTTConnectionHandler,
        clientID: String,
        cleanStart: Bool,
        identity: DeviceIdentity?,
        on loop: any EventLoop
    ) -> EventLoopFuture<MQTTSession?> {
        delayedWills.withLockedValue { $0.removeValue(forKey: clientID) }?.cancel()  // back in time: no will
        let previous = sessions.withLockedValue { table in
            table.set(clientID, .online(handler))
        }
        offlineGauge.record(sessions.withLockedValue { $0.offlineCount })
        dirty.store(true, ordering: .relaxed)
        let resume: @Sendable (MQTTSession?) -> MQTTSession? = { [self] session in
            guard let session else { return nil }
            if cleanStart || session.identity != identity || session.hasExpired(now: WallClock.nowNanos()) {
                unsubscribe(clientID, Array(session.subscriptions.keys))
                if !session.queued.isEmpty || !session.inflight.isEmpty {
                    countDropped("session_ended", session.queued.count + session.inflight.count)
                }
                return nil
            }
            return session
        }
        switch previous {
        case nil: return loop.makeSucceededFuture(nil)
        case .offline(let box): return loop.makeSucceededFuture(resume(box.session))
        case .online(let old):
            Counter(label: "switchyard_mqtt_sessions_taken_over_total").increment()
            return old.handOver().hop(to: loop).map(resume)
        }
    }

    /// A connection ended. If it still owned its client id, its session is kept (when it has
    /// an expiry) or ends with its subscriptions; messages it got through shared
    /// subscriptions and did not acknowledge go to other members.
    func detach(_ handler: MQTTConnectionHandler, clientID: String, session: MQTTSession?, filters: [String], shared: [MQTTOutbound]) {
        let wasCurrent = sessions.withLockedValue { table in
            guard case .online(let current) = table.slots[clientID], current === handler else { return false }
            table.set(clientID, session.map { .offline(SessionBox($0)) })
            return true
        }
        guard wasCurrent else { return }  // taken over: the new connection has the session
        offlineGauge.record(sessions.withLockedValue { $0.offlineCount })
        dirty.store(true, ordering: .relaxed)
        if session == nil { unsubscribe(clientID, filters) }
        redistribute(shared, leaving: clientID)
    }

    /// Ends sessions whose expiry interval has passed since their client left.
    func expireSessions(now: UInt64) {
        let expired = sessions.withLockedValue { table in
            var expired: [MQTTSession] = []
            for (id, slot) in table.slots {
                guard case .offline(let box) = slot, box.session.hasExpired(now: now) else { continue }
                expired.append(box.session)
                table.set(id, nil)
            }
            return expired
        }
        guard !expired.isEmpty else { return }
        for s in expired {
            unsubscribe(s.clientID, Array(s.subscriptions.keys))
            let waiting = s.queued.count + s.inflight.count
            if waiting > 0 { countDropped("session_expired", waiting) }
        }
        Counter(label: "switchyard_mqtt_sessions_expired_total").increment(by: expired.count)
        offlineGauge.record(sessions.withLockedValue { $0.offlineCount })
        dirty.store(true, ordering: .relaxed)
        logger.debug("sessions expired", metadata: ["count": "\(expired.count)"])
    }

    /// The will of a client that left, after its Will Delay Interval (cancelled if the client
    /// comes back first).
    func scheduleWill(_ clientID: String, after seconds: UInt32, loop: any EventLoop, publish: @escaping @Sendable () -> Void) {
        let task = loop.scheduleTask(in: .seconds(Int64(seconds))) { [delayedWills] in
            guard delayedWills.withLockedValue({ $0.removeValue(forKey: clientID) }) != nil else { return }
            publish()
        }
        delayedWills.withLockedValue { $0[clientID] = task }
    }

    // MARK: - Keeping state between runs

    /// Loads sessions and retained messages saved by the last run (a damaged file is set
    /// aside with an error, never a crash).
    func restore() throws {
        guard let statePath else { return }
        let contents: MQTTStateFile.Contents
        do {
            guard let loaded = try MQTTStateFile.load(path: statePath) else { return }
            contents = loaded
        } catch {
            let aside = statePath + ".damaged-\(WallClock.nowNanos() / 1_000_000_000)"
            _ = rename(statePath, aside)
            logger.error(
                "MQTT state file unreadable: starting without sessions and retained messages",
                metadata: ["error": "\(error)", "moved_to": "\(aside)"]
            )
            return
        }
        let now = WallClock.nowNanos()
        var kept = 0
        for r in contents.retained where r.expiresAt.map({ $0 > now }) ?? true {
            retained.withLockedValue { $0[r.publish.topic] = r }
        }
        for s in contents.sessions where !s.hasExpired(now: now) {
            kept += 1
            sessions.withLockedValue { _ = $0.set(s.clientID, .offline(SessionBox(s))) }
            trie.withLockedValue { trie in
                for (filter, sub) in s.subscriptions {
                    let entry = SubscriptionTrie.Entry(
                        qos: sub.qos,
                        noLocal: sub.noLocal,
                        retainAsPublished: sub.retainAsPublished,
                        identifier: s.identifiers[filter]
                    )
                    trie.subscribe(s.clientID, filter: filter, entry: entry)
                }
            }
        }
        retainedGauge.record(retained.withLockedValue { $0.count })
        subscriptionsGauge.record(trie.withLockedValue { $0.count })
        offlineGauge.record(kept)
        logger.info("MQTT state restored", metadata: ["sessions": "\(kept)", "retained": "\(retained.withLockedValue { $0.count })"])
    }

    /// Writes every kept session (connected ones as they are now) and retained message.
    func save() async {
        guard let statePath else { return }
        let (offline, online) = sessions.withLockedValue { table in
            (table.slots.values.compactMap { if case .offline(let b) = $0 { b.session } else { nil } }, table.online)
        }
        var contents = MQTTStateFile.Contents(sessions: offline)
        let now = WallClock.nowNanos()
        for handler in online {
            if let s = try? await handler.currentSession(now: now).get() { contents.sessions.append(s) }
        }
        contents.retained = retained.withLockedValue { $0.values.filter { !$0.publish.topic.hasPrefix("$SYS/") } }
        do {
            try MQTTStateFile.save(contents, path: statePath)
        } catch {
            dirty.store(true, ordering: .relaxed)  // try again next time
            logger.error("cannot save the MQTT sessions and retained messages", metadata: ["error": "\(error)"])
        }
    }
}

/// Sessions by client id, behind the server's lock.
struct SessionTable {
    enum Slot {
        case online(MQTTConnectionHandler)
        case offline(SessionBox)
    }

    private(set) var slots: [String: Slot] = [:]
    /// Kept sessions whose client is away (counted as slots change: read on every connect).
    private(set) var offlineCount = 0
    /// Round-robin position per shared subscription.
    var cursors: [String: Int] = [:]

    var online: [MQTTConnectionHandler] {
        slots.values.compactMap { if case .online(let h) = $0 { h } else { nil } }
    }

    /// Puts (or, with nil, removes) a client id's slot; returns the one it replaces.
    @discardableResult
    mutating func set(_ clientID: String, _ slot: Slot?) -> Slot? {
        let old = if let slot { slots.updateValue(slot, forKey: clientID) } else { slots.removeValue(forKey: clientID) }
        if case .offline = old { offlineCount -= 1 }
        if case .offline = slot { offlineCount += 1 }
        return old
    }

    /// The next member of a shared subscription in turn: a connected one, else (when
    /// `queueOffline`) one whose session is kept.
    mutating func choose(
        from set: SubscriptionTrie.SharedSet,
        excluding: String?,
        queueOffline: Bool
    ) -> SubscriptionTrie.SharedSet.Member? {
        let n = set.members.count
        guard n > 0 else { return nil }
        let start = cursors[set.filter, default: 0]
        var fallback: SubscriptionTrie.SharedSet.Member?
        for i in 0..<n {
            let member = set.members[(start + i) % n]
            guard member.clientID != excluding else { continue }
            switch slots[member.clientID] {
            case .online:
                cursors[set.filter] = (start + i + 1) % n
                return member
            case .offline:
                if fallback == nil { fallback = member }
            case nil: continue
            }
        }
        guard queueOffline else { return nil }
        cursors[set.filter] = (start + 1) % n
        return fallback
    }
}

/// A kept session, changed in place under the table's lock.
final class SessionBox: @unchecked Sendable {
    var session: MQTTSession
    init(_ session: MQTTSession) { self.session = session }
}

public struct MQTTServerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// One connection: decodes its packets, feeds the machine and performs its actions.
/// `@unchecked Sendable`: its state is touched only on the channel's event loop (other
/// threads hop there first, through `inbox` for messages).
///
/// Per read burst, not per packet: packets are decoded here from the bytes read (no
/// `ByteToMessageHandler` hop, which boxes each packet), the packets to send are encoded into
/// one buffer that is written when the burst is flushed, and messages from other event loops
/// arrive in one task per burst.
final class MQTTConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let server: MQTTServer
    let loop: any EventLoop
    var machine: MQTTConnectionMachine
    var context: ChannelHandlerContext?
    var keepAliveTimer: RepeatedTask?
    var closed = false
    /// Why the server closed the connection (for the disconnect event).
    var closeReason: String?
    var decoder: MQTTDecoder
    /// Bytes of a packet not yet whole.
    var partial: ByteBuffer?
    /// After a protocol error nothing more is decoded.
    var decodeFailed = false
    /// Packets encoded since the last write, written as one buffer.
    var outbound: ByteBuffer?
    /// Messages for this client from other event loops, taken in one task.
    let inbox = NIOLockedValueBox<[MQTTOutbound]>([])

    init(server: MQTTServer, loop: any EventLoop, remoteAddress: SocketAddress?) {
        self.server = server
        self.loop = loop
        machine = MQTTConnectionMachine(options: server.options, remoteAddress: remoteAddress)
        decoder = MQTTDecoder(maximumPacketSize: server.options.maximumPacketSize)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The keep-alive is checked every second; a CONNECT must come within 10 s.
        let connectDeadline = SystemMonotonicClock().nowNanos() + 10_000_000_000
        keepAliveTimer = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
            guard let self, let context = self.context else { return }
            let now = SystemMonotonicClock().nowNanos()
            if self.machine.clientID == nil, now > connectDeadline {
                self.perform(self.machine.decodeFailed(MQTTWireError(.maximumConnectTime, "no CONNECT within 10 s")), context: context)
            } else {
                self.perform(self.machine.tick(now: now), context: context)
            }
            if self.outbound != nil { self.flush(context) }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard !decodeFailed else { return }
        server.stats.received(bytes: bytes.readableBytes)
        if var earlier = partial {
            partial = nil
            if earlier.readerIndex > 4096 { earlier.discardReadBytes() }
            earlier.writeBuffer(&bytes)
            bytes = earlier
        }
        let now = SystemMonotonicClock().nowNanos()
        while !closed {
            let packet: MQTTPacket?
            do {
                packet = try decoder.decode(&bytes)
            } catch {
                decodeFailed = true
                protocolError(error, context: context)
                return
            }
            guard let packet else { break }
            if case .publish(let p) = packet { server.stats.publishReceived(qos: p.qos) }
            perform(machine.received(packet, now: now), context: context)
        }
        if bytes.readableBytes > 0, !closed { partial = bytes }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context)
    }

    /// Writes the packets encoded so far (without flushing).
    func writeOutbound(_ context: ChannelHandlerContext) {
        guard let buffer = outbound else { return }
        outbound = nil
        server.stats.sent(bytes: buffer.readableBytes)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    func flush(_ context: ChannelHandlerContext) {
        writeOutbound(context)
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        protocolError((error as? MQTTWireError) ?? MQTTWireError(.unspecifiedError, "\(error)"), context: context)
    }

    func protocolError(_ wire: MQTTWireError, context: ChannelHandlerContext) {
        Counter(label: "switchyard_mqtt_protocol_errors_total", dimensions: [("reason", "\(wire.code)")]).increment()
        server.logger.debug("protocol error", metadata: ["error": "\(wire)", "client": "\(machine.clientID ?? "-")"])
        perform(machine.decodeFailed(wire), context: context)
        flush(context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        keepAliveTimer?.cancel()
        if let event = machine.connectionEvent("disconnected", reason: closeReason ?? "connection lost") {
            _ = server.sink.submit(event, on: context.eventLoop)
        }
        perform(machine.connectionClosed(), context: context)
        if let id = machine.clientID, machine.wasAttached {
            let shared = machine.takeSharedMessages()
            let session = machine.session(endedAt: WallClock.nowNanos())
            server.detach(self, clientID: id, session: session, filters: Array(machine.subscriptions.keys), shared: shared)
        }
        self.context = nil
        context.fireChannelInactive()
    }

    /// From another connection's loop: this client id connected again. This connection ends
    /// and hands over its session (one that ends with the connection comes back with expiry
    /// 0, so that its subscriptions are removed).
    func handOver() -> EventLoopFuture<MQTTSession?> {
        loop.submit {
            if let context = self.context {
                self.perform(self.machine.takenOver(), context: context)
                self.flush(context)
            }
            return self.machine.session(endedAt: WallClock.nowNanos(), evenIfEnding: true)
        }
    }

    /// The session as it is now (for saving), nil when it ends with the connection.
    func currentSession(now: UInt64) -> EventLoopFuture<MQTTSession?> {
        loop.submit { self.machine.session(endedAt: now) }
    }

    /// From any loop: a message for this client. Encoded at once (on this loop) or queued in
    /// the inbox, taken by one task for all that arrive meanwhile (other loops); flushed once
    /// for all the messages delivered in the same turn of the loop (one write for a burst).
    func deliver(_ message: MQTTOutbound) {
        if loop.inEventLoop {
            hand(message)
            flushSoon()
            return
        }
        let first = inbox.withLockedValue { queued in
            queued.append(message)
            return queued.count == 1
        }
        if first {
            loop.execute {
                let messages = self.inbox.withLockedValue { queued in
                    defer { queued.removeAll(keepingCapacity: true) }
                    return queued
                }
                for message in messages { self.hand(message) }
                if let context = self.context { self.flush(context) }
            }
        }
    }

    /// On this loop: sends the message, or (closed meanwhile) gives a shared subscription's
    /// message to another member.
    private func hand(_ message: MQTTOutbound) {
        guard let context else {
            if message.shareFilter != nil, let id = machine.clientID { server.redistribute([message], leaving: id) }
            return
        }
        perform(machine.deliver(message), context: context)
    }

    var flushScheduled = false

    func flushSoon() {
        guard !flushScheduled else { return }
        flushScheduled = true
        loop.execute {
            self.flushScheduled = false
            if let context = self.context { self.flush(context) }
        }
    }

    func shutDown() {
        guard let context else { return }
        context.eventLoop.execute {
            guard let context = self.context else { return }
            self.perform(self.machine.serverShuttingDown(), context: context)
            self.flush(context)
        }
    }

    func perform(_ actions: [MQTTConnectionMachine.Action], context: ChannelHandlerContext) {
        var retainedForNewSubscriptions: [MQTTOutbound] = []
        defer {
            for message in retainedForNewSubscriptions { perform(machine.deliver(message), context: context) }
        }
        for action in actions {
            switch action {
            case .send(let packet):
                guard let version = machine.version ?? (packet.kind == .connack ? .v3_1_1 : nil) else { continue }
                if outbound == nil { outbound = context.channel.allocator.buffer(capacity: 1024) }
                let start = outbound!.writerIndex
                do {
                    try MQTTEncoder.encode(packet, version: version, into: &outbound!)
                } catch {
                    outbound!.moveWriterIndex(to: start)  // nothing of a packet that could not be encoded
                    server.logger.error("cannot encode a packet", metadata: ["error": "\(error)"])
                }
                if outbound!.readableBytes >= 65536 { writeOutbound(context) }  // a long burst goes in parts
            case .attach(let clientID, let cleanStart):
                Counter(label: "switchyard_mqtt_connects_total", dimensions: [("result", "accepted")]).increment()
                server.attach(self, clientID: clientID, cleanStart: cleanStart, identity: machine.identity, on: loop).whenComplete { result in
                    guard let context = self.context else { return }
                    let session = (try? result.get()) ?? nil
                    self.perform(self.machine.attached(session, now: SystemMonotonicClock().nowNanos()), context: context)
                    self.flush(context)
                    if let event = self.machine.connectionEvent("connected") { _ = self.server.sink.submit(event, on: self.loop) }
                }
            case .submit(let token, let publish):
                let loop = context.eventLoop
                let publisher = machine.clientID
                server.completeCommand(publish)
                let identity = machine.identity
                if server.sink.takesBrokerOnly(
                    channel: server.options.channelName,
                    topic: publish.topic,
                    product: identity?.product,
                    device: identity?.device
                ) {
                    server.fanOut(publish, from: publisher)
                    perform(machine.submitted(token: token, result: .accepted), context: context)
                    continue
                }
                let envelope = machine.envelope(for: publish)
                // Subscribers get what the pipeline took (filters apply to them too), once; then
                // the publisher's acknowledgement.
                let finish: @Sendable (SubmitResult) -> Void = { outcome in
                    if case .accepted = outcome { self.server.fanOut(publish, from: publisher) }
                    guard let context = self.context else { return }
                    self.perform(self.machine.submitted(token: token, result: outcome), context: context)
                }
                switch server.sink.submitting(envelope, on: loop) {
                case .now(let outcome):
                    finish(outcome)  // decided at once: answered in this read, flushed at its end
                case .later(let future):
                    future.hop(to: loop).whenComplete { result in
                        switch result {
                        case .success(let outcome): finish(outcome)
                        case .failure(let error):
                            finish(.rejected(Rejection(filter: "mqtt", reason: "internal", status: 500, message: "\(error)")))
                        }
                        if let context = self.context { self.flush(context) }
                    }
                }
            case .subscribe(let added, let identifier):
                guard let clientID = machine.clientID else { continue }
                retainedForNewSubscriptions += server.subscribe(clientID, added, identifier: identifier)
            case .unsubscribe(let filters):
                if let clientID = machine.clientID { server.unsubscribe(clientID, filters) }
            case .dropOutbound(let reason):
                server.countDropped(reason)
            case .publishWill(let will, let clientID):
                // v5 Will Delay Interval: the will waits (at most as long as the session) and is
                // cancelled if the client comes back.
                // The will is a message of the device like any other: filtered, journaled, routed,
                // and sent to subscribers once accepted. Will Delay Interval belongs to the will,
                // not to the message it becomes.
                var properties = will.properties
                properties.willDelayInterval = nil
                let p = MQTTPacket.Publish(topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, properties: properties)
                var willEnvelope = machine.envelope(for: p)
                willEnvelope.headers.append(HeaderField("x-mqtt-will", clientID))
                let envelope = willEnvelope
                let server = self.server
                let loop = self.loop
                let send = { @Sendable in
                    server.sink.submit(envelope, on: loop).whenSuccess { result in
                        if case .accepted = result { server.fanOut(p, from: clientID) }
                    }
                }
                // v5 Will Delay Interval: the will waits (no longer than the session lasts) and
                // is cancelled if the client comes back first.
                let delay = min(will.properties.willDelayInterval ?? 0, machine.sessionExpirySeconds)
                if delay > 0 { server.scheduleWill(clientID, after: delay, loop: loop, publish: send) } else { send() }
            case .countRefused(let reason):
                server.onRefused(reason)
            case .close(let reason):
                guard !closed else { continue }
                closed = true
                closeReason = reason
                server.logger.debug("closing", metadata: ["client": "\(machine.clientID ?? "-")", "reason": "\(reason)"])
                writeOutbound(context)
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: nil)
                // Half-close: FIN after what was written; what the client still sends is read and
                // dropped (a full close with unread input would be a reset, and the client could
                // lose the DISCONNECT telling it why). Closed for good when it closes, or in 2 s.
                let channel = context.channel
                context.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
                context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
            }
        }
    }
}
