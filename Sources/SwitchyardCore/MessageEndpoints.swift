/// The HTTP message channel's paths on the HTTP listener. They always belong to the message
/// channel: no gateway route takes them (check-config refuses a route that could only match
/// them; `explain` says so).
public enum MessageEndpoints {
    /// `POST /v1/messages/{topic…}`: one message.
    public static let messagePrefix = "/v1/messages/"
    /// `POST /v1/batch`: many messages in one request.
    public static let batchPath = "/v1/batch"

    /// `/v1/messages/…` or `/v1/batch`, with or without a query.
    /// (On the URI's bytes in place: asked at every request head.)
    public static func contains(_ uri: String) -> Bool {
        uri.withUTF8Bytes { u in
            let message: StaticString = "/v1/messages/"
            let batch: StaticString = "/v1/batch"
            func starts(with s: StaticString) -> Bool {
                guard u.count >= s.utf8CodeUnitCount else { return false }
                for i in 0..<s.utf8CodeUnitCount where u[i] != s.utf8Start[i] { return false }
                return true
            }
            if starts(with: message) { return true }
            return starts(with: batch) && (u.count == batch.utf8CodeUnitCount || u[batch.utf8CodeUnitCount] == UInt8(ascii: "?"))
        }
    }
}
