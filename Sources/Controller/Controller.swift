// Controller: the filter chain, rate limiters, classifier and lane assignment that every
// channel runs on an envelope before it is accepted.
import NIOCore
public import SwitchyardCore

/// An immutable, compiled controller for one configuration. Filter state (token buckets,
/// dedup ids) lives in shared objects that a reload with the same filter keeps.
public final class Controller: Sendable {
    enum Filter: Sendable {
        case source(allowChannels: Set<String>, denyChannels: Set<String>, allow: [CIDR], deny: [CIDR])
        case maxPayload(Int)
        case products(allow: Set<String>, deny: Set<String>)
        case devices(allow: Set<String>, deny: Set<String>)
        case rateLimit(SwitchyardConfiguration.RateScope, KeyedRateLimiter)
        case dedup(DuplicateFilter)
    }

    struct TagRule: Sendable {
        var topic: TopicRegex?
        var products: Set<String>
        var devices: Set<String>
        var field: SwitchyardConfiguration.FieldMatch?
        var set: [String: String]
    }

    let filterRules: [SwitchyardConfiguration.FilterRule]
    let filters: [Filter]
    let tagRules: [TagRule]
    let lanes: [SwitchyardConfiguration.LaneRule]
    let devicePatterns: [TopicPattern]
    let clock: any MonotonicClock

    /// Compiles `config`. Filters whose rule is unchanged from `previous` keep their state.
    /// Throws with the key path of the first problem (the config loader reports them all first).
    public init(config: SwitchyardConfiguration, clock: any MonotonicClock, previous: Controller? = nil) throws {
        self.clock = clock
        filterRules = config.filters
        var filters: [Filter] = []
        for (index, rule) in config.filters.enumerated() {
            let reused = previous.flatMap { prev in
                prev.filterRules.firstIndex(of: rule).map { prev.filters[$0] }
            }
            do {
                filters.append(try reused ?? Controller.compile(rule, clock: clock))
            } catch {
                throw KeyPathError(path: "filters[\(index)]", message: "\(error)")
            }
        }
        self.filters = filters
        tagRules = try config.tags.enumerated().map { index, rule in
            do {
                return TagRule(
                    topic: try rule.topic.map { try TopicRegex($0) },
                    products: Set(rule.products),
                    devices: Set(rule.devices),
                    field: rule.field,
                    set: rule.set
                )
            } catch {
                throw KeyPathError(path: "tags[\(index)].match.topic", message: "\(error)")
            }
        }
        lanes = config.lanes
        devicePatterns = try config.channels.devicePatterns.enumerated().map { index, text in
            do { return try TopicPattern(text) } catch {
                throw KeyPathError(path: "channels.device_patterns[\(index)]", message: "\(error)")
            }
        }
    }

    static func compile(_ rule: SwitchyardConfiguration.FilterRule, clock: any MonotonicClock) throws -> Filter {
        switch rule {
        case .source(let allowChannels, let denyChannels, let allowCIDRs, let denyCIDRs):
            return .source(
                allowChannels: Set(allowChannels),
                denyChannels: Set(denyChannels),
                allow: try allowCIDRs.map { try CIDR($0) },
                deny: try denyCIDRs.map { try CIDR($0) }
            )
        case .maxPayload(let bytes): return .maxPayload(bytes)
        case .products(let allow, let deny): return .products(allow: Set(allow), deny: Set(deny))
        case .devices(let allow, let deny): return .devices(allow: Set(allow), deny: Set(deny))
        case .rateLimit(let scope, let rate, let burst, let maxKeys):
            return .rateLimit(scope, KeyedRateLimiter(rate: rate, burst: burst, maxKeys: maxKeys, clock: clock))
        case .dedup(let window, let maxEntries):
            return .dedup(DuplicateFilter(windowSeconds: window, maxEntries: maxEntries, clock: clock))
        }
    }

    // MARK: - Identity

    /// No filter configured: `admit` refuses nothing (tags and lanes aside).
    public var refusesNothing: Bool { filters.isEmpty }

    /// Product and device named by the first matching device pattern.
    public func identify(topic: String) -> (product: String?, device: String?) {
        for pattern in devicePatterns {
            if let identity = pattern.identity(topic) { return identity }
        }
        return (nil, nil)
    }

    // MARK: - Admission

