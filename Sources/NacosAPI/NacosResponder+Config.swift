import ConfigCenter
import Foundation
import HTTPIngress
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Registry

extension NacosResponder {
    /// Most keys one listener request may watch (as Nacos).
    static let maxListenedKeys = 10_000
    static let maxHoldMillis: Int64 = 120_000

    func configKey(_ p: NacosParams) throws -> ConfigKey {
        ConfigKey(tenant: p.raw("tenant").flatMap { $0 == "None" ? nil : $0 } ?? "", group: try p.required("group"), dataId: try p.required("dataId"))
    }

    func failure(_ error: ConfigError) -> NacosFailure {
        switch error.kind {
        case .notFound: NacosFailure(.notFound, error.message)
        case .invalid: NacosFailure(.badRequest, error.message)
        case .storage: NacosFailure(.serviceUnavailable, error.message)
        }
    }

    func attempt<T>(_ body: () throws(ConfigError) -> T) throws -> T {
        do { return try body() } catch { throw failure(error) }
    }

    func clientIP(_ request: IncomingRequest) -> String { request.remoteAddress?.ipAddress ?? "" }

    func source(_ request: IncomingRequest, _ p: NacosParams, _ user: RegistryUser?) -> ConfigCenter.Source {
        ConfigCenter.Source(ip: clientIP(request), user: user?.username ?? p.string("src_user") ?? "")
    }

    func getConfig(_ request: IncomingRequest, _ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let key = try configKey(p)
        try requireRead(user, key.namespace)
        if try p.bool("beta") == true { return betaQuery(key) }
        guard let served = configs.get(key, clientIP: clientIP(request)) else {
            return .text(.notFound, "config data not exist")
        }
        var response = OutgoingResponse.text(.ok, served.content)
        response.headers.replaceOrAdd(name: "Config-Type", value: served.type)
        response.headers.replaceOrAdd(name: "Content-MD5", value: served.md5)
        response.headers.replaceOrAdd(name: "Last-Modified", value: String(served.lastModifiedMillis))
        response.headers.replaceOrAdd(name: "Pragma", value: "no-cache")
        response.headers.replaceOrAdd(name: "Cache-Control", value: "no-cache,no-store")
        if served.isBeta { response.headers.replaceOrAdd(name: "isBeta", value: "true") }
        return response
    }

    func betaQuery(_ key: ConfigKey) -> OutgoingResponse {
        guard let item = configs.item(key), let beta = item.beta else {
            return .json(.ok, JSON.object([("code", .int(200)), ("message", .string("no beta")), ("data", .null)]).text)
        }
        let data = JSON.object([
            ("dataId", .string(key.dataId)), ("group", .string(key.group)), ("tenant", .string(key.tenant)), ("content", .string(beta.content)),
            ("md5", .string(beta.md5)), ("betaIps", .string(beta.ips.joined(separator: ","))), ("type", .string(item.type)),
        ])
        return .json(.ok, JSON.object([("code", .int(200)), ("message", .string("query beta ok")), ("data", data)]).text)
    }

    func publishConfig(_ request: IncomingRequest, _ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let key = try configKey(p)
        try requireWrite(user, key.namespace)
        guard let content = p.raw("content"), !content.isEmpty else { throw NacosFailure(.badRequest, "parameter content is required") }
        if p.string("tag") != nil || request.headers.first(name: "Vipserver-Tag") != nil {
            throw NacosFailure(.badRequest, "tag gray release is not supported; use a beta release (header betaIps)")
        }
        if protectedKeys.contains(key) { try requireAdmin(user) }
        let betaIPs = (request.headers.first(name: "betaIps") ?? p.string("betaIps"))?.split(separator: ",").map(String.init)
        let cas = request.headers.first(name: "casMd5") ?? p.string("casMd5")
        let source = source(request, p, user)
        let published = try attempt { () throws(ConfigError) in
            try configs.publish(
                key,
                content: content,
                type: p.string("type"),
                appName: p.string("appName") ?? "",
                casMD5: cas,
                betaIPs: betaIPs,
                source: source
            )
        }
        guard published else {
            throw NacosFailure(.conflict, "cas publish failed: the config's current md5 is not \(cas ?? ""); read it again and retry")
        }
        return .text(.ok, "true")
    }

