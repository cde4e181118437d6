public import SwitchyardCore

/// One filter's verdict, as shown by `explain`.
public struct FilterVerdict: Sendable, Equatable, Encodable {
    public var filter: String
    public var passed: Bool
    public var reason: String?
    public var detail: String
}

/// The controller's decision on one message.
public enum Admission: Sendable {
    /// Passed every filter; tags and lane are set.
    case accepted
    /// Its id was seen within the dedup window: acknowledge, do not deliver again.
    case duplicate
    case rejected(Rejection)
}

/// What `explain` reports about the controller's part.
public struct ControllerExplanation: Sendable {
    public var filters: [FilterVerdict]
    public var admission: String
    public var tags: [String: String]
    public var matchedTagRules: [Int]
    public var lane: String?
    public var laneReason: String
}
