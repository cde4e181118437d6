import Controller
import Foundation
public import HTTPIngress
import Metrics
public import NIOCore
import NIOHTTP1
import Router
import SwitchyardCore
import Synchronization

/// The streaming side of the HTTP listener: requests matching a gateway route (or, from
/// trusted callers, an egress target) pass the route's policies and become sessions.
public final class GatewayResponder: HTTPStreamingResponder {
    let snapshot: @Sendable () -> GatewaySnapshot
    /// Idle keep-alive connections to upstream instances, reused by later requests.
    let pool = UpstreamPool()

    public init(snapshot: @escaping @Sendable () -> GatewaySnapshot) {
        self.snapshot = snapshot
    }

    public func session(for head: HTTPRequestHead, remoteAddress: SocketAddress?, writer: HTTPResponseWriter) -> (any HTTPStreamSession)? {
        let snapshot = self.snapshot()
        // Everything that is not the gateway's is the message channel's.
        var admission = Admission()
        guard snapshot.admit(head, client: remoteAddress, identities: writer.peerIdentities, into: &admission) else { return nil }
        let route = admission.route
        let session = GatewaySession(writer: writer, head: head, client: remoteAddress, admission: admission, snapshot: snapshot)
        if let refusal = admission.refusal {
            return session.reject(refusal.status, refusal.code, refusal.message, headers: refusal.headers, closeAfter: refusal.closeAfter)
        }
        if let route {
            if let limit = route.config.maxConcurrency {
                session.release = { route.inFlight.subtract(1, ordering: .relaxed) }
                if route.inFlight.add(1, ordering: .relaxed).newValue > limit {
                    return session.reject(
                        .serviceUnavailable,
                        "concurrency_limit",
                        "route \(route.config.name) has \(limit) requests in flight, its limit"
                    )
                }
            }
            if let breaker = route.breaker {
                guard breaker.allow() else {
                    return session.reject(
                        .serviceUnavailable,
                        "circuit_open",
                        "the circuit of route \(route.config.name) is open: too many failures or slow answers"
                    )
                }
                session.breaker = breaker
            }
        }
        session.debug = admission.trusted && head.headers.contains(name: snapshot.debugHeader)
        let request: UpstreamRequest
        if let raw = writer.requestFieldLines, route?.config.requestHeaders.isEmpty ?? true,
            let (lines, length) = Self.upstreamLines(
                raw,
                lane: admission.lane,
                fellBack: admission.fellBack,
                clientIP: writer.clientIP,
                traceparent: session.traceparent,
                into: writer.takeScratch()
            )
        {
            request = .lines(HTTP1ClientCodec.RequestLines(method: head.method, uri: admission.uri, fields: lines, length: length))
        } else {
            request = .head(
                Self.upstreamHead(
                    head,
                    uri: admission.uri,
                    lane: admission.lane,
                    fellBack: admission.fellBack,
                    clientIP: writer.clientIP,
                    traceparent: session.traceparent.text,
                    rewrite: route?.config.requestHeaders
                )
            )
        }
        session.forward(
            request,
            to: admission.candidates,
            timeout: admission.timeoutSeconds,
            pool: pool,
            retries: route?.config.retries ?? 1,
            retryAnswers: Self.isIdempotent(head.method) || route?.config.retryNonIdempotent == true,
            maxBodyBytes: route?.config.maxBodyBytes,
            balancer: snapshot.balancer,
            circuit: route?.circuit ?? snapshot.circuitRules[admission.candidates.first?.service ?? ""] ?? SwitchyardConfiguration.CircuitRule(),
            slowCallSeconds: snapshot.slowCallSeconds
        )
        if let delay = admission.delaySeconds.map({ TimeAmount.nanoseconds(Int64($0 * 1e9)) }) {
            let bound = NIOLoopBound(session, eventLoop: writer.eventLoop)
            writer.eventLoop.scheduleTask(in: delay) { bound.value.start() }
        } else {
            session.start(at: session.started)
        }
        return session
    }

