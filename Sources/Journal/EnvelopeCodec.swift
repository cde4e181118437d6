import NIOCore
public import SwitchyardCore

/// The binary form of an envelope in the journal: a version byte, then each field
/// length-prefixed. Decoding never trusts a length: a short or malformed record is nil.
public enum EnvelopeCodec {
    static let version: UInt8 = 1

    /// Writes the record in one pass of plain stores into reserved space (every message is
    /// journaled: no per-field capacity checks); the same bytes as `encodeByFields`.
    public static func encode(_ e: Envelope, into buffer: inout ByteBuffer) {
        encode(e, into: &buffer, size: size(of: e))
    }

    /// `encode` when the caller has `size(of: e)` already (it sized the buffer with it).
    static func encode(_ e: Envelope, into buffer: inout ByteBuffer, size: Int) {
        buffer.write(capacity: size) { out in
            out.put(version)
            out.lengthPrefixed(e.id)
            out.lengthPrefixed(e.channel)
            out.lengthPrefixed(e.topic)
            out.lengthPrefixed(optional: e.product)
            out.lengthPrefixed(optional: e.device)
            out.lengthPrefixed(optional: e.lane)
            out.put(integer: e.receivedAt)
            out.put(e.idFromSender ? 1 : 0)
            let trace = e.trace
            out.lengthPrefixed(trace.traceID)
            out.lengthPrefixed(trace.spanID)
            out.lengthPrefixed(trace.flags)
            out.lengthPrefixed(optional: trace.baggage)
            if case .v4(let v4)? = e.clientAddress {
                let lengthAt = out.count
                out.put(integer: UInt32(0))
                withUnsafeBytes(of: v4.address) { socketAddress in
                    for (i, byte) in IPBytes.v4(socketAddress).enumerated() {
                        if i > 0 { out.put(UInt8(ascii: ".")) }
                        if byte >= 100 { out.put(UInt8(ascii: "0") + byte / 100) }
                        if byte >= 10 { out.put(UInt8(ascii: "0") + byte / 10 % 10) }
                        out.put(UInt8(ascii: "0") + byte % 10)
                    }
                }
                out.set(integer: UInt32(out.count - lengthAt - 4), at: lengthAt)
            } else {
                out.lengthPrefixed(optional: e.clientAddress?.ipAddress)
            }
            let headers = e.headers
            out.put(integer: UInt32(headers.count))
            for h in headers {
                out.lengthPrefixed(h.name)
                out.lengthPrefixed(h.value)
            }
            out.put(integer: UInt32(e.tags.count))
            e.forEachTagInKeyOrder { name, value in
                out.lengthPrefixed(name)
                out.lengthPrefixed(value)
            }
            let payload = e.payload
            out.put(integer: UInt32(payload.readableBytes))
            payload.withUnsafeReadableBytes { out.put($0) }
        }
    }

    /// Field by field through `ByteBuffer`'s writers: the reference `encode` must equal
    /// byte for byte (tests), and the format's plainest statement.
    static func encodeByFields(_ e: Envelope, into buffer: inout ByteBuffer) {
        buffer.writeInteger(version)
        writeString(e.id, &buffer)
        writeString(e.channel, &buffer)
        writeString(e.topic, &buffer)
        writeOptional(e.product, &buffer)
        writeOptional(e.device, &buffer)
        writeOptional(e.lane, &buffer)
        buffer.writeInteger(e.receivedAt)
        buffer.writeInteger(UInt8(e.idFromSender ? 1 : 0))
        writeString(e.trace.traceID, &buffer)
        writeString(e.trace.spanID, &buffer)
        writeString(e.trace.flags, &buffer)
        writeOptional(e.trace.baggage, &buffer)
        writeOptional(e.clientAddress?.ipAddress, &buffer)
        buffer.writeInteger(UInt32(e.headers.count))
        for h in e.headers {
            writeString(h.name, &buffer)
            writeString(h.value, &buffer)
        }
        buffer.writeInteger(UInt32(e.tags.count))
        for (k, v) in e.tags.sorted(by: { $0.key < $1.key }) {
            writeString(k, &buffer)
            writeString(v, &buffer)
        }
        buffer.writeInteger(UInt32(e.payload.readableBytes))
        var payload = e.payload
        buffer.writeBuffer(&payload)
    }

    /// At least the encoded size (a frame of this capacity never grows while it is written).
    public static func size(of e: Envelope) -> Int {
        // 111 bytes of lengths and fixed fields, and a client address's text (≤ 45 bytes).
        var n = 176 + e.id.utf8.count + e.channel.utf8.count + e.topic.utf8.count + e.payload.readableBytes
        n += (e.product?.utf8.count ?? 0) + (e.device?.utf8.count ?? 0) + (e.lane?.utf8.count ?? 0)
        n += e.trace.traceID.utf8.count + e.trace.spanID.utf8.count + e.trace.flags.utf8.count + (e.trace.baggage?.utf8.count ?? 0)
        for h in e.headers { n += 8 + h.name.utf8.count + h.value.utf8.count }
        for (k, v) in e.tags { n += 8 + k.utf8.count + v.utf8.count }
        return n
    }

