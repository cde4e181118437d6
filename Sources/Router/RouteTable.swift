public import SwitchyardCore

/// The ordered route table of one configuration: the first route whose regex matches wins.
public struct RouteTable: Sendable {
    /// A class: matching hands it out per message, and a reference costs one retain.
    public final class Route: Sendable {
        public let name: String
        public let regex: TopicRegex
        public let targets: [SwitchyardConfiguration.TargetRule]
        public let ttlSeconds: Double
        /// Some target renders a path template with the captures (batched targets send to a
        /// fixed path).
        let rendersCaptures: Bool

        init(name: String, regex: TopicRegex, targets: [SwitchyardConfiguration.TargetRule], ttlSeconds: Double) {
            self.name = name
            self.regex = regex
            self.targets = targets
            self.ttlSeconds = ttlSeconds
            rendersCaptures = targets.contains { $0.batch == nil }
        }
    }

    public let routes: [Route]

    /// Compiles every route; throws a `KeyPathError` naming the key path.
    public init(_ rules: [SwitchyardConfiguration.RouteRule]) throws(KeyPathError) {
        var routes: [Route] = []
        for (index, rule) in rules.enumerated() {
            do {
                routes.append(Route(name: rule.name, regex: try TopicRegex(rule.match), targets: rule.targets, ttlSeconds: rule.ttlSeconds))
            } catch {
                throw KeyPathError(path: "routes[\(index)].match", message: error.description)
            }
        }
        self.routes = routes
    }

    /// The first matching route and its named captures.
    public func match(_ topic: String) -> (route: Route, captures: [String: String])? {
        for route in routes {
            if let captures = route.regex.match(topic) { return (route, captures) }
        }
        return nil
    }

    /// Whether some route takes the topic (no captures collected).
    func takes(_ topic: String) -> Bool { routes.contains { $0.regex.matches(topic) } }

    /// `match` for delivery: the captures are collected only when a target of the route
    /// renders them (empty otherwise).
    func matchForDelivery(_ topic: String) -> (route: Route, captures: [String: String])? {
        for route in routes {
            if route.rendersCaptures {
                if let captures = route.regex.match(topic) { return (route, captures) }
            } else if route.regex.matches(topic) {
                return (route, [:])
            }
        }
        return nil
    }
}