    /// Methods whose request may go to another instance after an answer failed (RFC 9110 §9.2.2).
    static func isIdempotent(_ method: HTTPMethod) -> Bool {
        switch method {
        case .GET, .HEAD, .OPTIONS, .PUT, .DELETE, .TRACE: true
        default: false
        }
    }

    static func corsHeaders(_ cors: SwitchyardConfiguration.CORSPolicy, origin: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.add(name: "access-control-allow-origin", value: cors.origins.contains("*") && !cors.credentials ? "*" : origin)
        headers.add(name: "vary", value: "Origin")
        if cors.credentials { headers.add(name: "access-control-allow-credentials", value: "true") }
        if !cors.exposeHeaders.isEmpty { headers.add(name: "access-control-expose-headers", value: cors.exposeHeaders.joined(separator: ", ")) }
        return headers
    }

    /// HTTP/1.1 needs exactly one Host, a name or address with an optional port (RFC 9112 §3.2).
    /// (Read as bytes in place: once per request.)
    static func hostProblem(_ head: HTTPRequestHead) -> String? {
        var hosts = 0
        var problem: String?
        for (name, value) in head.headers where HTTP1Syntax.name(name, is: "host") {
            value.withUTF8Bytes { bytes in
                let host = HTTP1Syntax.trimmed(bytes)
                guard !host.isEmpty else { return }  // an empty Host is no Host
                hosts += 1
                if host.contains(UInt8(ascii: ",")) {
                    problem = "more than one Host header"
                } else if !host.allSatisfy(isHostByte) {
                    problem = "Host \"\(String(decoding: host, as: UTF8.self))\" is not a host name"
                }
            }
            if hosts > 1 { return "more than one Host header" }
        }
        guard hosts > 0 else {
            return head.version.major > 1 || head.version.minor >= 1 ? "an HTTP/1.1 request needs a Host header" : nil
        }
        return problem
    }

    /// The bytes a Host header may hold (reg-name, IP literal, port): letters, digits and
    /// `.-_:[]~!$&'()*+,;=%`, as two 64-bit masks (bytes 0–63 and 64–127).
    @inline(__always)
    static func isHostByte(_ byte: UInt8) -> Bool {
        if byte < 64 { return (0x2fff_7ff2_0000_0000 as UInt64) >> byte & 1 == 1 }
        return byte < 128 && (0x47ff_fffe_afff_fffe as UInt64) >> (byte - 64) & 1 == 1
    }

    /// The path a route sends: the prefix removed or replaced when the route says so.
    /// (Read field by field from the compiled route: the config struct is not copied per request.)
    static func rewrite(_ uri: String, route compiled: CompiledRoute) -> String {
        guard compiled.config.pathRegex == nil, compiled.config.stripPrefix || compiled.config.prefixRewrite != nil else { return uri }
        let route = compiled.config
        guard uri.hasPrefix(route.pathPrefix) else { return uri }
        let rest = String(uri.dropFirst(route.pathPrefix.count))
        if let replacement = route.prefixRewrite {
            if replacement.hasSuffix("/") && rest.hasPrefix("/") { return replacement + rest.dropFirst() }
            return replacement + rest
        }
        guard route.pathPrefix != "/" else { return uri }
        return rest.hasPrefix("/") ? rest : "/" + rest
    }

