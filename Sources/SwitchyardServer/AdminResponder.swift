import Foundation
import Gateway
import HTTPIngress
import NIOCore
import NIOHTTP1
import Router
import SwitchyardConfig
import SwitchyardCore
import Telemetry

/// The admin API on its own port. `/healthz`, `/readyz` and `/metrics` are open (unless
/// `telemetry.metrics_require_token`); everything under `/admin/` needs the bearer token.
struct AdminResponder: HTTPResponder {
    let app: SwitchyardApplication
    let token: String

    func respond(to request: IncomingRequest, on loop: any EventLoop) -> EventLoopFuture<OutgoingResponse> {
        if request.path.hasPrefix("/v1/devices/") {
            if let denied = authorize(request) { return loop.makeSucceededFuture(denied) }
            return command(request, on: loop)
        }
        return loop.makeSucceededFuture(handle(request))
    }

    func handle(_ request: IncomingRequest) -> OutgoingResponse {
        let path = String(request.path)
        let snapshot = app.pipeline.snapshot
        switch (request.method, path) {
        case (.GET, "/healthz"):
            return .json(.ok, "{\"status\":\"ok\"}")
        case (.GET, "/readyz"):
            guard app.isReady else { return .error(.serviceUnavailable, "not_ready", "listeners are not bound yet") }
            if let failure = app.journalWriteFailure {
                return .error(.serviceUnavailable, "journal_failing", "the journal cannot write (\(failure)); messages are refused")
            }
            return .json(.ok, "{\"status\":\"ready\"}")
        case (.GET, "/metrics"):
            if snapshot.configuration.telemetry.metricsRequireToken, let denied = authorize(request) { return denied }
            return .text(.ok, app.metricsText(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        default:
            break
        }
        guard path.hasPrefix("/admin/") else { return .error(.notFound, "not_found", "no such endpoint: \(path)") }
        if let denied = authorize(request) { return denied }
        if let devices = handleDevices(request, path: path) { return devices }
        if let registry = handleRegistry(request, path: path) { return registry }
        if let instances = handleInstances(request, path: path) { return instances }
        switch (request.method, path) {
        case (.GET, "/admin/routes"):
            return encode(snapshot.router.table.routes.map { RouteView($0) })
        case (.GET, "/admin/lanes"):
            return encode(LanesView(snapshot))
        case (.GET, "/admin/circuits"):
            return encode(snapshot.router.circuits)
        case (.GET, "/admin/dead-letters"):
            let q = request.query
            guard let limit = Int(q["limit"] ?? "100"), limit > 0 else {
                return .error(.badRequest, "bad_query", "limit must be a positive whole number")
            }
            let filter: DeadLetterList.Filter
            switch DeadLetterQuery(route: q["route"], reason: q["reason"], id: q["id"], since: q["since"], until: q["until"]).filter() {
            case .success(let f): filter = f
            case .failure(let problem): return .error(.badRequest, "bad_query", problem.message)
            }
            let letters = app.deadLetters.list(filter, limit: limit)
            return encode(
                DeadLettersView(total: app.deadLetters.count, evicted: app.deadLetters.evicted, entries: letters.map { DeadLetterView($0) })
            )
        case (.POST, "/admin/dead-letters/replay"), (.POST, "/admin/dead-letters/purge"):
            let query: DeadLetterQuery
            do {
                query = try JSONDecoder().decode(DeadLetterQuery.self, from: Data(request.body.readableBytesView))
            } catch {
                return .error(.badRequest, "bad_request", "expected JSON {keys?, id?, route?, reason?, since?, until?, all?}: \(error)")
            }
            guard query.selectsSomething else {
                return .error(.badRequest, "bad_request", "name what to select (keys, id, route, reason, since, until) or send \"all\": true")
            }
            let filter: DeadLetterList.Filter
            switch query.filter() {
            case .success(let f): filter = f
            case .failure(let problem): return .error(.badRequest, "bad_request", problem.message)
            }
            if path.hasSuffix("/replay") {
                return .json(.ok, "{\"replayed\":\(app.replayDeadLetters(filter))}")
            }
            return .json(.ok, "{\"purged\":\(app.purgeDeadLetters(filter))}")
        case (.GET, _) where path.hasPrefix("/admin/dead-letters/"):
            guard let key = UInt64(path.dropFirst("/admin/dead-letters/".count)),
                let letter = app.deadLetters.list(DeadLetterList.Filter(keys: [key]), limit: 1).first
            else {
                return .error(.notFound, "not_found", "no dead letter with key \(path.dropFirst("/admin/dead-letters/".count))")
            }
            return encode(DeadLetterView(letter, full: true))
        case (.POST, "/admin/explain"):
            if let described = try? JSONDecoder().decode(HTTPRequestDescription.self, from: Data(request.body.readableBytesView)) {
                let r = described.request
                var headers = (r.headers ?? [:]).map { ($0.key.lowercased(), $0.value) }
                if !headers.contains(where: { $0.0 == "host" }) { headers.append(("host", r.host ?? "localhost")) }
                let uri = r.uri ?? r.path ?? "/"
                guard uri.hasPrefix("/") else { return .error(.badRequest, "bad_request", "request.uri must start with \"/\"") }
                return encode(snapshot.gateway.explain(method: r.method ?? "GET", uri: uri, headers: headers, client: r.client))
            }
            let explainRequest: ExplainRequest
            do {
                explainRequest = try JSONDecoder().decode(ExplainRequest.self, from: Data(request.body.readableBytesView))
            } catch {
                return .error(
                    .badRequest,
                    "bad_request",
                    "expected JSON {topic, device?, product?, headers?, payload?} (a message) or {request: {method?, uri, host?, headers?, client?}}: \(error)"
                )
            }
            return encode(Explainer.explain(explainRequest, snapshot: snapshot))
        case (.POST, "/admin/reload"):
            switch app.reload(reason: "admin API") {
            case .success: return .json(.ok, "{\"status\":\"reloaded\"}")
            case .failure(let errors):
                return .error(.unprocessableEntity, "invalid_config", errors.description)
            }
        case (_, "/admin/routes"), (_, "/admin/lanes"), (_, "/admin/circuits"), (_, "/admin/dead-letters"), (_, "/admin/explain"),
            (_, "/admin/reload"),
            (_, "/admin/dead-letters/replay"), (_, "/admin/dead-letters/purge"):
            return .error(.methodNotAllowed, "method_not_allowed", "wrong method for \(path)")
        default:
            return .error(.notFound, "not_found", "no such endpoint: \(path)")
        }
    }

    func authorize(_ request: IncomingRequest) -> OutgoingResponse? {
        guard let header = request.headers.first(name: "authorization"), header.hasPrefix("Bearer "),
            AdminToken.matches(String(header.dropFirst(7)), token)
        else {
            return .error(
                .unauthorized,
                "unauthorized",
                "send Authorization: Bearer <token> (the token is in <data dir>/admin-token or SWITCHYARD_ADMIN_TOKEN)",
                headers: ["www-authenticate": "Bearer"]
            )
        }
        return nil
    }

    func encode<T: Encodable>(_ value: T) -> OutgoingResponse {
        do {
            return .json(.ok, String(decoding: try AdminJSON.encoder().encode(value), as: UTF8.self))
        } catch {
            return .error(.internalServerError, "internal", "cannot encode the response: \(error)")
        }
    }
}

struct RouteView: Encodable {
    var name: String
    var match: String
    var captures: [String]
    var fastPath: Bool
    var targets: [TargetView]

    struct TargetView: Encodable {
        var service: String
        var method: String
        var path: String
        var timeoutSeconds: Double
        var retries: Int
    }

    init(_ route: RouteTable.Route) {
        name = route.name
        match = route.regex.pattern
        captures = route.regex.captureNames
        fastPath = route.regex.usesFastPath
        targets = route.targets.map {
            TargetView(service: $0.service, method: $0.method, path: $0.path, timeoutSeconds: $0.timeoutSeconds, retries: $0.retries)
        }
    }
}

struct LanesView: Encodable {
    struct Lane: Encodable {
        var name: String
        var fallback: String
        var devices: [String]
        var products: [String]
        var tags: [String: String]
        var percentage: Double?
        var hashKey: String
        /// Instances of each service in this lane.
        var instances: [String: [String]]
    }
    var lanes: [Lane]
    var baselineInstances: [String: [String]]

    init(_ snapshot: PipelineSnapshot) {
        let services = snapshot.directory.services
        lanes = snapshot.configuration.lanes.map { lane in
            let hashKey = lane.hashKey.description
            return Lane(
                name: lane.name,
                fallback: lane.fallback.rawValue,
                devices: lane.devices,
                products: lane.products,
                tags: lane.tags,
                percentage: lane.percentage,
                hashKey: hashKey,
                instances: services.mapValues { $0.filter { $0.lane == lane.name }.map(\.url) }.filter { !$0.value.isEmpty }
            )
        }
        baselineInstances = services.mapValues { $0.filter { $0.lane == nil || $0.lane == "baseline" }.map(\.url) }
    }
}

struct DeadLettersView: Encodable {
    var total: Int
    var evicted: UInt64
    var entries: [DeadLetterView]
}

/// Selects dead letters: from query parameters (list) or a JSON body (replay, purge).
struct DeadLetterQuery: Decodable {
    var keys: [UInt64]?
    var id: String?
    var route: String?
    var reason: String?
    /// RFC 3339 time or seconds since the epoch.
    var since: String?
    var until: String?
    var all: Bool?

    init(route: String?, reason: String?, id: String?, since: String?, until: String?) {
        self.route = route
        self.reason = reason
        self.id = id
        self.since = since
        self.until = until
    }

    var selectsSomething: Bool {
        all == true || keys != nil || id != nil || route != nil || reason != nil || since != nil || until != nil
    }

    struct Problem: Error { var message: String }

    func filter() -> Result<DeadLetterList.Filter, Problem> {
        func time(_ text: String?, _ name: String) -> Result<UInt64?, Problem> {
            guard let text else { return .success(nil) }
            if let seconds = Double(text) { return .success(UInt64(max(0, seconds) * 1e9)) }
            if let date = ISO8601DateFormatter().date(from: text) { return .success(UInt64(date.timeIntervalSince1970 * 1e9)) }
            return .failure(Problem(message: "\(name) must be an RFC 3339 time or seconds since the epoch, got \"\(text)\""))
        }
        let since: UInt64?
        let until: UInt64?
        switch time(self.since, "since") {
        case .success(let v): since = v
        case .failure(let p): return .failure(p)
        }
        switch time(self.until, "until") {
        case .success(let v): until = v
        case .failure(let p): return .failure(p)
        }
        return .success(
            DeadLetterList.Filter(keys: keys.map(Set.init), id: id, route: route, reason: reason, since: since, until: until)
        )
    }
}

struct DeadLetterView: Encodable {
    var key: UInt64
    var id: String
    var route: String
    var service: String?
    var reason: String
    var attempts: Int
    var lastError: String
    var at: String
    var topic: String
    var device: String?
    var product: String?
    var lane: String
    var tags: [String: String]
    var payloadBytes: Int
    var payloadPreview: String
    /// Only when inspecting one dead letter.
    var payloadBase64: String?
    var headers: [String: String]?
    var traceparent: String?

    init(_ d: DeadLetter, full: Bool = false) {
        key = d.key
        id = d.id
        route = d.route
        service = d.service
        reason = d.reason
        attempts = d.attempts
        lastError = d.lastError
        at = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(d.at) / 1e9))
        topic = d.envelope.topic
        device = d.envelope.device
        product = d.envelope.product
        lane = d.envelope.lane ?? "baseline"
        tags = d.envelope.tags
        payloadBytes = d.envelope.payload.readableBytes
        payloadPreview = String(decoding: d.envelope.payload.readableBytesView.prefix(256), as: UTF8.self)
        if full {
            payloadBase64 = Data(d.envelope.payload.readableBytesView).base64EncodedString()
            headers = Dictionary(d.envelope.headers.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
            traceparent = d.envelope.trace.traceparent
        }
    }
}

/// `POST /admin/explain` for an HTTP request: `{"request": {"method", "uri", "host", "headers", "client"}}`.
struct HTTPRequestDescription: Decodable {
    struct Request: Decodable {
        var method: String?
        var uri: String?
        var path: String?
        var host: String?
        var headers: [String: String]?
        /// The caller's address (trusted or not); none: an outside client.
        var client: String?
    }
    var request: Request
}
