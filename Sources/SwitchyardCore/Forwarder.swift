public import NIOCore

/// One request to one instance, fully rendered by the router.
public struct ForwardRequest: Sendable {
    public var method: String
    /// Path and query, starting with "/".
    public var path: String
    public var headers: [HeaderField]
    public var body: ByteBuffer

    public init(method: String, path: String, headers: [HeaderField], body: ByteBuffer) {
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
    }
}

/// What the instance answered.
public struct ForwardResponse: Sendable {
    public var status: Int
    /// The start of the body, for error reports.
    public var bodySnippet: String
    /// It answered `x-switchyard-draining: true`: it wants no new requests.
    public var draining: Bool
    /// It closed a kept-alive connection (`Connection: close` after earlier responses on it):
    /// it may be shutting down.
    public var closing: Bool

    public init(status: Int, bodySnippet: String = "", draining: Bool = false, closing: Bool = false) {
        self.status = status
        self.bodySnippet = bodySnippet
        self.draining = draining
        self.closing = closing
    }
}

/// Why a forward did not produce a response.
public struct ForwardError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// The instance could not be reached (refused, unreachable, DNS).
        case connectFailed = "connect_failed"
        /// No complete response within the target's timeout.
        case timeout
        /// The connection broke or the response was not valid HTTP.
        case connectionFailed = "connection_failed"
        /// Switchyard is shutting down.
        case shutdown
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "\(kind.rawValue): \(detail)" }
}

/// Sends rendered requests to instances. Implemented by `HTTPForwarder` (NIO HTTP/1.1
/// keep-alive pools) and by an in-memory fake in `SwitchyardTesting`.
public protocol Forwarder: Sendable {
    /// The future fails with `ForwardError` only; an HTTP error status is a response.
    /// Runs on `loop` (the caller's), so a message's whole delivery stays on one thread.
    func forward(
        _ request: ForwardRequest,
        to instance: ServiceInstance,
        timeout: TimeAmount,
        on loop: any EventLoop
    ) -> EventLoopFuture<ForwardResponse>
    /// A loop for callers that have none (tests, tools).
    func anyEventLoop() -> any EventLoop
}

/// One header: a struct rather than a tuple, so arrays of them need no runtime tuple metadata.
public struct HeaderField: Sendable, Equatable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// RFC 9110 tokens (methods, header names).
public enum HTTPToken {
    public static func isToken(_ s: String) -> Bool {
        s.withUTF8Bytes { bytes in !bytes.isEmpty && bytes.allSatisfy(HTTP1Syntax.isTokenByte) }
    }
}