    /// The request as sent upstream, without its Host (the connection's codec writes the
    /// instance's).
    static func upstreamHead(
        _ head: HTTPRequestHead,
        uri: String,
        lane: String?,
        fellBack: Bool,
        clientIP: String?,
        traceparent: String,
        rewrite: SwitchyardConfiguration.HeaderRewrite?
    ) -> HTTPRequestHead {
        // Collected as an array with room for what is added below (no growing per header); the
        // fields this hop sets are left out on the way and added once below (no replace-or-add,
        // which copies the list).
        var fields: [(String, String)] = []
        fields.reserveCapacity(head.headers.count + 8)
        var (host, forwardedFor, baggage): (String?, String?, String?) = (nil, nil, nil)
        var nominated: [String] = []
        for (name, value) in head.headers {
            let lower = name.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) ? name.lowercased() : name
            if HTTP1Syntax.isHopByHop(name) {
                if lower == "connection" { nominated += HTTP1Syntax.nominatedFields(value) }
                continue
            }
            // `Expect: 100-continue` was answered by this hop's codec (as nginx does).
            if lower == "expect" || lower == "traceparent" || lower == "x-forwarded-host" || lower.hasPrefix("x-switchyard-") {
                continue
            }
            switch lower {
            case "host": host = host ?? value
            case "x-forwarded-for": forwardedFor = forwardedFor ?? value
            case "baggage":
                // The lane in baggage is Switchyard's to set; other members pass.
                let kept = value.split(separator: ",").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("lane=") }
                if !kept.isEmpty { baggage = (baggage.map { $0 + "," } ?? "") + kept.joined(separator: ",") }
            default: fields.append((name, value))
            }
        }
        if !nominated.isEmpty {
            // The fields the client's Connection header names are for this hop only (RFC 9110 §7.6.1).
            fields.removeAll { nominated.contains($0.0.lowercased()) }
            if nominated.contains("x-forwarded-for") { forwardedFor = nil }
            if nominated.contains("baggage") { baggage = nil }
        }
        if let host { fields.append(("x-forwarded-host", host)) }
        if let ip = clientIP {
            fields.append(("x-forwarded-for", forwardedFor.map { "\($0), \(ip)" } ?? ip))
        } else if let forwardedFor {
            fields.append(("x-forwarded-for", forwardedFor))
        }
        if let lane {
            // The original lane travels on even where this hop fell back, so the next hop returns to it.
            fields.append(("x-switchyard-lane", lane))
            fields.append(("baggage", baggage.map { "lane=\(lane),\($0)" } ?? "lane=\(lane)"))
        } else if let baggage {
            fields.append(("baggage", baggage))
        }
        if fellBack { fields.append(("x-switchyard-lane-fallback", "true")) }
        fields.append(("traceparent", traceparent))
        var headers = HTTPHeaders(consume fields)  // (consumed: changed below in place, not copied)
        if let protocols = upgrade(head) {
            // WebSocket and other upgrades pass through: the upstream answers the upgrade.
            headers.add(name: "connection", value: "upgrade")
            headers.add(name: "upgrade", value: protocols)
        }
        if let rewrite, !rewrite.isEmpty {
            Self.apply(rewrite, to: &headers)
            headers.remove(name: "host")  // the instance's own
        }
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: uri, headers: headers)
    }

    /// `upstreamHead`'s common case on HTTP/1.1, as bytes: the request's field lines (as they
    /// came, checked by the codec) are copied in runs, without the ones this hop drops or sets,
    /// and the ones it sets follow — the same fields in the same order as `upstreamHead`'s.
    /// Returns the lines and whether they hold a `content-length`; nil when `upstreamHead` must
    /// take the request: an upgrade, a transfer coding (framed anew by the codec), `baggage`
    /// (its members are filtered), or a `Connection` header that nominates fields.
    static func upstreamLines(
        _ raw: ByteBuffer,
        lane: String?,
        fellBack: Bool,
        clientIP: String?,
        traceparent: Traceparent,
        into reused: consuming ByteBuffer? = nil
    ) -> (lines: ByteBuffer, length: Bool)? {
        // Room for every line kept, the Host and X-Forwarded-For values again (each at most all
        // of the lines), and the fields this hop adds: one buffer, written by a cursor (the
        // connection's scratch buffer when it has one: taken whole, cleared, it keeps its storage).
        let ip = clientIP ?? ""
        let capacity = 2 * raw.readableBytes + ip.utf8.count + 2 * (lane?.utf8.count ?? 0) + traceparent.utf8Count + 160
        var out = reused.take() ?? ByteBufferAllocator().buffer(capacity: capacity)
        out.clear(minimumCapacity: capacity)
        return raw.withUnsafeReadableBytes { bytes -> (lines: ByteBuffer, length: Bool)? in
            var bail = false
            var length = false
            out.write(capacity: capacity) { cursor in
                var host: UnsafeRawBufferPointer?
                var forwardedFor: UnsafeRawBufferPointer?
                // Kept lines are copied a run of them at a time.
                var run: Int?
                var position = 0
                while position < bytes.count {
                    // (The codec checked every byte of these lines: here they are only split.)
                    guard let n = HTTP1Syntax.lineLength(UnsafeRawBufferPointer(rebasing: bytes[position...])),
                        let colon = bytes[position..<(position + n)].firstIndex(of: UInt8(ascii: ":"))
                    else { return bail = true }
                    let name = UnsafeRawBufferPointer(rebasing: bytes[position..<colon])
                    let lineEnd = position + n
                    var value: UnsafeRawBufferPointer { HTTP1Syntax.trimmed(UnsafeRawBufferPointer(rebasing: bytes[(colon + 1)..<lineEnd])) }
                    let lineStart = position
                    position += n + 2
                    let kept: Bool
                    if HTTP1Syntax.isHopByHop(name) {
                        if HTTP1Syntax.name(name, is: "upgrade") { return bail = true }
                        if HTTP1Syntax.name(name, is: "connection") && !HTTP1Syntax.nominatedFields(value).isEmpty { return bail = true }
                        kept = false
                    } else if HTTP1Syntax.name(name, is: "host") {
                        if host == nil { host = value }
                        kept = false
                    } else if HTTP1Syntax.name(name, is: "x-forwarded-for") {
                        if forwardedFor == nil { forwardedFor = value }
                        kept = false
                    } else if HTTP1Syntax.name(name, is: "baggage") || HTTP1Syntax.name(name, is: "transfer-encoding") {
                        return bail = true
                    } else {
                        // `Expect: 100-continue` was answered by this hop's codec (as nginx does).
                        kept =
                            !(HTTP1Syntax.name(name, is: "expect") || HTTP1Syntax.name(name, is: "traceparent")
                            || HTTP1Syntax.name(name, is: "x-forwarded-host") || HTTP1Syntax.name(name, hasPrefix: "x-switchyard-"))
                        if kept && HTTP1Syntax.name(name, is: "content-length") { length = true }
                    }
                    if kept {
                        if run == nil { run = lineStart }
                    } else if let start = run {
                        cursor.put(UnsafeRawBufferPointer(rebasing: bytes[start..<lineStart]))
                        run = nil
                    }
                }
                if let start = run { cursor.put(UnsafeRawBufferPointer(rebasing: bytes[start..<position])) }
                if let host {
                    cursor.put("x-forwarded-host: ")
                    cursor.put(host)
                    cursor.put("\r\n")
                }
                if clientIP != nil || forwardedFor != nil {
                    cursor.put("x-forwarded-for: ")
                    if let forwardedFor { cursor.put(forwardedFor) }
                    if forwardedFor != nil && clientIP != nil { cursor.put(", ") }
                    cursor.put(ip)
                    cursor.put("\r\n")
                }
                if let lane {
                    // The original lane travels on even where this hop fell back, so the next hop returns to it.
                    cursor.put("x-switchyard-lane: ")
                    cursor.put(lane)
                    cursor.put("\r\nbaggage: lane=")
                    cursor.put(lane)
                    cursor.put("\r\n")
                }
                if fellBack { cursor.put("x-switchyard-lane-fallback: true\r\n") }
                cursor.put("traceparent: ")
                traceparent.write(into: &cursor)
                cursor.put("\r\n")
            }
            return bail ? nil : (out, length)
        }
    }

    /// The protocols an upgrade request asks for (`Upgrade` with `Connection: upgrade`).
    static func upgrade(_ head: HTTPRequestHead) -> String? {
        guard let protocols = head.headers.first(name: "upgrade"),
            head.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "upgrade" })
        else { return nil }
        return protocols
    }

    static func apply(_ rewrite: SwitchyardConfiguration.HeaderRewrite, to headers: inout HTTPHeaders) {
        for name in rewrite.remove { headers.remove(name: name) }
        for (name, value) in rewrite.set { headers.replaceOrAdd(name: name, value: value) }
        for (name, value) in rewrite.add { headers.add(name: name, value: value) }
    }
}

