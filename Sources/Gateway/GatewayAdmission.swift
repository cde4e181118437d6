import Controller
import Foundation
import NIOCore
import NIOHTTP1
import Router
import SwitchyardCore

/// What the edge decides about one request before anything goes upstream: its route, each
/// policy's verdict, its lane and the instances that may serve it. The responder acts on it;
/// `explain` shows it. (A value, filled in place and read by the responder once: no object per
/// request; the exchange keeps only what it reports.)
struct Admission {
    struct Refusal {
        let status: HTTPResponseStatus
        let code: String
        let message: String
        var headers: HTTPHeaders = [:]
        var closeAfter = false
    }

    fileprivate(set) var route: CompiledRoute?
    /// The route's name, or `egress`.
    var routeName: String { route?.config.name ?? "egress" }
    /// From a trusted network or with a trusted client certificate.
    fileprivate(set) var trusted = false
    /// What was decided, in words (kept only for `explain`: not built for every request).
    private(set) var steps: [String] = []
    var explaining = false
    var refusal: Refusal?
    var consumer: String?
    var claims: [String: [String]]?
    var lane: String?
    var laneReason = ""
    /// Added to the answer (CORS).
    var responseHeaders = HTTPHeaders()
    var delaySeconds: Double?
    var service = ""
    var candidates: [ServiceInstance] = []
    var fellBack = false
    var uri = ""
    var timeoutSeconds = 30.0

    /// Filled by `GatewaySnapshot.admit` (in place: a returned value was copied field by field).
    init() {}

    mutating func step(_ text: @autoclosure () -> String) {
        if explaining { steps.append(text()) }
    }

    mutating func refuse(_ status: HTTPResponseStatus, _ code: String, _ message: String, headers: HTTPHeaders = [:], closeAfter: Bool = false) {
        refusal = Refusal(status: status, code: code, message: message, headers: headers, closeAfter: closeAfter)
        step(code.isEmpty ? "answered \(status.code) here" : "refused: \(status.code) \(code): \(message)")
    }
}

extension GatewaySnapshot {
    /// The request's admission, filled into `a`; false when it is not the gateway's (no route;
    /// no egress for this caller). With `dryRun`, no rate-limit token is taken and fault drills
    /// are reported instead of rolled.
    func admit(
        _ head: HTTPRequestHead,
        client: SocketAddress?,
        identities: @autoclosure () -> [String] = [],
        dryRun: Bool = false,
        into a: inout Admission
    ) -> Bool {
        let route = self.route(for: head)
        let trusted = isTrusted(client, identities: identities())
        let egress = route == nil && trusted ? egressTarget(head) : nil
        guard route != nil || egress != nil else { return false }
        a.route = route
        a.trusted = trusted
        a.explaining = dryRun
        a.step(route.map { "route \($0.config.name) matches" } ?? "egress to service \(egress!.service) (a trusted caller)")
        if let problem = GatewayResponder.hostProblem(head) {
            a.refuse(.badRequest, "bad_host", problem, closeAfter: true)
            return true
        }
        if let route, route.hasPolicies || (jwt != nil && route.config.jwt != .off) {
            checkPolicies(route, head, client: client, dryRun: dryRun, &a)
            if a.refusal != nil { return true }
        }
        let decision = lane(for: head, trusted: trusted, claims: a.claims)
        (a.lane, a.laneReason) = decision
        a.step("lane \(decision.lane ?? "baseline"): \(decision.why)")
        if let route, let fault = route.config.fault, fault.lanes.isEmpty || fault.lanes.contains(decision.lane ?? "baseline") {
            if dryRun {
                a.step(
                    "fault drill: abort \(fault.abortPercent) % with \(fault.abortStatus), delay \(fault.delayPercent) % by \(fault.delaySeconds) s"
                )
            } else if fault.abortPercent > 0, Double.random(in: 0..<100) < fault.abortPercent {
                a.refuse(
                    HTTPResponseStatus(statusCode: fault.abortStatus),
                    "fault_injected",
                    "aborted by the fault drill of route \(route.config.name)"
                )
                return true
            } else if fault.delayPercent > 0, Double.random(in: 0..<100) < fault.delayPercent {
                a.delaySeconds = fault.delaySeconds
            }
        }
        let instances: [ServiceInstance]
        if let route {
            a.service = route.config.url ?? route.config.service
            instances = route.instances()
            a.uri = GatewayResponder.rewrite(head.uri, route: route)
            a.timeoutSeconds = route.config.timeoutSeconds
        } else {
            (a.service, instances, a.uri) = egress!
        }
        switch route?.upstream != nil ? .lane(instances) : resolver.resolve(lane: decision.lane, instances: instances) {
        case .lane(let list): a.candidates = list
        case .fallback(let list):
            a.candidates = list
            a.fellBack = true
            let service = a.service
            a.step("service \(service) has no instance in lane \(decision.lane ?? "baseline"): baseline instances serve")
        case .laneUnavailable:
            a.refuse(.serviceUnavailable, "lane_unavailable", "service \(a.service) has no instance in lane \(decision.lane ?? "baseline")")
        case .noInstances:
            a.refuse(.serviceUnavailable, "no_instances", "service \(a.service) has no instance to serve the request")
        }
        return true
    }

