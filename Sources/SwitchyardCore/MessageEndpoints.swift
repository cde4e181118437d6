/// The HTTP message channel's paths on the HTTP listener. They always belong to the message
/// channel: no gateway route takes them (check-config refuses a route that could only match
/// them; `explain` says so).
public enum MessageEndpoints {
    /// `POST /v1/messages/{topic…}`: one message.
    public static let messagePrefix = "/v1/messages/"
    /// `POST /v1/batch`: many messages in one request.
    public static let batchPath = "/v1/batch"

    /// `/v1/messages/…` or `/v1/batch`, with or without a query.
    public static func contains(_ uri: String) -> Bool {
        var u = uri.utf8[...]
        if let q = u.firstIndex(of: UInt8(ascii: "?")) { u = u[..<q] }
        return u.starts(with: messagePrefix.utf8) || u.elementsEqual(batchPath.utf8)
    }
}
