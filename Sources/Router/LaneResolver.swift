public import SwitchyardCore

/// Picks the instances a message may go to, given its lane and the lane's fallback policy.
public struct LaneResolver: Sendable {
    public let fallbacks: [String: SwitchyardConfiguration.LaneFallback]

    public init(lanes: [SwitchyardConfiguration.LaneRule]) {
        fallbacks = Dictionary(lanes.map { ($0.name, $0.fallback) }, uniquingKeysWith: { first, _ in first })
    }

    public enum Resolution: Sendable, Equatable {
        /// Instances of the message's own lane (or baseline for baseline messages).
        case lane([ServiceInstance])
        /// The lane has no instance of this service; baseline instances serve it.
        case fallback([ServiceInstance])
        /// The lane has no instance and its policy is `strict`.
        case laneUnavailable
        /// The service has no instance that could serve the message at all.
        case noInstances
    }

    public func resolve(lane: String?, instances: [ServiceInstance]) -> Resolution {
        guard let lane, lane != "baseline" else {
            let baseline = Self.select(instances, \.isBaseline)
            return baseline.isEmpty ? .noInstances : .lane(baseline)
        }
        let inLane = Self.select(instances) { $0.lane == lane }
        if !inLane.isEmpty { return .lane(inLane) }
        if fallbacks[lane] == .strict { return .laneUnavailable }
        let baseline = Self.select(instances, \.isBaseline)
        return baseline.isEmpty ? .noInstances : .fallback(baseline)
    }

    /// The instances that belong, as the same array when all do (the common case, a service
    /// without lanes, copies nothing per request).
    private static func select(_ instances: [ServiceInstance], _ belongs: (ServiceInstance) -> Bool) -> [ServiceInstance] {
        instances.allSatisfy(belongs) ? instances : instances.filter(belongs)
    }
}
