public import NIOCore
public import SwitchyardCore

/// The body of `POST /v1/batch`: messages as NDJSON (one object per line) or a JSON array
/// of objects `{topic, payload | payload_base64, id?, device?, product?, headers?}`.
///
/// `payload` is taken as the message's bytes: a string's text, or the JSON text of any other
/// value as written (`{"temp": 21.5}` stays those bytes). In NDJSON a bad line is an error
/// of that message only; in an array, a syntax error spoils the whole body.
public enum MessageBatch {
    public struct Item: Sendable, Equatable {
        public var topic: String
        public var payload: ByteBuffer
        public var id: String?
        public var device: String?
        public var product: String?
        /// Lower-cased names.
        public var headers: [HeaderField]
        /// The payload's content type when the item gives none: `application/json` for a JSON
        /// value, `text/plain; charset=utf-8` for a string, `application/octet-stream` for base64.
        public var impliedContentType: String
    }

    public struct ItemError: Error, Sendable, Equatable {
        public var code: String
        public var message: String
    }

    public enum Format: Sendable {
        case ndjson
        case jsonArray
    }

    /// `content-type` decides; without one, a body starting with `[` is an array.
    public static func format(contentType: String?, body: ByteBuffer) -> Format {
        let type = contentType?.split(separator: ";").first.map { $0.filter { $0 != " " }.lowercased() }
        switch type {
        case "application/json": return .jsonArray
        case "application/x-ndjson", "application/jsonl", "application/jsonlines", "application/ndjson": return .ndjson
        default:
            var scanner = JSONScanner(body.readableBytesView)
            return scanner.peek() == UInt8(ascii: "[") ? .jsonArray : .ndjson
        }
    }

    /// The body's messages in order, each parsed or with its error; a failure when the body
    /// as a whole is unreadable (a broken array).
    public static func parse(_ body: ByteBuffer, format: Format) -> Result<[Result<Item, ItemError>], ItemError> {
        let bytes = body.readableBytesView
        switch format {
        case .ndjson:
            var items: [Result<Item, ItemError>] = []
            var lineStart = bytes.startIndex
            while lineStart < bytes.endIndex {
                let lineEnd = bytes[lineStart...].firstIndex(of: 0x0A) ?? bytes.endIndex
                let line = bytes[lineStart..<lineEnd]
                lineStart = lineEnd + 1
                var scanner = JSONScanner(line)
                if scanner.peek() == nil { continue }  // blank lines (and the final newline) carry nothing
                var result = parseObject(&scanner)
                if case .success = result, scanner.peek() != nil {
                    result = .failure(ItemError(code: "malformed_json", message: "text after the object on its line"))
                }
                items.append(result)
            }
            return .success(items)
        case .jsonArray:
            var scanner = JSONScanner(bytes)
            guard scanner.take(UInt8(ascii: "[")) else {
                return .failure(ItemError(code: "malformed_json", message: "expected a JSON array of messages"))
            }
            var items: [Result<Item, ItemError>] = []
            if scanner.take(UInt8(ascii: "]")) { return scanner.peek() == nil ? .success([]) : .failure(trailing) }
            while true {
                let start = scanner.index
                switch parseObject(&scanner) {
                case .success(let item): items.append(.success(item))
                case .failure(let error) where error.code != "malformed_json": items.append(.failure(error))
                case .failure:
                    // Well-formed JSON that is not a message object spoils only itself.
                    scanner.index = start
                    guard scanner.skipValue() != nil else {
                        return .failure(ItemError(code: "malformed_json", message: "message \(items.count) is not valid JSON"))
                    }
                    items.append(.failure(ItemError(code: "malformed_item", message: "not a valid JSON message object")))
                }
                if scanner.take(UInt8(ascii: ",")) { continue }
                guard scanner.take(UInt8(ascii: "]")) else {
                    return .failure(ItemError(code: "malformed_json", message: "expected , or ] after message \(items.count - 1)"))
                }
                return scanner.peek() == nil ? .success(items) : .failure(trailing)
            }
        }
    }

    static let trailing = ItemError(code: "malformed_json", message: "text after the array")