/// The request as it goes to each attempt's instance (the connection's codec adds the
/// instance's Host).
enum UpstreamRequest {
    /// As a header list: HTTP/2 requests, upgrades, routes that rewrite headers, requests with
    /// a transfer coding, baggage or nominated fields.
    case head(HTTPRequestHead)
    /// An HTTP/1.1 request's field lines as bytes (`GatewayResponder.upstreamLines`).
    case lines(HTTP1ClientCodec.RequestLines)
    /// The exchange is over: its lines' buffer went back to the client's connection.
    case released
}

/// One request's record: what the access log, the metrics and the debug headers say about it.
/// (The base of its `GatewaySession`: one object per request, not a session and a record.)
class Exchange {
    /// When the request began (the monotonic clock's nanoseconds).
    let started: UInt64
    let method: String
    let uri: String
    let host: String
    /// The client's address (kept only for the access log).
    let client: SocketAddress?
    /// Its route (nil: egress), lane, consumer and the headers added to its answer (CORS), as admitted.
    let route: CompiledRoute?
    let lane: String?
    let consumer: String?
    let responseHeaders: HTTPHeaders
    let metrics: GatewayMetrics
    let accessLog: AccessLog?
    /// The route changes its answers' headers.
    let rewritesAnswers: Bool
    let traceparent: Traceparent
    /// The instance of the current (else the last) attempt.
    var instance: ServiceInstance?
    var attempts = 0
    var debug = false

