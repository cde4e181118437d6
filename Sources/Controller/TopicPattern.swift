import SwitchyardCore

/// A topic pattern such as `devices/{product}/{device}/#` that names parts of a topic.
/// `{name}` matches one level, `+` any one level, `#` (last) the remaining levels.
public struct TopicPattern: Sendable, Equatable {
    enum Level: Equatable {
        case literal([UInt8])
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
                levels.append(.literal(Array(part.utf8)))
            }
        }
        self.levels = levels
    }

    /// The named levels when the topic matches, else nil.
    public func match(_ topic: String) -> [String: String]? {
        var values: [String: String] = [:]
        guard walk(topic, { name, value in values[name] = value }) else { return nil }
        return values
    }

    /// The `{product}` and `{device}` levels when the topic matches (without a dictionary:
    /// every message's identity passes here).
    public func identity(_ topic: String) -> (product: String?, device: String?)? {
        var product: String?
        var device: String?
        let matched = walk(topic) { name, value in
            if name == "device" {
                device = value
            } else if name == "product" {
                product = value
            }
        }
        return matched ? (product, device) : nil
    }

    /// Matches level by level on the topic's bytes (levels are split at every `/` byte and
    /// compared byte for byte, as MQTT compares topics); `bind` gets each named level.
    private func walk(_ topic: String, _ bind: (String, String) -> Void) -> Bool {
        topic.withUTF8Bytes { walk($0, bind) }
    }

    private func walk(_ bytes: UnsafeRawBufferPointer, _ bind: (String, String) -> Void) -> Bool {
        var start = 0
        for (i, level) in levels.enumerated() {
            if case .multi = level { return true }
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: "/") { end += 1 }
            let part = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
            switch level {
            case .literal(let literal): if !part.elementsEqual(literal) { return false }
            case .variable(let name):
                if part.isEmpty { return false }
                bind(name, String(decoding: part, as: UTF8.self))
            case .single, .multi: break
            }
            if end == bytes.count {
                // Topic ended: the pattern must end here too (or continue with `#`, which matches the parent).
                let remaining = levels.count - i - 1
                return remaining == 0 || (remaining == 1 && levels[i + 1] == .multi)
            }
            start = end + 1
        }
        return false
    }
}

/// A controller configuration problem (wrapped with its key path by the config loader).
public struct ControllerConfigError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
