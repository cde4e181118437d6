import EpollTransport
public import NIOCore
public import NIOHTTP1
import SwitchyardCore

/// The parts of an HTTP/1.1 message that requests and responses share, as bytes: the header
/// section, the body's framing on the way in, and on the way out. The server codec (client
/// connections) and the gateway's upstream codec are built from them.
package enum HTTP1Message {
    /// The most a message head (start line and header fields) may take, on either side.
    package static let maxHeadBytes = 64 * 1024

    /// The allocator of the heads written: the channels' own (neither listener sets another),
    /// made here rather than asked of the channel per head (a reference taken and dropped).
    package static var allocator: ByteBufferAllocator { ByteBufferAllocator() }

    /// Where a connection's incoming bytes stand.
    package enum Inbound {
        /// A message head is next.
        case head
        case body(BodyReader)
        /// After an upgrade: the bytes are no longer HTTP's to parse.
        case upgraded
        /// Malformed: nothing more is read.
        case failed
    }

    /// What a malformed message was refused for.
    package struct Malformed: Error, CustomStringConvertible {
        package var description: String
        package init(_ description: String) { self.description = description }
    }

    /// A message's header fields, read in place, and what frames its body.
    package struct FieldSection {
        package var fields: [(String, String)] = []
        package var contentLength: Int?
        /// Transfer codings, lowercased, several headers joined by `, `.
        package var transferEncoding: String?
        package var upgrade = false
        /// `Expect` values, lowercased, several headers joined by `, `.
        package var expect: String?
        /// Read for passing on (`keptLines`): the hop-by-hop fields were left out; what they said.
        package var hop = HopByHop()
        /// Read for passing on: `x-switchyard-draining: true` (the instance is shutting down).
        package var draining = false

        package struct HopByHop {
            /// `connection: close`
            package var close = false
            /// `connection: keep-alive`
            package var keepAlive = false
            /// The `upgrade` field's value.
            package var upgrade: String?

            package init() {}
        }

        package init() {}

        /// Whether the codings are exactly `chunked`; a Malformed when the last one is not (the
        /// body's end cannot be known), nil for codings before `chunked` (not supported).
        package func isChunked() -> Result<Bool, Malformed>? {
            guard let transferEncoding else { return .success(false) }
            let codings = transferEncoding.split(separator: ",").map { String($0.filter { $0 != " " && $0 != "\t" }) }
            guard codings.last == "chunked" else { return .failure(Malformed("transfer-encoding must end with chunked")) }
            return codings.count == 1 ? .success(true) : nil
        }
    }

    /// Whether a head to be written says its body's length, and its first transfer-encoding:
    /// one pass over its names (the common answer, with a length and no coding, is then
    /// written without another).
    package static func framing(of headers: HTTPHeaders) -> (length: Bool, transferEncoding: String?) {
        var length = false
        var transferEncoding: String?
        for (name, value) in headers {
            if !length && HTTP1Syntax.name(name, is: "content-length") {
                length = true
            } else if transferEncoding == nil && HTTP1Syntax.name(name, is: "transfer-encoding") {
                transferEncoding = value
            }
        }
        return (length, transferEncoding)
    }

    /// Field lines, each ending with CR LF (the blank line after them not included).
    package static func fieldSection(_ raw: UnsafeRawBufferPointer) -> Result<FieldSection, Malformed> {
        var section = FieldSection()
        var none: ByteBuffer?
        if let malformed = fieldSection(raw, keptLines: &none, into: &section) { return .failure(malformed) }
        return .success(section)
    }

    /// As above, into a section the caller holds (a fresh one: nothing is cleared); nil when
    /// well-formed. With `keptLines` (a proxy passing the fields on as bytes), the fields are
    /// copied there as they came, one line each with its CR LF, and not made Strings in
    /// `fields`, and the hop-by-hop ones are left out (`hop` says what they held).
    package static func fieldSection(_ raw: UnsafeRawBufferPointer, keptLines: inout ByteBuffer?, into section: inout FieldSection) -> Malformed? {
        let proxying = keptLines != nil
        // The fields `connection` names (lowercased): left out of the kept lines too.
        var nominated: [String] = []
        if !proxying { section.fields.reserveCapacity(8) }
        var position = 0
        // Kept lines are copied a run of them at a time (usually the whole section at once).
        var run: Int?
        while position < raw.count {
            let lineStart = position
            if raw[position] == 0x20 || raw[position] == 0x09 { return Malformed("folded header line (obs-fold)") }
            guard let line = fieldLine(raw, from: position) else {
                let withEnd = HTTP1Syntax.lineLength(UnsafeRawBufferPointer(rebasing: raw[position...])) != nil
                return Malformed(withEnd ? "malformed header line" : "header line without CR LF")
            }
            let name = UnsafeRawBufferPointer(rebasing: raw[line.name])
            let value = UnsafeRawBufferPointer(rebasing: raw[line.value])
            position = line.next
            if HTTP1Syntax.name(name, is: "content-length") {
                guard let length = HTTP1Syntax.decimal(value) else { return Malformed("invalid content-length") }
                guard section.contentLength == nil else { return Malformed("more than one content-length") }
                section.contentLength = length
            } else if HTTP1Syntax.name(name, is: "transfer-encoding") {
                let coding = String(decoding: value, as: UTF8.self).lowercased()
                section.transferEncoding = section.transferEncoding.map { $0 + ", " + coding } ?? coding
            } else if HTTP1Syntax.name(name, is: "upgrade") {
                section.upgrade = true
            } else if HTTP1Syntax.name(name, is: "expect") {
                let expectation = String(decoding: value, as: UTF8.self).lowercased()
                section.expect = section.expect.map { $0 + ", " + expectation } ?? expectation
            }
            if proxying && HTTP1Syntax.isHopByHop(name) {
                if HTTP1Syntax.name(name, is: "connection") {
                    let options = HTTP1Syntax.connectionOptions(value)
                    section.hop.close = section.hop.close || options.close
                    section.hop.keepAlive = section.hop.keepAlive || options.keepAlive
                    if !options.nominated.isEmpty { nominated += options.nominated }
                } else if HTTP1Syntax.name(name, is: "upgrade") {
                    section.hop.upgrade = section.hop.upgrade ?? String(decoding: value, as: UTF8.self)
                }
                if let start = run {
                    keptLines!.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start..<lineStart]))
                    run = nil
                }
                continue
            }
            if proxying && HTTP1Syntax.name(name, is: "x-switchyard-draining") {
                section.draining = section.draining || HTTP1Syntax.name(value, is: "true")
            }
            if proxying {
                if run == nil { run = lineStart }
                continue
            }
            section.fields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        if let start = run { keptLines!.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start..<min(position, raw.count)])) }
        if !nominated.isEmpty, let lines = keptLines {
            // The fields `connection` names are this hop's own too (RFC 9110 §7.6.1); the
            // `connection` line may come after them, so they leave once all are read.
            keptLines = lines.withUnsafeReadableBytes { without(nominated, lines: $0) }
        }
        return nil
    }

    /// Field lines (each with its CR LF, checked before) without those whose names are listed.
    private static func without(_ names: [String], lines: UnsafeRawBufferPointer) -> ByteBuffer {
        var kept = ByteBuffer()
        kept.reserveCapacity(lines.count)
        var position = 0
        while position < lines.count, let n = HTTP1Syntax.lineLength(UnsafeRawBufferPointer(rebasing: lines[position...])) {
            let line = UnsafeRawBufferPointer(rebasing: lines[position..<(position + n + 2)])
            position += n + 2
            let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.count
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            if !names.contains(name) { kept.writeBytes(line) }
        }
        return kept
    }

    /// Field lines checked before (`fieldSection` with `keptLines`) as a header list.
    package static func headers(lines: ByteBuffer) -> HTTPHeaders {
        let parsed = lines.withUnsafeReadableBytes { fieldSection($0) }
        guard case .success(let section) = parsed else { return HTTPHeaders() }
        return HTTPHeaders(section.fields)
    }

    /// The field line that starts at `start`, read in one pass: its name (a token), its value
    /// (visible characters, obs-text, spaces and tabs; trimmed) and where the next line starts,
    /// after its CR LF. Nil when malformed: no colon, a byte a name or value may not hold (a
    /// control byte, a bare CR or LF), or no CR LF.
    @inline(__always)
    static func fieldLine(_ raw: UnsafeRawBufferPointer, from start: Int) -> (name: Range<Int>, value: Range<Int>, next: Int)? {
        let count = raw.count
        var i = start
        while i < count && raw[i] != UInt8(ascii: ":") {
            guard HTTP1Syntax.isTokenByte(raw[i]) else { return nil }
            i += 1
        }
        guard i > start, i < count else { return nil }
        let nameEnd = i
        i += 1
        while i < count && (raw[i] == 0x20 || raw[i] == 0x09) { i += 1 }
        let valueStart = i
        // Eight bytes at a time while none of them is a control byte or DEL (word tricks: a byte
        // below 0x20 sets its high bit in `(w - 0x20…) & ~w`, a zero byte of `w ^ 0x7F…` does in
        // `(x - 0x01…) & ~x`; the first word with one goes byte by byte).
        if let base = raw.baseAddress {
            let ones: UInt64 = 0x0101_0101_0101_0101
            let highs: UInt64 = 0x8080_8080_8080_8080
            while i + 8 <= count {
                let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                let x = w ^ (ones &* 0x7F)
                if ((w &- ones &* 0x20) & ~w | (x &- ones) & ~x) & highs != 0 { break }
                i += 8
            }
        }
        while i < count {
            let b = raw[i]
            if HTTP1Syntax.isFieldValueByte(b) {
                i += 1
                continue
            }
            // The line ends at its CR LF; any other control byte is malformed.
            guard b == 13, i + 1 < count, raw[i + 1] == 10 else { return nil }
            var end = i
            while end > valueStart && (raw[end - 1] == 0x20 || raw[end - 1] == 0x09) { end -= 1 }
            return (start..<nameEnd, valueStart..<end, i + 2)
        }
        return nil
    }

    /// Reads a body framed by a length or chunked (with trailers) from the bytes as they come.
    package struct BodyReader {
        enum State {
            case fixed(remaining: Int)
            case chunkSize
            case chunkData(remaining: Int)
            case chunkDataEnd
            case trailers
            /// Delimited by the connection's close (responses only).
            case untilClose
            /// All of the body was read: its end is next.
            case ending
            case done
        }

        package enum Event {
            case body(ByteBuffer)
            case end(HTTPHeaders?)
        }

        static let maxChunkLineBytes = 1024
        static let maxTrailerBytes = 64 * 1024

        var state: State
        /// (Nil until a trailer field comes: a reader is copied several times per message, and
        /// an empty list is a reference to retain each time.)
        private var trailers: [(String, String)]?
        private var trailerBytes = 0

        package static func length(_ n: Int) -> BodyReader { BodyReader(state: n > 0 ? .fixed(remaining: n) : .ending) }
        package static let chunked = BodyReader(state: .chunkSize)
        package static let untilClose = BodyReader(state: .untilClose)

        /// Content is to come (a length above 0, or chunks).
        package var expectsContent: Bool {
            switch state {
            case .ending, .done: false
            default: true
            }
        }

        package var isUntilClose: Bool {
            if case .untilClose = state { return true }
            return false
        }

        /// The next part the bytes complete (taking them from `buffer`): body parts, then the end
        /// (also of a body with no bytes); nil when more bytes are needed or the end was given.
        /// Throws on a malformed chunked framing.
        package mutating func next(_ buffer: inout ByteBuffer) throws(Malformed) -> Event? {
            while true {
                let available = buffer.readableBytes
                switch state {
                case .done:
                    return nil
                case .ending:
                    state = .done
                    return .end(nil)
                case .untilClose:
                    return available > 0 ? .body(buffer.readSlice(length: available)!) : nil
                case .fixed(let remaining):
                    guard available > 0 else { return nil }
                    let n = min(remaining, available)
                    state = remaining == n ? .ending : .fixed(remaining: remaining - n)
                    return .body(buffer.readSlice(length: n)!)
                case .chunkSize:
                    guard let length = buffer.withUnsafeReadableBytes(HTTP1Syntax.lineLength) else {
                        if available > Self.maxChunkLineBytes { throw Malformed("chunk size line longer than 1 KiB") }
                        return nil
                    }
                    let size = buffer.withUnsafeReadableBytes { HTTP1Syntax.chunkSize(UnsafeRawBufferPointer(rebasing: $0[..<length])) }
                    buffer.moveReaderIndex(forwardBy: length + 2)
                    guard let size else { throw Malformed("invalid chunk size") }
                    state = size == 0 ? .trailers : .chunkData(remaining: size)
                case .chunkData(let remaining):
                    guard available > 0 else { return nil }
                    let n = min(remaining, available)
                    state = remaining == n ? .chunkDataEnd : .chunkData(remaining: remaining - n)
                    return .body(buffer.readSlice(length: n)!)
                case .chunkDataEnd:
                    guard available >= 2 else { return nil }
                    guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw Malformed("chunk data not followed by CR LF") }
                    state = .chunkSize
                case .trailers:
                    guard let length = buffer.withUnsafeReadableBytes(HTTP1Syntax.lineLength) else {
                        if trailerBytes + available > Self.maxTrailerBytes { throw Malformed("trailers larger than 64 KiB") }
                        return nil
                    }
                    trailerBytes += length + 2
                    guard trailerBytes <= Self.maxTrailerBytes else { throw Malformed("trailers larger than 64 KiB") }
                    if length == 0 {
                        buffer.moveReaderIndex(forwardBy: 2)
                        state = .done
                        let fields = trailers
                        trailers = nil
                        return .end(fields.map { HTTPHeaders($0) })
                    }
                    // (The same rule as a head's field lines.)
                    let field = buffer.withUnsafeReadableBytes { bytes in
                        let line = UnsafeRawBufferPointer(rebasing: bytes[..<(length + 2)])
                        return HTTP1Message.fieldLine(line, from: 0).map {
                            (String(decoding: line[$0.name], as: UTF8.self), String(decoding: line[$0.value], as: UTF8.self))
                        }
                    }
                    buffer.moveReaderIndex(forwardBy: length + 2)
                    guard let field else { throw Malformed("malformed trailer field") }
                    if trailers == nil { trailers = [] }
                    trailers!.append(field)
                }
            }
        }
    }

    /// Writes a message's head and body as bytes: the head, small bodies and the end go out
    /// as one buffer; a body of unknown length is chunked.
    package struct Writer {
        /// Body bytes up to this size are copied behind the head (one buffer, one iovec).
        static let coalesceBytes = 4096

        package var chunked = false
        /// A response to HEAD: its head says what a GET would get, and no body follows.
        package var suppressBody = false
        private var pending: ByteBuffer?
        /// The last small buffer handed to the channel: once the channel has written it, it is
        /// this writer's alone again and the next message is written into it (no allocation per
        /// message; if the channel still holds it, clearing it makes a fresh one).
        private var spare: ByteBuffer?
        /// Buffers kept for reuse are at most this large (an idle connection keeps one).
        static let spareBytes = 2048
        /// The connection the codec writes to directly (see `EpollDirectHandler`); nil: the
        /// bytes go down the pipeline.
        package var direct: DirectConnection?

        package init() {}

        /// Starts a message: `line` writes its start line (and `lineBytes` more than 96 bytes).
        package mutating func head(_ headers: HTTPHeaders, allocator: ByteBufferAllocator, lineBytes: Int = 0, line: (inout ByteBuffer) -> Void) {
            // Sized for the fields as they are (no growing: a forwarded head often passes 256 bytes).
            let fieldBytes = Self.fieldBytes(headers)
            head(size: 96 + lineBytes + fieldBytes, allocator: allocator) { out in
                line(&out)
                Self.writeFields(headers, bytes: fieldBytes, into: &out)
            }
        }

        /// Starts a message of about `size` bytes: `write` writes its start line and fields (the
        /// blank line after them is added here).
        package mutating func head(size: Int, allocator: ByteBufferAllocator, write: (inout ByteBuffer) -> Void) {
            var out: ByteBuffer
            if pending == nil, var reused = spare.take() {
                reused.clear(minimumCapacity: size)
                out = reused
            } else {
                out = allocator.buffer(capacity: size + (pending?.readableBytes ?? 0))
            }
            if let earlier = pending { out.writeImmutableBuffer(earlier) }  // an interim answer not yet written
            write(&out)
            out.writeStaticString("\r\n")
            pending = out
        }

        /// The bytes `name: value` lines take, each with its CR LF.
        static func fieldBytes(_ headers: HTTPHeaders) -> Int {
            var size = 0
            for (name, value) in headers { size += name.utf8.count + value.utf8.count + 4 }
            return size
        }

        /// `bytes`: `fieldBytes(headers)`, when the caller has it already.
        package static func writeFields(_ headers: HTTPHeaders, bytes: Int? = nil, into out: inout ByteBuffer) {
            out.write(capacity: bytes ?? fieldBytes(headers)) { cursor in
                for (name, value) in headers {
                    cursor.put(name)
                    cursor.put(": ")
                    cursor.put(value)
                    cursor.put("\r\n")
                }
            }
        }

        package mutating func body(_ body: IOData, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
            guard !suppressBody else {
                promise?.succeed(())
                return
            }
            let size = body.readableBytes
            if chunked && size > 0 {
                append(context) {
                    $0.writeString(String(size, radix: 16))
                    $0.writeStaticString("\r\n")
                }
            }
            if case .byteBuffer(let bytes) = body, size <= Self.coalesceBytes, promise == nil {
                append(context) { $0.writeImmutableBuffer(bytes) }
            } else if size > 0 || promise != nil {
                writePending(context: context, promise: nil)
                if case .byteBuffer(let bytes) = body {
                    write(bytes, context: context, promise: promise)
                } else {
                    context.write(NIOAny(body), promise: promise)
                }
            }
            if chunked && size > 0 { append(context) { $0.writeStaticString("\r\n") } }
        }

        package mutating func end(_ trailers: HTTPHeaders?, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
            if chunked {
                append(context) {
                    $0.writeStaticString("0\r\n")
                    if let trailers { Self.writeFields(trailers, into: &$0) }
                    $0.writeStaticString("\r\n")
                }
            }
            writePending(context: context, promise: promise)
            chunked = false
            suppressBody = false
        }

        private mutating func append(_ context: ChannelHandlerContext, _ write: (inout ByteBuffer) -> Void) {
            if pending == nil { pending = context.channel.allocator.buffer(capacity: 64) }
            write(&pending!)
        }

        /// Hands the bytes held back to the channel.
        package mutating func writePending(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
            if let bytes = pending {
                pending = nil
                if bytes.capacity <= Self.spareBytes { spare = bytes }
                write(bytes, context: context, promise: promise)
            } else if let promise {
                // Nothing to write, but the promise completes in order with the writes before it.
                write(ByteBuffer(), context: context, promise: promise)
            }
        }

        private func write(_ bytes: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
            if let direct {
                direct.write(bytes, promise: promise)
            } else {
                context.write(NIOAny(IOData.byteBuffer(bytes)), promise: promise)
            }
        }
    }
}