    /// One message object. The scanner ends after it.
    static func parseObject<Bytes>(_ scanner: inout JSONScanner<Bytes>) -> Result<Item, ItemError> {
        func bad(_ code: String, _ message: String) -> Result<Item, ItemError> { .failure(ItemError(code: code, message: message)) }
        let malformed = bad("malformed_json", "not a valid JSON object")
        guard scanner.take(UInt8(ascii: "{")) else { return malformed }
        var topic: String?
        var payload: ByteBuffer?
        var implied = "application/json"
        var id: String?
        var device: String?
        var product: String?
        var headers: [HeaderField] = []
        var problem: ItemError?
        func string(_ value: JSONScanner<Bytes>.Value, _ field: String) -> String? {
            if case .string(let s) = value { return s }
            problem = problem ?? ItemError(code: "malformed_item", message: "\(field) must be a string")
            return nil
        }
        if !scanner.take(UInt8(ascii: "}")) {
            while true {
                guard let key = scanner.readString(), scanner.take(UInt8(ascii: ":")) else { return malformed }
                if key == "headers" {
                    guard scanner.take(UInt8(ascii: "{")) else {
                        guard scanner.skipValue() != nil else { return malformed }
                        problem = problem ?? ItemError(code: "malformed_item", message: "headers must be an object of strings")
                        if scanner.take(UInt8(ascii: ",")) { continue }
                        break
                    }
                    if !scanner.take(UInt8(ascii: "}")) {
                        while true {
                            guard let name = scanner.readString(), scanner.take(UInt8(ascii: ":")), let (value, _) = scanner.skipValue() else {
                                return malformed
                            }
                            if let v = string(value, "headers.\(name)") { headers.append(HeaderField(name.lowercased(), v)) }
                            if scanner.take(UInt8(ascii: ",")) { continue }
                            guard scanner.take(UInt8(ascii: "}")) else { return malformed }
                            break
                        }
                    }
                } else if key == "payload", let text = scanner.readPlainString() {
                    // The common payload, a string without escapes: its bytes as they are.
                    payload = ByteBuffer(bytes: scanner.json[text])
                    implied = "text/plain; charset=utf-8"
                } else {
                    guard let (value, range) = scanner.skipValue() else { return malformed }
                    switch key {
                    case "topic": topic = string(value, "topic")
                    case "id": id = string(value, "id")
                    case "device": device = string(value, "device")
                    case "product": product = string(value, "product")
                    case "payload":
                        if case .string(let s) = value {
                            payload = ByteBuffer(string: s)
                            implied = "text/plain; charset=utf-8"
                        } else {
                            payload = ByteBuffer(bytes: scanner.json[range])
                        }
                    case "payload_base64":
                        if let text = string(value, "payload_base64") {
                            guard let decoded = Base64Decoding.decode(text) else {
                                problem = problem ?? ItemError(code: "malformed_item", message: "payload_base64 is not valid base64")
                                break
                            }
                            payload = ByteBuffer(bytes: decoded)
                            implied = "application/octet-stream"
                        }
                    default:
                        problem =
                            problem
                            ?? ItemError(
                                code: "malformed_item",
                                message: "unknown field \"\(key)\" (fields: topic, payload, payload_base64, id, device, product, headers)"
                            )
                    }
                }
                if scanner.take(UInt8(ascii: ",")) { continue }
                guard scanner.take(UInt8(ascii: "}")) else { return malformed }
                break
            }
        }
        if let problem { return .failure(problem) }
        guard let topic else { return bad("malformed_topic", "each message needs a topic") }
        guard let payload, payload.readableBytes > 0 else { return bad("empty_payload", "each message needs a payload (or payload_base64)") }
        return .success(
            Item(topic: topic, payload: payload, id: id, device: device, product: product, headers: headers, impliedContentType: implied)
        )
    }
}

/// Standard base64 with padding (whitespace not allowed).
public enum Base64Decoding {
    public static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 4 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt32? {
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): UInt32(c - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): UInt32(c - UInt8(ascii: "a") + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(c - UInt8(ascii: "0") + 52)
            case UInt8(ascii: "+"): 62
            case UInt8(ascii: "/"): 63
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 4 * 3)
        var i = 0
        while i < chars.count {
            let last = i + 4 == chars.count
            let pad = last ? (chars[i + 3] == UInt8(ascii: "=") ? (chars[i + 2] == UInt8(ascii: "=") ? 2 : 1) : 0) : 0
            var n: UInt32 = 0
            for j in 0..<4 {
                if j >= 4 - pad {
                    n <<= 6
                    continue
                }
                guard let v = value(chars[i + j]) else { return nil }
                n = n << 6 | v
            }
            out.append(UInt8(n >> 16 & 0xFF))
            if pad < 2 { out.append(UInt8(n >> 8 & 0xFF)) }
            if pad < 1 { out.append(UInt8(n & 0xFF)) }
            i += 4
        }
        return out
    }
}
