/// A topic pattern such as `devices/{product}/{device}/#` that names parts of a topic.
/// `{name}` matches one level, `+` any one level, `#` (last) the remaining levels.
public struct TopicPattern: Sendable, Equatable {
    enum Level: Equatable {
        case literal(Substring)
        case variable(String)
        case single
        case multi
    }

    public let text: String
    let levels: [Level]

    /// Parses a pattern; returns a message naming the problem when it is invalid.
    public init(_ text: String) throws(ControllerConfigError) {
        self.text = text
        var levels: [Level] = []
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        for (i, part) in parts.enumerated() {
            if part == "#" {
                guard i == parts.count - 1 else { throw ControllerConfigError("\"#\" must be the last level") }
                levels.append(.multi)
            } else if part == "+" {
                levels.append(.single)
            } else if part.hasPrefix("{") && part.hasSuffix("}") && part.count > 2 {
                levels.append(.variable(String(part.dropFirst().dropLast())))
            } else if part.contains("{") || part.contains("}") || part.contains("#") || part.contains("+") {
                throw ControllerConfigError("level \(i + 1) \"\(part)\": use {name}, + or # as a whole level")
            } else {
                levels.append(.literal(part))
            }
        }
        self.levels = levels
    }

    /// The named levels when the topic matches, else nil.
    public func match(_ topic: String) -> [String: String]? {
        var values: [String: String] = [:]
        var rest = Substring(topic)
        for (i, level) in levels.enumerated() {
            if level == .multi { return values }
            let end = rest.firstIndex(of: "/") ?? rest.endIndex
            let part = rest[..<end]
            switch level {
            case .literal(let l): if part != l { return nil }
            case .variable(let name):
                if part.isEmpty { return nil }
                values[name] = String(part)
            case .single, .multi: break
            }
            if end == rest.endIndex {
                // Topic ended: the pattern must end here too (or continue with `#`, which matches the parent).
                let remaining = levels.dropFirst(i + 1)
                return remaining.isEmpty || remaining == [.multi] ? values : nil
            }
            rest = rest[rest.index(after: end)...]
        }
        return nil
    }
}

/// A controller configuration problem (wrapped with its key path by the config loader).
public struct ControllerConfigError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
