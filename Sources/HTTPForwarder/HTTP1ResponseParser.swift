import NIOCore
import SwitchyardCore

/// An HTTP/1.1 response parser as a plain state machine value: bytes in, responses out.
///
/// The forwarder talks to services, not to the internet, but a service can still answer
/// anything; every malformed response is an error (the connection is then closed), never
/// a crash. Handles `content-length`, `chunked` (trailers ignored), bodies delimited by
/// connection close, 1xx interim responses, and 204/304 without a body.
package struct HTTP1ResponseParser {
    package struct Response: Equatable {
        package var status: Int
        package var keepAlive: Bool
        /// The first bytes of the body (error reports only need the start).
        var snippet: String
        /// `x-switchyard-draining: true`: the instance asks for no new requests.
        var draining = false
        /// An explicit `Connection: close` (not just HTTP/1.0's default).
        var closeHeader = false
    }

    package enum Event: Equatable {
        case response(Response)
        case error(String)
    }

    enum State {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
        case failed
    }

    static let maxHeadBytes = 64 * 1024
    static let snippetBytes = 256

    package init() {}

    private(set) var state = State.head
    private var status = 0
    private var keepAlive = true
    private var draining = false
    private var closeHeader = false
    private var snippet: [UInt8] = []

    /// Bytes of an unfinished head, chunk-size line or trailer, kept until the rest arrives
    /// (bounded by the limits of each: 64 KiB, 1 KiB, 64 KiB).
    private var partial: ByteBuffer?

    /// Consumes all of `buffer`; returns the events completed by these bytes. What cannot be
    /// parsed yet (a head or line cut by a TCP read) is kept for the next call.
    package mutating func feed(_ buffer: inout ByteBuffer) -> [Event] {
        guard var held = partial else {
            let events = parse(&buffer)
            if buffer.readableBytes > 0 {
                partial = buffer.slice()
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
            return events
        }
        partial = nil
        held.writeBuffer(&buffer)
        let events = parse(&held)
        if held.readableBytes > 0 { partial = held }
        return events
    }

    private mutating func parse(_ buffer: inout ByteBuffer) -> [Event] {
        var events: [Event] = []
        while buffer.readableBytes > 0 {
            switch state {
            case .failed:
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                return events
            case .head:
                guard let length = HTTP1Syntax.headLength(buffer) else {
                    if buffer.readableBytes > Self.maxHeadBytes { return events + [fail("response head larger than 64 KiB")] }
                    return events
                }
                guard length <= Self.maxHeadBytes else { return events + [fail("response head larger than 64 KiB")] }
                let head = buffer.readSlice(length: length)!
                if let error = parseHead(head) { return events + [fail(error)] }
                if let done = afterHead() { events.append(done) }
            case .fixedBody(let remaining):
                let n = min(remaining, buffer.readableBytes)
                take(&buffer, n)
                if remaining - n == 0 { events.append(finish()) } else { state = .fixedBody(remaining: remaining - n) }
            case .chunkSize:
                guard let line = readLine(&buffer) else {
                    if buffer.readableBytes > 1024 { return events + [fail("chunk size line too long")] }
                    return events
                }
                guard let size = line.withUnsafeBytes(HTTP1Syntax.chunkSize) else { return events + [fail("invalid chunk size")] }
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                let n = min(remaining, buffer.readableBytes)
                take(&buffer, n)
                state = remaining - n == 0 ? .chunkDataEnd : .chunkData(remaining: remaining - n)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else { return events }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { return events + [fail("chunk not followed by CRLF")] }
                state = .chunkSize
            case .trailers:
                guard let line = readLine(&buffer) else {
                    if buffer.readableBytes > Self.maxHeadBytes { return events + [fail("trailers too long")] }
                    return events
                }
                if line.isEmpty { events.append(finish()) }
            case .untilClose:
                take(&buffer, buffer.readableBytes)
            }
        }
        return events
    }

    /// The connection closed: completes a close-delimited body, else reports what was cut off.
    package mutating func connectionClosed() -> Event? {
        switch state {
        case .untilClose:
            keepAlive = false
            return finish()
        case .head:
            return nil
        case .failed:
            return nil
        default:
            state = .failed
            return .error("connection closed in the middle of the response body")
        }
    }

    private mutating func fail(_ message: String) -> Event {
        state = .failed
        return .error("invalid HTTP response from the instance: \(message)")
    }

    private mutating func take(_ buffer: inout ByteBuffer, _ n: Int) {
        if status >= 300 && snippet.count < Self.snippetBytes {
            let keep = min(n, Self.snippetBytes - snippet.count)
            snippet += buffer.readableBytesView.prefix(keep)
        }
        buffer.moveReaderIndex(forwardBy: n)
    }

    private func readLine(_ buffer: inout ByteBuffer) -> [UInt8]? {
        guard let lineLength = buffer.withUnsafeReadableBytes(HTTP1Syntax.lineLength) else { return nil }
        let line = buffer.readBytes(length: lineLength)!
        buffer.moveReaderIndex(forwardBy: 2)
        return line
    }

    private mutating func finish() -> Event {
        let response = Response(
            status: status,
            keepAlive: keepAlive,
            snippet: String(decoding: snippet, as: UTF8.self),
            draining: draining,
            closeHeader: closeHeader
        )
        state = .head
        snippet = []
        return .response(response)
    }

    private var bodyKind: (chunked: Bool, length: Int?) = (false, nil)

    /// Parses the status line and the headers that frame the body (in place: the head of
    /// every forwarded message's answer passes here, and only the rare headers become Strings).
    private mutating func parseHead(_ head: ByteBuffer) -> String? {
        head.withUnsafeReadableBytes { parseHead($0) }
    }

    private mutating func parseHead(_ raw: UnsafeRawBufferPointer) -> String? {
        var position = 0
        /// The next line without its CR LF (nil at the end).
        func nextLine() -> UnsafeRawBufferPointer? {
            guard position < raw.count else { return nil }
            var end = position
            while end < raw.count && raw[end] != 10 { end += 1 }
            var lineEnd = end
            if lineEnd > position && raw[lineEnd - 1] == 13 { lineEnd -= 1 }
            defer { position = end + 1 }
            return UnsafeRawBufferPointer(rebasing: raw[position..<lineEnd])
        }
        guard let statusLine = nextLine() else { return "empty status line" }
        guard let code = HTTP1Syntax.statusLine(statusLine)?.code else {
            return "bad status line \"\(String(decoding: statusLine.prefix(64), as: UTF8.self))\""
        }
        status = code
        keepAlive = statusLine[7] != UInt8(ascii: "0")  // HTTP/1.0 closes unless asked
        draining = false
        closeHeader = false
        bodyKind = (false, nil)
        var blankSeen = false
        while let line = nextLine() {
            if line.isEmpty {
                blankSeen = true
                continue
            }
            guard !blankSeen, let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return "header line without a colon" }
            let name = UnsafeRawBufferPointer(rebasing: line[..<colon])
            let rawValue = HTTP1Syntax.trimmed(UnsafeRawBufferPointer(rebasing: line[(colon + 1)...]))
            if HTTP1Syntax.name(name, is: "content-length") {
                guard let n = HTTP1Syntax.decimal(rawValue) else {
                    return "invalid content-length \"\(String(decoding: rawValue.prefix(64), as: UTF8.self))\""
                }
                if let existing = bodyKind.length, existing != n { return "conflicting content-length headers" }
                bodyKind.length = n
                continue
            }
            let isTransferEncoding = HTTP1Syntax.name(name, is: "transfer-encoding")
            let isConnection = !isTransferEncoding && HTTP1Syntax.name(name, is: "connection")
            let isDraining = !isTransferEncoding && !isConnection && HTTP1Syntax.name(name, is: "x-switchyard-draining")
            guard isTransferEncoding || isConnection || isDraining else { continue }
            let value = String(decoding: rawValue, as: UTF8.self).lowercased()
            if isTransferEncoding {
                guard value.split(separator: ",").last.map({ $0.trimmingHTTPWhitespace() }) == "chunked" else {
                    return "unsupported transfer-encoding \"\(value)\""
                }
                bodyKind.chunked = true
            } else if isConnection {
                let tokens = value.split(separator: ",").map { $0.trimmingHTTPWhitespace() }
                if tokens.contains("close") { (keepAlive, closeHeader) = (false, true) }
                if tokens.contains("keep-alive") { keepAlive = true }
            } else {
                draining = value == "true"
            }
        }
        if bodyKind.chunked && bodyKind.length != nil { return "both content-length and chunked" }
        return nil
    }

    /// Chooses how the body is framed; returns the response when it has none.
    private mutating func afterHead() -> Event? {
        if (100..<200).contains(status) {
            // Interim response (100 Continue): the real one follows.
            state = .head
            return nil
        }
        if status == 204 || status == 304 { return finish() }
        if bodyKind.chunked {
            state = .chunkSize
            return nil
        }
        if let length = bodyKind.length {
            if length == 0 { return finish() }
            state = .fixedBody(remaining: length)
            return nil
        }
        state = .untilClose
        keepAlive = false
        return nil
    }
}

extension StringProtocol {
    fileprivate func trimmingHTTPWhitespace() -> String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}