    /// The route's name, or `egress`.
    var routeName: String { route?.config.name ?? "egress" }
    /// The route's circuit, told the outcome at the end.
    var breaker: TargetBreaker?
    /// Gives back the route's concurrency slot.
    var release: (() -> Void)?

    init(head: HTTPRequestHead, client: SocketAddress?, admission: borrowing Admission, snapshot: GatewaySnapshot, started: UInt64) {
        self.started = started
        accessLog = snapshot.accessLog
        // (What only the access log shows is kept only for it.)
        method = accessLog == nil ? "" : head.method.rawValue
        uri = accessLog == nil ? "" : head.uri
        host = accessLog == nil ? "" : head.headers.first(name: "host") ?? ""
        self.client = accessLog == nil ? nil : client
        route = admission.route
        lane = admission.lane
        consumer = admission.consumer
        responseHeaders = admission.responseHeaders
        metrics = admission.route?.metrics ?? snapshot.egressMetrics
        rewritesAnswers = admission.route.map { !$0.config.responseHeaders.isEmpty } ?? false
        if let given = head.headers.first(name: "traceparent"), TraceContext(traceparent: given) != nil {
            traceparent = Traceparent(given: given)
        } else {
            traceparent = .fresh()
        }
    }

    /// Whether `decorate` adds or changes anything (an answer's head passes untouched if not).
    var decorates: Bool {
        rewritesAnswers || !responseHeaders.isEmpty || (debug && instance != nil)
    }

    /// Response headers of the route, CORS and (for trusted debug callers) lane and upstream.
    func decorate(_ headers: inout HTTPHeaders) {
        if rewritesAnswers, let route { GatewayResponder.apply(route.config.responseHeaders, to: &headers) }
        if !responseHeaders.isEmpty { headers.add(contentsOf: responseHeaders) }
        if debug, let instance {
            headers.replaceOrAdd(name: "x-switchyard-lane-effective", value: instance.lane ?? "baseline")
            headers.replaceOrAdd(name: "x-switchyard-upstream", value: instance.key)
        }
    }

