import NIOCore
import SwitchyardCore

/// Writes a forwarded request as HTTP/1.1 bytes in one buffer (one write, one syscall); a
/// large body stays in its own buffer (one `writev`, no copy).
enum HTTP1RequestEncoder {
    /// Bodies up to this size are copied behind the head; larger ones (a batch) are not.
    static let copiedBodyLimit = 4096

    /// Refuses anything that would not be one well-formed request (a CR or LF in a value
    /// would let a header smuggle another request). `withBody: false`: the head only.
    static func encode(_ request: ForwardRequest, host: String, withBody: Bool = true, into buffer: inout ByteBuffer) -> ForwardError? {
        guard isToken(request.method), isSafe(request.path, allowSpace: false), request.path.hasPrefix("/") else {
            return ForwardError(.connectionFailed, "refusing to send a malformed request line \(request.method) \(request.path)")
        }
        buffer.reserveCapacity(size(of: request, host: host, withBody: withBody))
        buffer.writeString(request.method)
        buffer.writeStaticString(" ")
        buffer.writeString(request.path)
        buffer.writeStaticString(" HTTP/1.1\r\nhost: ")
        buffer.writeString(host)
        buffer.writeStaticString("\r\ncontent-length: ")
        buffer.writeString(String(request.body.readableBytes))
        buffer.writeStaticString("\r\n")
        for field in request.headers {
            guard isToken(field.name), isSafe(field.value, allowSpace: true) else {
                return ForwardError(.connectionFailed, "refusing to send header \(field.name) with a control character")
            }
            buffer.writeString(field.name)
            buffer.writeStaticString(": ")
            buffer.writeString(field.value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        guard withBody else { return nil }
        var body = request.body
        buffer.writeBuffer(&body)
        return nil
    }

    /// The encoded request's size (give the buffer this capacity: no growing while writing).
    static func size(of request: ForwardRequest, host: String, withBody: Bool = true) -> Int {
        var n = request.method.utf8.count + request.path.utf8.count + host.utf8.count + 64 + (withBody ? request.body.readableBytes : 0)
        for field in request.headers { n += field.name.utf8.count + field.value.utf8.count + 4 }
        return n
    }

    static func isToken(_ s: String) -> Bool { HTTPToken.isToken(s) }

    static func isSafe(_ s: String, allowSpace: Bool) -> Bool {
        for b in s.utf8 {
            if b == 0x7F || (b <= 0x20 && !(allowSpace && (b == 0x20 || b == 0x09))) { return false }
        }
        return true
    }
}
