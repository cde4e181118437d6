import NIOCore
import NIOHTTP1
import SwitchyardCore

/// `POST /v1/batch`: many messages in one request (partner clouds, gateways that buffer).
///
/// Each message is checked, filtered and counted on its own; the accepted ones are journaled
/// as one group and acknowledged together. The answer lists every message's outcome in
/// order: 202 when all were accepted (or duplicates), the shared status when none was and
/// all failed alike (e.g. 503 with `Retry-After`), 207 otherwise.
extension MessageIngestResponder {
    func respondToBatch(_ request: IncomingRequest, on loop: any EventLoop) -> EventLoopFuture<OutgoingResponse> {
        func refuse(_ status: HTTPResponseStatus, _ code: String, _ message: String, count: Int = 1) -> EventLoopFuture<OutgoingResponse> {
            for _ in 0..<count { onMalformed(code) }
            return loop.makeSucceededFuture(.error(status, code, message))
        }
        guard request.method == .POST else {
            return loop.makeSucceededFuture(.error(.methodNotAllowed, "method_not_allowed", "use POST", headers: ["allow": "POST"]))
        }
        let format = MessageBatch.format(contentType: request.headers.first(name: "content-type"), body: request.body)
        let parsed: [Result<MessageBatch.Item, MessageBatch.ItemError>]
        switch MessageBatch.parse(request.body, format: format) {
        case .failure(let error): return refuse(.badRequest, error.code, error.message)
        case .success(let items): parsed = items
        }
        if parsed.isEmpty { return refuse(.badRequest, "empty_payload", "the batch holds no messages") }
        if parsed.count > options.maxBatchItems {
            return refuse(
                .payloadTooLarge,
                "batch_too_large",
                "\(parsed.count) messages in one batch; at most \(options.maxBatchItems) (channels.http.max_batch_items)",
                count: parsed.count
            )
        }
        // Request-level context every message shares.
        let trace = request.headers.first(name: "traceparent")
        let baggage = request.headers.first(name: "baggage")
        // One trace for the request (its `traceparent`, or one made for it), shared by every
        // message without its own: read or generated once, not per message.
        let shared = Self.trace(trace, baggage: baggage)
        let now = WallClock.nowNanos()
        var outcomes = [Outcome](repeating: .pending, count: parsed.count)
        var envelopes: [Envelope] = []
        var positions: [Int] = []
        envelopes.reserveCapacity(parsed.count)
        positions.reserveCapacity(parsed.count)
        for (index, item) in parsed.enumerated() {
            switch item.flatMap({ makeEnvelope($0, trace: trace, shared: shared, baggage: baggage, now: now, from: request.remoteAddress) }) {
            case .failure(let error):
                onMalformed(error.code)
                outcomes[index] = .malformed(error)
            case .success(let envelope):
                envelopes.append(envelope)
                positions.append(index)
            }
        }
        let ids = envelopes.map(\.id)
        return sink.submit(batch: consume envelopes, on: loop).map { results in
            for (n, result) in results.enumerated() { outcomes[positions[n]] = .submitted(ids[n], result) }
            return Self.batchResponse(outcomes)
        }
    }

    enum Outcome {
        case pending
        case malformed(MessageBatch.ItemError)
        case submitted(String, SubmitResult)
    }

