/// Topic names (what is published) and topic filters (what is subscribed), MQTT 4.7.
public enum MQTTTopic {
    public static let sharePrefix = "$share/"

    /// nil when `topic` may be published to, else what is wrong.
    public static func problemWithName(_ topic: String) -> String? {
        if topic.isEmpty { return "the topic name is empty" }
        if topic.utf8.count > 65_535 { return "the topic name is over 65,535 bytes" }
        let utf8 = topic.utf8
        guard let bad = utf8.firstIndex(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }) else { return nil }
        let offset = utf8.distance(from: utf8.startIndex, to: bad)
        let byte = utf8[bad]
        if byte == 0 { return "U+0000 at byte \(offset) in the topic name" }
        return "wildcard \"\(Character(Unicode.Scalar(byte)))\" at byte \(offset) is not allowed in a topic name"
    }

    /// nil when `filter` may be subscribed to (including `$share/{group}/{filter}`), else what is wrong.
    public static func problemWithFilter(_ filter: String) -> String? {
        if filter.isEmpty { return "the topic filter is empty" }
        if filter.utf8.count > 65_535 { return "the topic filter is over 65,535 bytes" }
        if filter.utf8.contains(0) { return "U+0000 in the topic filter" }
        if filter.hasPrefix(sharePrefix) || filter == "$share" {
            guard let (group, inner) = shared(filter) else {
                return "a shared subscription is $share/{group}/{filter} with a group name and a filter"
            }
            if group.contains(where: { $0 == "+" || $0 == "#" }) { return "the share group \"\(group)\" contains a wildcard" }
            return problemWithFilter(inner).map { "in the shared subscription: \($0)" }
        }
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (i, level) in levels.enumerated() {
            if level.contains("#") {
                if level != "#" { return "\"#\" must be a whole level, in \"\(level)\"" }
                if i != levels.count - 1 { return "\"#\" must be the last level" }
            }
            if level.contains("+") && level != "+" { return "\"+\" must be a whole level, in \"\(level)\"" }
        }
        return nil
    }

    /// `$share/{group}/{filter}` split into group and filter; nil when it is not one (or is malformed).
    public static func shared(_ filter: String) -> (group: String, filter: String)? {
        guard filter.hasPrefix(sharePrefix) else { return nil }
        let rest = filter.dropFirst(sharePrefix.count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let group = rest[..<slash]
        let inner = rest[rest.index(after: slash)...]
        guard !group.isEmpty, !inner.isEmpty else { return nil }
        return (String(group), String(inner))
    }

    /// Whether `topic` (a valid name) matches `filter` (a valid, non-shared filter). Filters
    /// starting with a wildcard do not match topics starting with `$` (MQTT 4.7.2).
    public static func matches(filter: String, topic: String) -> Bool {
        var f = filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)[...]
        var t = topic.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)[...]
        if topic.utf8.first == UInt8(ascii: "$"), let first = f.first, first.elementsEqual("+".utf8) || first.elementsEqual("#".utf8) {
            return false
        }
        while let level = f.popFirst() {
            if level.elementsEqual("#".utf8) { return true }  // also matches the parent level
            guard let name = t.popFirst() else { return false }
            if level.elementsEqual("+".utf8) { continue }
            if !level.elementsEqual(name) { return false }
        }
        return t.isEmpty
    }

    /// Whether every topic `inner` (a valid, non-shared filter) matches also matches `outer`:
    /// `a/#` covers `a`, `a/b/+` and `a/#`; `a/+/c` covers `a/b/c` and `a/+/c`, not `a/#`.
    public static func filter(_ outer: String, covers inner: String) -> Bool {
        var o = outer.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)[...]
        var i = inner.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)[...]
        while let level = o.popFirst() {
            if level.elementsEqual("#".utf8) { return true }
            guard let sub = i.popFirst() else { return false }
            if sub.elementsEqual("#".utf8) { return false }  // `#` reaches levels `outer` may not
            if level.elementsEqual("+".utf8) { continue }
            if sub.elementsEqual("+".utf8) || !level.elementsEqual(sub) { return false }
        }
        return i.isEmpty
    }
}