    /// Runs the filter chain; when it passes, sets tags and lane on `envelope`.
    public func admit(_ envelope: inout Envelope) -> Admission {
        var dedupKey: (DuplicateFilter, String)?
        for (index, filter) in filters.enumerated() {
            let (verdict, rejection) = evaluate(filter, index: index, envelope, dryRun: false)
            if case .dedup(let f) = filter, envelope.idFromSender { dedupKey = (f, dedupKeyFor(envelope)) }
            if !verdict.passed {
                if rejection?.reason == "duplicate" { return .duplicate }
                if let (f, key) = dedupKey { f.remove(key) }
                return .rejected(rejection!)
            }
        }
        classify(&envelope, recording: false)
        envelope.lane = assignLane(envelope, explain: false).lane
        return .accepted
    }

    /// The same decisions as `admit` without consuming tokens or recording ids.
    public func explain(_ envelope: Envelope) -> ControllerExplanation {
        var verdicts: [FilterVerdict] = []
        var admission = "accepted"
        for (index, filter) in filters.enumerated() {
            let (verdict, rejection) = evaluate(filter, index: index, envelope, dryRun: true)
            verdicts.append(verdict)
            if !verdict.passed {
                admission = rejection?.reason == "duplicate" ? "duplicate" : "rejected"
                break
            }
        }
        var classified = envelope
        let matched = classify(&classified)
        let (lane, why) = assignLane(classified)
        return ControllerExplanation(
            filters: verdicts,
            admission: admission,
            tags: classified.tags,
            matchedTagRules: matched,
            lane: lane,
            laneReason: why
        )
    }

    private func dedupKeyFor(_ envelope: Envelope) -> String {
        "\(envelope.device ?? "")\u{0}\(envelope.id)"
    }

    private static let passed = FilterVerdict(filter: "", passed: true, reason: nil, detail: "")

    /// `dryRun` (explain) consumes nothing and describes each pass; otherwise only
    /// rejections are described, so the hot path builds no strings.
    private func evaluate(_ filter: Filter, index: Int, _ envelope: Envelope, dryRun: Bool) -> (FilterVerdict, Rejection?) {
        var name: String { filterRules[index].kind }  // built only for a verdict that names it
        func pass(_ detail: @autoclosure () -> String) -> (FilterVerdict, Rejection?) {
            guard dryRun else { return (Controller.passed, nil) }
            return (FilterVerdict(filter: name, passed: true, reason: nil, detail: detail()), nil)
        }
        func reject(_ reason: String, _ status: Int, _ message: String, retryAfter: Double? = nil) -> (FilterVerdict, Rejection?) {
            (
                FilterVerdict(filter: name, passed: false, reason: reason, detail: message),
                Rejection(filter: name, reason: reason, status: status, message: message, retryAfterSeconds: retryAfter)
            )
        }
        switch filter {
        case .source(let allowChannels, let denyChannels, let allow, let deny):
            if denyChannels.contains(envelope.channel) || (!allowChannels.isEmpty && !allowChannels.contains(envelope.channel)) {
                return reject("channel_denied", 403, "channel \"\(envelope.channel)\" is not allowed")
            }
            if let address = envelope.clientAddress {
                if let hit = deny.first(where: { $0.contains(address) }) {
                    return reject("address_denied", 403, "client address \(address.ipAddress ?? "?") is denied by \(hit)")
                }
                if !allow.isEmpty && !allow.contains(where: { $0.contains(address) }) {
                    return reject("address_denied", 403, "client address \(address.ipAddress ?? "?") is not in the allowed networks")
                }
            } else if !allow.isEmpty {
                return reject("address_denied", 403, "client address unknown and an address allow-list is set")
            }
            return pass("channel and client address allowed")
        case .maxPayload(let limit):
            let size = envelope.payload.readableBytes
            if size > limit { return reject("payload_too_large", 413, "payload is \(size) bytes; the limit is \(limit)") }
            return pass("\(size) ≤ \(limit) bytes")
        case .products(let allow, let deny):
            return listCheck(envelope.product, what: "product", allow: allow, deny: deny, pass: pass, reject: reject)
        case .devices(let allow, let deny):
            return listCheck(envelope.device, what: "device", allow: allow, deny: deny, pass: pass, reject: reject)
        case .rateLimit(let scope, let limiter):
            let key: String
            switch scope {
            case .device: key = envelope.device ?? "addr:\(envelope.clientAddress?.ipAddress ?? "unknown")"
            case .product: key = envelope.product ?? "(unknown)"
            case .channel: key = envelope.channel
            case .global: key = "*"
            }
            let wait = limiter.acquire(key, consume: !dryRun)
            if wait > 0 {
                return reject(
                    "rate_limited",
                    429,
                    "\(scope.rawValue) \"\(key)\" exceeds \(formatted(limiter.rate))/s (burst \(formatted(limiter.burst)))",
                    retryAfter: wait
                )
            }
            return pass("\(scope.rawValue) \"\(key)\" within \(formatted(limiter.rate))/s")
        case .dedup(let f):
            guard envelope.idFromSender else { return pass("id generated here; not checked") }
            if !f.insertIfNew(dedupKeyFor(envelope), record: !dryRun) {
                return reject("duplicate", 202, "message id \"\(envelope.id)\" was seen within the dedup window")
            }
            return pass("message id \"\(envelope.id)\" not seen before")
        }
    }

