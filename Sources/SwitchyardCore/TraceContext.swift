/// W3C trace context (`traceparent`) carried by every envelope.
public struct TraceContext: Sendable, Equatable {
    public var traceID: String  // 32 lower-case hex digits
    public var spanID: String  // 16 lower-case hex digits
    public var flags: String  // 2 hex digits
    /// Incoming `baggage` members other than `lane` (lanes are assigned here, never by the sender).
    public var baggage: String?

    public init(traceID: String, spanID: String, flags: String = "01", baggage: String? = nil) {
        self.traceID = traceID
        self.spanID = spanID
        self.flags = flags
        self.baggage = baggage
    }

    /// Parses a `traceparent` header; returns nil when it is absent or malformed
    /// (the caller then starts a new trace, as the W3C spec asks).
    public init?(traceparent: String?, baggage: String? = nil) {
        guard let value = traceparent else { return nil }
        let parts = value.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].count == 2, parts[0] != "ff",
            parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
            parts.allSatisfy({ $0.allSatisfy(\.isHexDigitLowercase) }),
            parts[1] != Substring(String(repeating: "0", count: 32)),
            parts[2] != Substring(String(repeating: "0", count: 16))
        else { return nil }
        self.init(
            traceID: String(parts[1]),
            spanID: String(parts[2]),
            flags: String(parts[3]),
            baggage: TraceContext.strippingLane(from: baggage)
        )
    }

    /// A fresh trace (sampled).
    /// A context to be generated later (`traceID` empty): a channel's message whose sender
    /// sent none gets one only if it goes further than the broker (journal, routing).
    public static func pending(baggage: String?) -> TraceContext {
        TraceContext(traceID: "", spanID: "", baggage: strippingLane(from: baggage))
    }

    public var isPending: Bool { traceID.isEmpty }

    /// (Its three numbers from one step of the shared random counter: once per message.)
    public static func generate(baggage: String? = nil) -> TraceContext {
        let (high, low, span) = FastRandom.next3()
        return TraceContext(
            traceID: Hex.string(high, low),
            spanID: Hex.string(span),
            flags: "01",
            baggage: strippingLane(from: baggage)
        )
    }

    /// The `traceparent` for the next hop: same trace, new span.
    public func childTraceparent() -> String {
        var rng = FastRandom()
        let span = rng.next()
        return rendered(spanCount: 16) { out, at in Hex.write(span, into: out, at: at) }
    }

    public var traceparent: String {
        rendered(spanCount: spanID.utf8.count) { out, at in
            spanID.withUTF8Bytes { bytes in
                for (k, b) in bytes.enumerated() { out[at + k] = b }
            }
        }
    }

    /// `00-{trace id}-{span}-{flags}` in one String of its final size (interpolation built
    /// two, once per request and message); `writeSpan` fills the span's `spanCount` bytes.
    private func rendered(spanCount: Int, writeSpan: (UnsafeMutableBufferPointer<UInt8>, Int) -> Void) -> String {
        String(unsafeUninitializedCapacity: 3 + traceID.utf8.count + 1 + spanCount + 1 + flags.utf8.count) { out in
            var i = 0
            func put(_ s: String) {
                s.withUTF8Bytes { bytes in
                    for b in bytes {
                        out[i] = b
                        i += 1
                    }
                }
            }
            put("00-")
            put(traceID)
            put("-")
            writeSpan(out, i)
            i += spanCount
            put("-")
            put(flags)
            return i
        }
    }

    /// `baggage` for the next hop, with `lane=` set to the assigned lane.
    public func outgoingBaggage(lane: String?) -> String? {
        guard let baggage, !baggage.isEmpty else { return lane.map { "lane=" + $0 } }
        guard let lane else { return baggage }
        return baggage + ",lane=" + lane
    }

    static func strippingLane(from baggage: String?) -> String? {
        guard let baggage else { return nil }
        let kept = baggage.split(separator: ",").map { $0.trimmingSpaces() }.filter { member in
            let key = member.split(separator: "=", maxSplits: 1).first.map { $0.trimmingSpaces() } ?? ""
            return !key.isEmpty && key != "lane"
        }
        return kept.isEmpty ? nil : kept.joined(separator: ",")
    }
}

extension Character {
    fileprivate var isHexDigitLowercase: Bool {
        ("0"..."9").contains(self) || ("a"..."f").contains(self)
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> String {
        var s = self
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}

/// A request's `traceparent` as the gateway passes it on: the caller's (a valid one), or a
/// fresh sampled trace's, kept as its three numbers and written as bytes where it goes (a
/// String is made only where one is asked for: no allocation per request on the gateway's path).
public struct Traceparent: Sendable {
    /// The caller's, as it came.
    public let given: String?
    private let high: UInt64
    private let low: UInt64
    private let span: UInt64

    public init(given: String) {
        self.given = given
        (high, low, span) = (0, 0, 0)
    }

    private init(high: UInt64, low: UInt64, span: UInt64) {
        given = nil
        (self.high, self.low, self.span) = (high, low, span)
    }

    /// A fresh trace, sampled (version 00, flags 01).
    public static func fresh() -> Traceparent {
        let (high, low, span) = FastRandom.next3()
        return Traceparent(high: high, low: low, span: span)
    }

    /// Its length in bytes.
    public var utf8Count: Int { given?.utf8.count ?? 55 }

    /// The trace id (32 hex digits; the access log's): a fresh trace's is not rendered and read back.
    public var traceID: String {
        guard let given else { return Hex.string(high, low) }
        return TraceContext(traceparent: given)?.traceID ?? ""
    }

    public var text: String {
        if let given { return given }
        return String(unsafeUninitializedCapacity: 55) { out in
            var cursor = ByteCursor(UnsafeMutableRawBufferPointer(out))
            write(into: &cursor)
            return cursor.count
        }
    }

    /// `00-{trace id}-{span}-01`, or the caller's.
    public func write(into cursor: inout ByteCursor) {
        if let given { return cursor.put(given) }
        cursor.put("00-")
        cursor.put(hex: high)
        cursor.put(hex: low)
        cursor.put(UInt8(ascii: "-"))
        cursor.put(hex: span)
        cursor.put("-01")
    }
}

/// Lower-case hex rendering of 64-bit words.
public enum Hex {
    /// 16 hex digits (no array made for the argument list: this runs several times a message).
    public static func string(_ word: UInt64) -> String {
        String(unsafeUninitializedCapacity: 16) { buffer in
            write(word, into: buffer, at: 0)
            return 16
        }
    }

    /// 32 hex digits.
    public static func string(_ first: UInt64, _ second: UInt64) -> String {
        String(unsafeUninitializedCapacity: 32) { buffer in
            write(first, into: buffer, at: 0)
            write(second, into: buffer, at: 16)
            return 32
        }
    }

    /// (The digits are `ByteCursor.put(hex:)`'s: one rule for every hex word written.)
    static func write(_ word: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>, at start: Int) {
        var cursor = ByteCursor(UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[start..<(start + 16)]))
        cursor.put(hex: word)
    }
}
