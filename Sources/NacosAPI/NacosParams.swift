import HTTPIngress
import NIOCore
import NIOHTTP1
import SwitchyardCore

/// An error answered as a status and a plain-text message (Nacos answers errors as text).
struct NacosFailure: Error {
    var status: HTTPResponseStatus
    var message: String
    init(_ status: HTTPResponseStatus, _ message: String) {
        self.status = status
        self.message = message
    }
}

/// A request's parameters: the query string and, for form posts, the body (body wins).
struct NacosParams {
    /// Page numbers past this answer an empty page (and `(pageNo - 1) * pageSize` cannot overflow).
    static let maxPage = 1_000_000
    var values: [String: String]

    init(_ request: IncomingRequest) {
        values = request.query
        let type = request.headers.first(name: "content-type")?.lowercased() ?? ""
        if request.body.readableBytes > 0, type.isEmpty || type.hasPrefix("application/x-www-form-urlencoded") {
            let body = String(buffer: request.body)
            for pair in body.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = PercentDecoding.decode(kv[0], plusAsSpace: true) ?? String(kv[0])
                values[key] = kv.count == 2 ? (PercentDecoding.decode(kv[1], plusAsSpace: true) ?? String(kv[1])) : ""
            }
        }
    }

    /// The value, unless absent, empty or Python's `None`.
    func string(_ name: String) -> String? {
        guard let v = values[name], !v.isEmpty, v != "None", v != "null" else { return nil }
        return v
    }

    /// The raw value, empty allowed (config content, tenant).
    func raw(_ name: String) -> String? { values[name] }

    func required(_ name: String) throws -> String {
        guard let v = string(name) else { throw NacosFailure(.badRequest, "parameter \(name) is required") }
        return v
    }

    func int(_ name: String) throws -> Int? {
        guard let text = string(name) else { return nil }
        guard let v = Int(text) ?? Double(text).flatMap({ $0 == $0.rounded() ? Int(exactly: $0) : nil }) else {
            throw NacosFailure(.badRequest, "parameter \(name) must be an integer (got \"\(text)\")")
        }
        return v
    }

    func double(_ name: String) throws -> Double? {
        guard let text = string(name) else { return nil }
        guard let v = Double(text), v.isFinite else { throw NacosFailure(.badRequest, "parameter \(name) must be a number (got \"\(text)\")") }
        return v
    }

    /// `true`/`false` in any case (Python sends `True`).
    func bool(_ name: String) throws -> Bool? {
        guard let text = string(name) else { return nil }
        switch text.lowercased() {
        case "true", "1": return true
        case "false", "0": return false
        default: throw NacosFailure(.badRequest, "parameter \(name) must be true or false (got \"\(text)\")")
        }
    }

    /// Metadata as a JSON object or Nacos' legacy `k=v,k2=v2`.
    func metadata(_ name: String = "metadata") throws -> [String: String]? {
        guard let text = string(name) else { return nil }
        if text.hasPrefix("{") {
            guard let map = JSON.parseStringMap(text) else { throw NacosFailure(.badRequest, "parameter \(name) is not a JSON object") }
            return map
        }
        var map: [String: String] = [:]
        for pair in text.split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { throw NacosFailure(.badRequest, "parameter \(name) must be a JSON object or k=v,k2=v2") }
            map[String(kv[0])] = String(kv[1])
        }
        return map
    }

    /// Naming's namespace: `namespaceId`, default `public`.
    var namespace: String { string("namespaceId") ?? "public" }
}