    /// Checks one item as the single-message endpoint checks a request.
    func makeEnvelope(
        _ item: MessageBatch.Item,
        trace traceparent: String?,
        shared: TraceContext,
        baggage: String?,
        now: UInt64,
        from address: SocketAddress?
    ) -> Result<Envelope, MessageBatch.ItemError> {
        func bad(_ code: String, _ message: String) -> Result<Envelope, MessageBatch.ItemError> {
            .failure(MessageBatch.ItemError(code: code, message: message))
        }
        if let problem = TopicName.problem(with: item.topic) { return bad("malformed_topic", problem) }
        if let id = item.id, !MessageID.isValid(id) { return bad("malformed_item", "id must be printable ASCII without spaces, ≤ 128 bytes") }
        for (field, value) in [("device", item.device), ("product", item.product)] {
            if let value, value.isEmpty || value.utf8.count > 256 || !Self.isCleanHeaderValue(value) {
                return bad("malformed_item", "\(field) must be 1…256 bytes of text")
            }
        }
        var headers: [HeaderField] = []
        var itemTrace = traceparent
        var contentType = false
        for header in item.headers {
            guard HTTPToken.isToken(header.name), Self.isCleanHeaderValue(header.value) else {
                return bad("malformed_header", "header \"\(header.name)\" is not a valid name with a text value")
            }
            if Self.isReserved(header.name) { continue }
            if header.name == "traceparent" { itemTrace = header.value }
            if header.name == "content-type" { contentType = true }
            headers.append(header)
        }
        if !contentType { headers.append(HeaderField("content-type", item.impliedContentType)) }
        return .success(
            Envelope(
                id: item.id ?? MessageID.generate(nowNanos: now),
                channel: options.channelName,
                topic: item.topic,
                product: item.product,
                device: item.device,
                payload: item.payload,
                headers: headers,
                receivedAt: now,
                trace: itemTrace == traceparent ? shared : Self.trace(itemTrace, baggage: baggage),
                clientAddress: address,
                idFromSender: item.id != nil
            )
        )
    }

    static func batchResponse(_ outcomes: [Outcome]) -> OutgoingResponse {
        var accepted = 0
        var duplicates = 0
        var statuses = Set<Int>()
        var retryAfter: Double?
        var results = ByteBuffer()
        results.reserveCapacity(outcomes.count * 72)
        func field(_ name: StaticString, _ value: String) {
            results.writeStaticString(name)
            JSONText.writeQuoted(value, into: &results)
        }
        for (index, outcome) in outcomes.enumerated() {
            results.writeStaticString(index == 0 ? "\n{\"index\":" : ",\n{\"index\":")
            results.writeString(String(index))
            switch outcome {
            case .pending:
                statuses.insert(500)
                results.writeStaticString(",\"status\":500,\"error\":\"internal\",\"message\":\"no outcome\"}")
            case .malformed(let error):
                statuses.insert(400)
                results.writeStaticString(",\"status\":400")
                field(",\"error\":", error.code)
                field(",\"message\":", error.message)
                results.writeStaticString("}")
            case .submitted(let id, .accepted):
                accepted += 1
                field(",\"status\":202,\"id\":", id)
                results.writeStaticString(",\"result\":\"accepted\"}")
            case .submitted(let id, .duplicate):
                duplicates += 1
                field(",\"status\":202,\"id\":", id)
                results.writeStaticString(",\"result\":\"duplicate\"}")
            case .submitted(let id, .rejected(let r)):
                statuses.insert(r.status)
                if let wait = r.retryAfterSeconds { retryAfter = max(retryAfter ?? 0, wait) }
                results.writeString(",\"status\":\(r.status)")
                field(",\"id\":", id)
                field(",\"error\":", r.reason)
                field(",\"filter\":", r.filter)
                field(",\"message\":", r.message)
                results.writeStaticString("}")
            }
        }
        let rejected = outcomes.count - accepted - duplicates
        let status: HTTPResponseStatus
        if rejected == 0 {
            status = .accepted
        } else if accepted + duplicates == 0, statuses.count == 1 {
            status = HTTPResponseStatus(statusCode: statuses.first!)
        } else {
            status = .multiStatus
        }
        var headers = HTTPHeaders()
        if let wait = retryAfter { headers.add(name: "retry-after", value: Self.retryAfter(wait)) }
        var body = ByteBuffer()
        body.reserveCapacity(results.readableBytes + 80)
        body.writeString("{\"accepted\":\(accepted),\"duplicates\":\(duplicates),\"rejected\":\(rejected),\"results\":[")
        body.writeBuffer(&results)
        body.writeStaticString("\n]}")
        return .json(status, body, headers: headers)
    }
}