extension Optional where Wrapped == ByteBuffer {
    /// Adds a read's bytes to those not yet parsed (taking the read's buffer as it is when
    /// none wait).
    package mutating func append(read bytes: inout ByteBuffer) {
        if self == nil || self!.readableBytes == 0 {
            self = bytes
        } else {
            self!.writeBuffer(&bytes)
        }
    }

    /// After a read burst: drops an empty buffer (the next read's buffer is taken as it is), or
    /// the parsed start of a long-lived one.
    package mutating func compact() {
        guard let held = self else { return }
        if held.readableBytes == 0 {
            self = nil
        } else if held.readerIndex > 16 * 1024 {
            self!.discardReadBytes()
        }
    }

    /// A codec leaves the pipeline (its connection becomes a tunnel): the bytes it held go on
    /// to the handler after it.
    package mutating func handOver(context: ChannelHandlerContext) {
        guard let rest = self, rest.readableBytes > 0 else { return }
        self = nil
        context.fireChannelRead(NIOAny(rest))
        context.fireChannelReadComplete()
    }
}

/// A codec (either side of HTTP/1.1) first in its pipeline that, on Switchyard's own transport,
/// takes the connection's bytes straight from it and writes them straight back
/// (`EpollDirectHandler`); bytes that come through the pipeline are read the same way.
package protocol DirectCodec: EpollDirectHandler, BatchFlushing {
    /// The connection written to directly (the codec's writer's), nil when not attached.
    var direct: DirectConnection? { get set }
    /// Bytes read, as `channelRead` hands them on.
    func take(_ bytes: ByteBuffer, context: ChannelHandlerContext)
    func channelReadComplete(context: ChannelHandlerContext)
}

extension DirectCodec {
    /// The codec is first in its pipeline now (nothing before it takes or changes the bytes):
    /// on Switchyard's own transport it takes them from the connection directly.
    package func takeBytesDirectly() {
        guard let context = flushContext else { return }
        direct = DirectConnection.attach(self, to: context.channel)
    }

    /// The codec leaves its pipeline: the pipeline carries the bytes again.
    package func leaveConnection() {
        direct?.detach(self)
        direct = nil
    }

    /// What the codec wrote goes out at the end of the loop's batch: asked of the connection
    /// directly (it waits for the batch's end itself), else through `FlushBatch`.
    package func flushWritten(context: ChannelHandlerContext) {
        if let direct { direct.flush() } else { flushAtBatchEnd(context: context) }
    }

    package func directRead(_ bytes: ByteBuffer) {
        guard let context = flushContext else { return }
        take(bytes, context: context)
    }

    package func directReadComplete() {
        guard let context = flushContext else { return }
        channelReadComplete(context: context)
    }
}