    /// CORS, API key, JWT, body size, rate limits — in that order, the first refusal wins.
    private func checkPolicies(_ route: CompiledRoute, _ head: HTTPRequestHead, client: SocketAddress?, dryRun: Bool, _ a: inout Admission) {
        let config = route.config
        if let cors = config.cors, let origin = head.headers.first(name: "origin") {
            let allowed = cors.origins.contains("*") || cors.origins.contains(origin)
            if GatewaySnapshot.isPreflight(head) {
                guard allowed else { return a.refuse(.forbidden, "cors_origin_denied", "origin \(origin) may not call this API") }
                var headers = GatewayResponder.corsHeaders(cors, origin: origin)
                headers.add(name: "access-control-allow-methods", value: cors.methods.joined(separator: ", "))
                headers.add(name: "access-control-allow-headers", value: cors.headers.joined(separator: ", "))
                headers.add(name: "access-control-max-age", value: String(cors.maxAgeSeconds))
                return a.refuse(.noContent, "", "", headers: headers)
            }
            if allowed { a.responseHeaders = GatewayResponder.corsHeaders(cors, origin: origin) }
            a.step(allowed ? "CORS: origin \(origin) allowed" : "CORS: origin \(origin) not allowed (no allow header)")
        }
        if let policy = config.apiKeys {
            guard let key = head.headers.first(name: policy.header), !key.isEmpty else {
                return a.refuse(.unauthorized, "api_key_required", "send your API key in the \(policy.header) header")
            }
            guard let consumer = route.apiKeys[CompiledRoute.digest(key)] else {
                return a.refuse(.unauthorized, "api_key_invalid", "the API key in \(policy.header) is not known")
            }
            a.consumer = consumer
            a.step("API key of consumer \(consumer)")
        }
        if config.jwt != .off, let jwt {
            if let token = jwt.token(authorization: head.headers.first(name: "authorization"), cookies: { GatewaySnapshot.cookies(head.headers) }) {
                do {
                    a.claims = try jwt.verify(token)
                    if a.consumer == nil { a.consumer = a.claims?["sub"]?.first }
                    let subject = a.claims?["sub"]?.first ?? "none"
                    a.step("token verified (sub \(subject))")
                } catch {
                    return a.refuse(.unauthorized, "invalid_token", "\(error)", headers: ["www-authenticate": #"Bearer error="invalid_token""#])
                }
            } else if config.jwt == .required {
                return a.refuse(.unauthorized, "token_required", "send a bearer token", headers: ["www-authenticate": "Bearer"])
            }
        }
        if let max = config.maxBodyBytes, let length = head.headers.first(name: "content-length").flatMap(Int.init), length > max {
            return a.refuse(.payloadTooLarge, "body_too_large", "the body has \(length) bytes; this API takes at most \(max)", closeAfter: true)
        }
        for (scope, limiter) in route.limiters {
            let key: String
            switch scope {
            case .route: key = ""
            case .ip: key = client?.ipAddress ?? "?"
            case .consumer: key = a.consumer.map { "c:" + $0 } ?? "ip:" + (client?.ipAddress ?? "?")
            }
            let wait = limiter.acquire(key, consume: !dryRun)
            if wait > 0 {
                let seconds = String(Int(wait.rounded(.up)))
                return a.refuse(
                    .tooManyRequests,
                    "rate_limited",
                    "rate limit per \(scope.rawValue) of \(config.name) reached; retry in \(seconds) s",
                    headers: ["retry-after": seconds]
                )
            }
        }
    }

    /// A dry run of one request: route, policies, lane and the instances that may serve it.
    public func explain(
        method: String,
        uri: String,
        headers: [(String, String)],
        client: String?,
        identities: [String] = []
    ) -> RequestExplanation {
        let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method.uppercased()), uri: uri, headers: HTTPHeaders(headers))
        let address = client.flatMap { try? SocketAddress(ipAddress: $0, port: 0) }
        let messageEndpoint = MessageEndpoints.contains(uri)
        var a = Admission()
        guard !messageEndpoint, admit(head, client: address, identities: identities, dryRun: true, into: &a) else {
            return RequestExplanation(
                gateway: false,
                route: nil,
                steps: [
                    messageEndpoint
                        ? "\(MessageEndpoints.messagePrefix)… and \(MessageEndpoints.batchPath) are the message channel's: no gateway route takes them"
                        : "no gateway route matches" + (isTrusted(address, identities: identities) ? " and no egress service is named" : "")
                            + ": the message channel answers"
                ],
                outcome: "not the gateway's",
                lane: nil,
                laneReason: nil,
                service: nil,
                upstreamURI: nil,
                candidates: []
            )
        }
        return RequestExplanation(
            gateway: true,
            route: a.routeName,
            steps: a.steps,
            outcome: a.refusal.map { "\($0.status.code) \($0.code.isEmpty ? $0.status.reasonPhrase : $0.code)" } ?? "forwarded",
            lane: a.refusal == nil || a.laneReason != "" ? (a.lane ?? "baseline") : nil,
            laneReason: a.laneReason.isEmpty ? nil : a.laneReason,
            service: a.service.isEmpty ? nil : a.service,
            upstreamURI: a.refusal == nil ? a.uri : nil,
            candidates: a.candidates.map { .init(instance: $0.key, url: $0.url, lane: $0.lane ?? "baseline", weight: $0.weight) }
        )
    }
}

/// `POST /admin/explain` for a request.
public struct RequestExplanation: Sendable, Encodable {
    public struct Candidate: Sendable, Encodable {
        var instance: String
        var url: String
        var lane: String
        var weight: Int
    }
    var gateway: Bool
    var route: String?
    var steps: [String]
    var outcome: String
    var lane: String?
    var laneReason: String?
    var service: String?
    var upstreamURI: String?
    var candidates: [Candidate]
}