    /// Counted once, logged once (`status` 0: the client left first).
    func finish(status: Int, error: String? = nil) {
        let now = SystemMonotonicClock().nowNanos()
        let nanos = now > started ? now - started : 0  // (the same clock, read earlier: never negative)
        release?()
        release = nil
        if let breaker {
            if status == 0 { breaker.abandon() } else { breaker.record(failed: status >= 500, seconds: Double(nanos) / 1e9) }
            self.breaker = nil
        }
        metrics.record(status: status, nanoseconds: nanos, lane: lane)
        guard let accessLog else { return }
        var line = "{\"ts\":\(String(format: "%.3f", Date().timeIntervalSince1970))"
        line += ",\"trace_id\":\(JSONText.quote(traceparent.traceID))"
        line += ",\"client\":\(JSONText.quote(client?.ipAddress ?? "")),\"method\":\(JSONText.quote(method)),\"host\":\(JSONText.quote(host))"
        line += ",\"uri\":\(JSONText.quote(uri)),\"route\":\(JSONText.quote(routeName)),\"lane\":\(JSONText.quote(lane ?? "baseline"))"
        if let instance {
            line += ",\"lane_effective\":\(JSONText.quote(instance.lane ?? "baseline")),\"upstream\":\(JSONText.quote(instance.key))"
        }
        if let consumer { line += ",\"consumer\":\(JSONText.quote(consumer))" }
        line += ",\"status\":\(status),\"duration_ms\":\(String(format: "%.3f", Double(nanos) / 1e6)),\"attempts\":\(attempts)"
        if let error { line += ",\"error\":\(JSONText.quote(error))" }
        accessLog.write(line + "}\n")
    }
}

/// A route's metrics, made once per configuration: by lane and status class, durations,
/// retries and upstream errors.
final class GatewayMetrics: Sendable {
    /// (A class: taken by reference once per request, not copied with its three references.)
    final class PerLane: Sendable {
        let byClass: [Counter]
        let cancelled: Counter
        let duration: Metrics.Timer

        init(byClass: [Counter], cancelled: Counter, duration: Metrics.Timer) {
            self.byClass = byClass
            self.cancelled = cancelled
            self.duration = duration
        }
    }

    let route: String
    let lanes: Set<String>
    let perLane: [String: PerLane]
    /// Requests without a lane (most): counted without a lookup.
    let baseline: PerLane
    let retries: Counter

    init(route: String, lanes: [String]) {
        self.route = route
        self.lanes = Set(lanes)
        var perLane: [String: PerLane] = [:]
        for lane in lanes + ["baseline"] {
            perLane[lane] = PerLane(
                byClass: ["1xx", "2xx", "3xx", "4xx", "5xx"].map {
                    Counter(label: "switchyard_gateway_requests_total", dimensions: [("route", route), ("lane", lane), ("status", $0)])
                },
                cancelled: Counter(
                    label: "switchyard_gateway_requests_total",
                    dimensions: [("route", route), ("lane", lane), ("status", "client_gone")]
                ),
                duration: Metrics.Timer(label: "switchyard_gateway_request_duration_seconds", dimensions: [("route", route), ("lane", lane)])
            )
        }
        self.perLane = perLane
        baseline = perLane["baseline"]!
        retries = Counter(label: "switchyard_gateway_retries_total", dimensions: [("route", route)])
    }

    /// One answered request (`status` 0: the client left first).
    func record(status: Int, nanoseconds: UInt64, lane: String?) {
        let metrics = lane.flatMap { perLane[$0] } ?? baseline
        guard (100..<600).contains(status) else {
            metrics.cancelled.increment()
            return
        }
        metrics.byClass[status / 100 - 1].increment()
        if nanoseconds > 0 { metrics.duration.recordNanoseconds(Int64(nanoseconds)) }
    }

    /// An upstream that could not be reached, reset the connection or timed out.
    func upstreamError(_ upstream: ServiceInstance, kind: String) {
        Counter(label: "switchyard_gateway_upstream_errors_total", dimensions: [("route", route), ("upstream", upstream.key), ("kind", kind)])
            .increment()
    }
}

/// JSON lines, one per request, appended to a file (or stdout). Writes are serialized.
final class AccessLog: @unchecked Sendable {
    let path: String
    private let lock = NSLock()
    private let handle: FileHandle

    init(path: String) throws(KeyPathError) {
        self.path = path
        if path == "stdout" {
            handle = FileHandle.standardOutput
            return
        }
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o640])
        }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            throw KeyPathError(path: "gateway.access_log", message: "cannot open \(path) for appending")
        }
        handle.seekToEndOfFile()
        self.handle = handle
    }

    func write(_ line: String) {
        let data = Data(line.utf8)
        lock.lock()
        defer { lock.unlock() }
        try? handle.write(contentsOf: data)
    }
}