    func deleteConfig(_ request: IncomingRequest, _ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        let key = try configKey(p)
        try requireWrite(user, key.namespace)
        if protectedKeys.contains(key) { try requireAdmin(user) }
        let source = source(request, p, user)
        if try p.bool("beta") == true {
            let stopped = try attempt { () throws(ConfigError) in try configs.stopBeta(key, source: source) }
            return .json(.ok, JSON.object([("code", .int(200)), ("message", .string("stop beta ok")), ("data", .bool(stopped))]).text)
        }
        try attempt { () throws(ConfigError) in _ = try configs.delete(key, source: source) }
        return .text(.ok, "true")
    }

    /// `Listening-Configs`: lines `dataId ^2 group ^2 md5 [^2 tenant] ^1`. With a
    /// `Long-Pulling-Timeout` header the request is held until a key changes or the timeout
    /// (less 500 ms, at least 10 s, as Nacos) passes; without it, or with
    /// `Long-Pulling-Timeout-No-Hangup: true`, it is answered at once.
    func listen(_ request: IncomingRequest, _ p: NacosParams, _ user: RegistryUser?, on loop: any EventLoop) throws -> EventLoopFuture<
        OutgoingResponse
    > {
        guard let probe = p.raw("Listening-Configs") else { throw NacosFailure(.badRequest, "parameter Listening-Configs is required") }
        var entries: [(key: ConfigKey, md5: String)] = []
        for line in probe.split(separator: "\u{1}", omittingEmptySubsequences: true) {
            let fields = line.split(separator: "\u{2}", omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 3 || fields.count == 4 else {
                throw NacosFailure(.badRequest, "Listening-Configs: a line has \(fields.count) fields; expected dataId^2group^2md5[^2tenant]^1")
            }
            let key = ConfigKey(tenant: fields.count == 4 ? fields[3] : (p.raw("tenant") ?? ""), group: fields[1], dataId: fields[0])
            try attempt { () throws(ConfigError) in
                if let problem = ConfigCenter.nameProblem(key.dataId, "dataId") ?? ConfigCenter.nameProblem(key.group, "group") {
                    throw ConfigError(.invalid, "Listening-Configs: \(problem)")
                }
            }
            entries.append((key, fields[2]))
            if entries.count > Self.maxListenedKeys {
                throw NacosFailure(.badRequest, "Listening-Configs: more than \(Self.maxListenedKeys) keys in one request")
            }
        }
        for tenant in Set(entries.map(\.key.namespace)) { try requireRead(user, tenant) }
        let ip = clientIP(request)
        let timeoutHeader = request.headers.first(name: "Long-Pulling-Timeout")
        let noHangup = request.headers.first(name: "Long-Pulling-Timeout-No-Hangup")?.lowercased() == "true"
        guard let timeoutHeader, !noHangup else {
            let changed = entries.filter { configs.get($0.key, clientIP: ip)?.md5 ?? "" != $0.md5 }.map(\.key)
            return loop.makeSucceededFuture(Self.listenResponse(changed))
        }
        guard let timeoutMillis = Int64(timeoutHeader), timeoutMillis > 0 else {
            throw NacosFailure(.badRequest, "Long-Pulling-Timeout must be a number of milliseconds")
        }
        // As Nacos: the timeout less 500 ms, at least 10 s; at most 2 min (a waiter lives until
        // its answer, so a client cannot park one for longer).
        let hold = TimeAmount.milliseconds(min(Self.maxHoldMillis, max(10_000, timeoutMillis - 500)))
        let promise = loop.makePromise(of: OutgoingResponse.self)
        let timer = NIOLockedValueBox<Scheduled<Void>?>(nil)
        switch configs.listen(
            entries,
            clientIP: ip,
            wake: { keys in
                timer.withLockedValue { $0?.cancel() }
                promise.succeed(Self.listenResponse(keys))
            }
        ) {
        case .changed(let keys):
            promise.succeed(Self.listenResponse(keys))
            return promise.futureResult
        case .waiting(let id):
            let configs = self.configs
            let scheduled = loop.scheduleTask(in: hold) {
                // Only one of wake and timeout answers: whoever removes the waiter first.
                if configs.cancel(id) { promise.succeed(Self.listenResponse([])) }
            }
            // The loop shutting down cancels the timer: the wait ends with it.
            scheduled.futureResult.whenFailure { error in
                if configs.cancel(id) { promise.fail(error) }
            }
            timer.withLockedValue { $0 = scheduled }
            return promise.futureResult
        }
    }

    static func listenResponse(_ keys: [ConfigKey]) -> OutgoingResponse {
        var text = ""
        for key in keys {
            text += key.dataId + "\u{2}" + key.group
            if !key.tenant.isEmpty { text += "\u{2}" + key.tenant }
            text += "\u{1}"
        }
        var response = OutgoingResponse.text(.ok, JavaURLEncoder.encode(text))
        response.headers.replaceOrAdd(name: "Pragma", value: "no-cache")
        response.headers.replaceOrAdd(name: "Cache-Control", value: "no-cache,no-store")
        response.headers.replaceOrAdd(name: "Expires", value: "0")
        return response
    }

    /// `?search=accurate&dataId&group&tenant&pageNo&pageSize` (newest first) or `?nid=` (one row).
    func history(_ p: NacosParams, _ user: RegistryUser?) throws -> OutgoingResponse {
        if let nidText = p.string("nid") {
            guard let nid = Int64(nidText) else { throw NacosFailure(.badRequest, "nid must be a number") }
            guard let row = try attempt({ () throws(ConfigError) in try configs.revision(id: nid) }) else {
                throw NacosFailure(.notFound, "no history row \(nid)")
            }
            try requireRead(user, row.key.namespace)
            return .json(.ok, Self.historyJSON(row, withContent: true).text)
        }
        let key = try configKey(p)
        try requireRead(user, key.namespace)
        let pageNo = min(max(1, try p.int("pageNo") ?? 1), NacosParams.maxPage)
        let pageSize = min(max(1, try p.int("pageSize") ?? 100), 500)
        let (total, rows) = try attempt { () throws(ConfigError) in try configs.history(of: key, offset: (pageNo - 1) * pageSize, limit: pageSize) }
        let body = JSON.object([
            ("totalCount", .int(Int64(total))), ("pageNumber", .int(Int64(pageNo))),
            ("pagesAvailable", .int(Int64((total + pageSize - 1) / pageSize))),
            ("pageItems", .array(rows.map { Self.historyJSON($0, withContent: true) })),
        ])
        return .json(.ok, body.text)
    }

    static func historyJSON(_ row: ConfigRevision, withContent: Bool) -> JSON {
        let time = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(row.createdMillis) / 1000))
        var fields: [(String, JSON)] = [
            ("id", .string(String(row.id))), ("dataId", .string(row.key.dataId)), ("group", .string(row.key.group)),
            ("tenant", .string(row.key.tenant)), ("appName", .string(row.appName)), ("md5", .string(row.md5)), ("type", .string(row.type)),
        ]
        if withContent { fields.append(("content", .string(row.content))) }
        fields += [
            ("srcIp", .string(row.sourceIP)), ("srcUser", .string(row.sourceUser)), ("opType", .string(row.operation.rawValue)),
            ("publishType", .string(row.release.rawValue)), ("betaIps", .string(row.betaIPs.joined(separator: ","))),
            ("createdTime", .string(time)), ("lastModifiedTime", .string(time)),
        ]
        return .object(fields)
    }
}