    private func listCheck(
        _ value: String?,
        what: String,
        allow: Set<String>,
        deny: Set<String>,
        pass: (@autoclosure () -> String) -> (FilterVerdict, Rejection?),
        reject: (String, Int, String, Double?) -> (FilterVerdict, Rejection?)
    ) -> (FilterVerdict, Rejection?) {
        if let value, deny.contains(value) { return reject("\(what)_denied", 403, "\(what) \"\(value)\" is on the deny list", nil) }
        if !allow.isEmpty {
            guard let value else { return reject("\(what)_denied", 403, "no \(what) known and a \(what) allow-list is set", nil) }
            if !allow.contains(value) { return reject("\(what)_denied", 403, "\(what) \"\(value)\" is not on the allow list", nil) }
        }
        return pass("\(what) \"\(value ?? "-")\" allowed")
    }

    // MARK: - Classification and lanes

    /// Applies the tag rules in order (later rules overwrite earlier tags); returns the indices that matched.
    @discardableResult
    /// Sets the tags of every matching rule; returns the matching rules' indexes when
    /// `recording` (explain), nothing otherwise (no array per message).
    func classify(_ envelope: inout Envelope, recording: Bool = true) -> [Int] {
        var matched: [Int] = []
        for (index, rule) in tagRules.enumerated() {
            if let topic = rule.topic, !topic.matches(envelope.topic) { continue }
            if !rule.products.isEmpty && !rule.products.contains(envelope.product ?? "\u{0}") { continue }
            if !rule.devices.isEmpty && !rule.devices.contains(envelope.device ?? "\u{0}") { continue }
            if let field = rule.field {
                let value = envelope.payload.withUnsafeReadableBytes { JSONField.value(of: field.name, in: $0) }
                guard let value else { continue }
                if let expected = field.equals, value != expected { continue }
            }
            for (k, v) in rule.set { envelope.tags[k] = v }
            if recording { matched.append(index) }
        }
        return matched
    }

    /// First matching lane in declared order, with the reason; nil is baseline.
    public func assignLane(_ envelope: Envelope, explain: Bool = true) -> (lane: String?, why: String) {
        for lane in lanes {
            if let device = envelope.device, lane.devices.contains(device) {
                if !explain { return (lane.name, "") }
                return (lane.name, "device \"\(device)\" is on the allow-list of lane \"\(lane.name)\"")
            }
            if let product = envelope.product, lane.products.contains(product) {
                if !explain { return (lane.name, "") }
                return (lane.name, "product \"\(product)\" is listed by lane \"\(lane.name)\"")
            }
            if !lane.tags.isEmpty && lane.tags.allSatisfy({ envelope.tags[$0.key] == $0.value }) {
                if !explain { return (lane.name, "") }
                return (
                    lane.name,
                    "tags \(lane.tags.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")) match lane \"\(lane.name)\""
                )
            }
            if let percentage = lane.percentage {
                let key: String?
                switch lane.hashKey {
                case .device: key = envelope.device
                case .product: key = envelope.product
                case .tag(let name): key = envelope.tags[name]
                case .header, .cookie, .param, .claim: key = nil  // request keys: the gateway's
                }
                if let key {
                    let bucket = StableHash.basisPoints(namespace: lane.name, key: key)
                    let threshold = Int((percentage * 100).rounded())
                    if bucket < threshold {
                        if !explain { return (lane.name, "") }
                        return (
                            lane.name,
                            "bucket \(bucket) of key \"\(key)\" is below \(threshold) (\(formatted(percentage)) %) of lane \"\(lane.name)\""
                        )
                    }
                }
            }
        }
        return (nil, lanes.isEmpty ? "no lanes configured: baseline" : "no lane entry rule matched: baseline")
    }
}

func formatted(_ value: Double) -> String {
    value == value.rounded() ? String(Int(value)) : String(value)
}
