import NIOCore
import SwitchyardCore

/// Writes a forwarded request as HTTP/1.1 bytes in one buffer (one write, one syscall).
enum HTTP1RequestEncoder {
    /// Refuses anything that would not be one well-formed request (a CR or LF in a value
    /// would let a header smuggle another request).
    static func encode(_ request: ForwardRequest, host: String, into buffer: inout ByteBuffer) -> ForwardError? {
        guard isToken(request.method), isSafe(request.path, allowSpace: false), request.path.hasPrefix("/") else {
            return ForwardError(.connectionFailed, "refusing to send a malformed request line \(request.method) \(request.path)")
        }
        buffer.reserveCapacity(256 + request.body.readableBytes)
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
        var body = request.body
        buffer.writeBuffer(&body)
        return nil
    }

    static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }

    static func isSafe(_ s: String, allowSpace: Bool) -> Bool {
        s.utf8.allSatisfy { $0 > 0x20 || (allowSpace && ($0 == 0x20 || $0 == 0x09)) } && !s.utf8.contains(0x7F)
    }
}