    public static func decode(_ buffer: inout ByteBuffer) -> Envelope? {
        guard buffer.readInteger(as: UInt8.self) == version,
            let id = readString(&buffer), let channel = readString(&buffer), let topic = readString(&buffer),
            let product = readOptional(&buffer), let device = readOptional(&buffer), let lane = readOptional(&buffer),
            let receivedAt = buffer.readInteger(as: UInt64.self), let fromSender = buffer.readInteger(as: UInt8.self),
            let traceID = readString(&buffer), let spanID = readString(&buffer), let flags = readString(&buffer),
            let baggage = readOptional(&buffer), let address = readOptional(&buffer),
            let headerCount = buffer.readInteger(as: UInt32.self), headerCount <= 10_000
        else { return nil }
        var headers: [HeaderField] = []
        for _ in 0..<headerCount {
            guard let n = readString(&buffer), let v = readString(&buffer) else { return nil }
            headers.append(HeaderField(n, v))
        }
        guard let tagCount = buffer.readInteger(as: UInt32.self), tagCount <= 10_000 else { return nil }
        var tags: [String: String] = [:]
        for _ in 0..<tagCount {
            guard let k = readString(&buffer), let v = readString(&buffer) else { return nil }
            tags[k] = v
        }
        guard let length = buffer.readInteger(as: UInt32.self), let payload = buffer.readSlice(length: Int(length)) else {
            return nil
        }
        return Envelope(
            id: id,
            channel: channel,
            topic: topic,
            product: product,
            device: device,
            payload: payload,
            headers: headers,
            tags: tags,
            lane: lane,
            receivedAt: receivedAt,
            trace: TraceContext(traceID: traceID, spanID: spanID, flags: flags, baggage: baggage),
            clientAddress: address.flatMap { try? SocketAddress(ipAddress: $0, port: 0) },
            idFromSender: fromSender == 1
        )
    }

    private static func writeString(_ s: String, _ buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(s.utf8.count))
        buffer.writeString(s)
    }

    private static func writeOptional(_ s: String?, _ buffer: inout ByteBuffer) {
        guard let s else {
            buffer.writeInteger(UInt32.max)
            return
        }
        writeString(s, &buffer)
    }

    private static func readString(_ buffer: inout ByteBuffer) -> String? {
        guard let length = buffer.readInteger(as: UInt32.self), length != UInt32.max, Int(length) <= buffer.readableBytes else {
            return nil
        }
        return buffer.readString(length: Int(length))
    }

    /// `.some(nil)` for an absent value, `nil` for a malformed one.
    private static func readOptional(_ buffer: inout ByteBuffer) -> String?? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        if length == UInt32.max {
            buffer.moveReaderIndex(forwardBy: 4)
            return .some(nil)
        }
        guard let s = readString(&buffer) else { return nil }
        return .some(s)
    }
}

/// A dead letter on disk: its fields, then the envelope (`key` is the record's sequence).
public enum DeadLetterCodec {
    public static func encode(_ d: DeadLetter, into buffer: inout ByteBuffer) {
        var fields = ByteBuffer()
        for s in [d.id, d.route, d.service ?? "\u{0}", d.reason, d.lastError] {
            fields.writeInteger(UInt32(s.utf8.count))
            fields.writeString(s)
        }
        fields.writeInteger(UInt32(max(0, d.attempts)))
        fields.writeInteger(d.at)
        buffer.writeInteger(UInt32(fields.readableBytes))
        buffer.writeBuffer(&fields)
        EnvelopeCodec.encode(d.envelope, into: &buffer)
    }

    public static func decode(_ buffer: inout ByteBuffer) -> DeadLetter? {
        guard let length = buffer.readInteger(as: UInt32.self), var fields = buffer.readSlice(length: Int(length)) else { return nil }
        var strings: [String] = []
        for _ in 0..<5 {
            guard let n = fields.readInteger(as: UInt32.self), let s = fields.readString(length: Int(n)) else { return nil }
            strings.append(s)
        }
        guard let attempts = fields.readInteger(as: UInt32.self), let at = fields.readInteger(as: UInt64.self),
            let envelope = EnvelopeCodec.decode(&buffer)
        else { return nil }
        return DeadLetter(
            id: strings[0],
            route: strings[1],
            service: strings[2] == "\u{0}" ? nil : strings[2],
            reason: strings[3],
            attempts: Int(attempts),
            lastError: strings[4],
            at: at,
            envelope: envelope
        )
    }
}

extension ByteCursor {
    /// A string as the journal keeps it: its length (UInt32), then its bytes.
    fileprivate mutating func lengthPrefixed(_ s: String) {
        put(integer: UInt32(s.utf8.count))
        put(s)
    }

    /// `UInt32.max` for none.
    fileprivate mutating func lengthPrefixed(optional s: String?) {
        guard let s else { return put(integer: UInt32.max) }
        lengthPrefixed(s)
    }
}
