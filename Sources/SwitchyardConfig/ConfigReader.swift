import Yams

/// Walks a YAML node tree, collecting issues instead of stopping at the first one.
struct ConfigReader {
    var issues: [ConfigIssue] = []

    mutating func fail(_ path: String, _ message: String, _ node: Node?) {
        issues.append(ConfigIssue(path: path, message: message, line: node?.mark.map { $0.line }))
    }

    /// The entries of a mapping; unknown keys are reported with the closest known key.
    mutating func mapping(_ node: Node?, _ path: String, allowed: [String]) -> [String: Node] {
        guard let node else { return [:] }
        if case .scalar(let s) = node, s.string.isEmpty || s.string == "~" || s.string == "null" { return [:] }
        guard case .mapping(let m) = node else {
            fail(path, "expected a mapping (key: value)", node)
            return [:]
        }
        var out: [String: Node] = [:]
        for (k, v) in m {
            guard let key = k.string else {
                fail(path, "keys must be strings", k)
                continue
            }
            let child = path.isEmpty ? key : "\(path).\(key)"
            if !allowed.contains(key) {
                let hint = ConfigReader.closest(key, in: allowed).map { "; did you mean \"\($0)\"?" } ?? ""
                fail(child, "unknown key\(hint) (known: \(allowed.joined(separator: ", ")))", k)
                continue
            }
            if out[key] != nil { fail(child, "duplicate key", k) }
            out[key] = v
        }
        return out
    }

    /// Keys of a mapping whose keys are user names (like `services`).
    mutating func namedMapping(_ node: Node?, _ path: String) -> [(String, Node)] {
        guard let node else { return [] }
        guard case .mapping(let m) = node else {
            fail(path, "expected a mapping of names to definitions", node)
            return []
        }
        var out: [(String, Node)] = []
        for (k, v) in m {
            guard let key = k.string, !key.isEmpty else {
                fail(path, "names must be non-empty strings", k)
                continue
            }
            out.append((key, v))
        }
        return out
    }

    mutating func sequence(_ node: Node?, _ path: String) -> [Node] {
        guard let node else { return [] }
        guard case .sequence(let s) = node else {
            fail(path, "expected a list", node)
            return []
        }
        return Array(s)
    }

    mutating func string(_ node: Node?, _ path: String) -> String? {
        guard let node else { return nil }
        guard case .scalar(let s) = node else {
            fail(path, "expected a text value", node)
            return nil
        }
        return s.string
    }

    mutating func strings(_ node: Node?, _ path: String) -> [String] {
        guard let node else { return [] }
        if case .scalar = node { return string(node, path).map { [$0] } ?? [] }
        return sequence(node, path).enumerated().compactMap { string($1, "\(path)[\($0)]") }
    }

    mutating func stringMap(_ node: Node?, _ path: String) -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in namedMapping(node, path) {
            if let s = string(v, "\(path).\(k)") { out[k] = s }
        }
        return out
    }

    mutating func int(_ node: Node?, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard let node else { return nil }
        guard let text = string(node, path) else { return nil }
        guard let v = Int(text.replacingUnderscores()) else {
            fail(path, "expected a whole number, got \"\(text)\"", node)
            return nil
        }
        guard range.contains(v) else {
            fail(path, "must be between \(range.lowerBound) and \(range.upperBound), got \(v)", node)
            return nil
        }
        return v
    }

    mutating func double(_ node: Node?, _ path: String, range: ClosedRange<Double>) -> Double? {
        guard let node else { return nil }
        guard let text = string(node, path) else { return nil }
        guard let v = Double(text.replacingUnderscores()), v.isFinite else {
            fail(path, "expected a number, got \"\(text)\"", node)
            return nil
        }
        guard range.contains(v) else {
            fail(path, "must be between \(Self.format(range.lowerBound)) and \(Self.format(range.upperBound)), got \(Self.format(v))", node)
            return nil
        }
        return v
    }

    mutating func bool(_ node: Node?, _ path: String) -> Bool? {
        guard let node else { return nil }
        guard let text = string(node, path) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            fail(path, "expected true or false, got \"\(text)\"", node)
            return nil
        }
    }

    /// `250ms`, `5s`, `2m`, `1h`, or a plain number of seconds.
    mutating func duration(_ node: Node?, _ path: String, range: ClosedRange<Double>) -> Double? {
        guard let node, let text = string(node, path) else { return nil }
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        var seconds: Double?
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            if let v = Double(text.dropLast(suffix.count)) { seconds = v * factor }
            break
        }
        if seconds == nil { seconds = Double(text) }
        guard let s = seconds, s.isFinite else {
            fail(path, "expected a duration like 250ms, 5s, 2m, got \"\(text)\"", node)
            return nil
        }
        guard range.contains(s) else {
            fail(path, "must be between \(Self.format(range.lowerBound))s and \(Self.format(range.upperBound))s, got \(text)", node)
            return nil
        }
        return s
    }

    /// `512`, `64KiB`, `1MiB`, `10MB`.
    mutating func size(_ node: Node?, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard let node, let text = string(node, path) else { return nil }
        let units: [(String, Int)] = [
            ("KiB", 1024), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
            ("B", 1),
        ]
        var bytes: Int?
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            if let v = Double(text.dropLast(suffix.count).trimmingSpaces()) { bytes = Int(v * Double(factor)) }
            break
        }
        if bytes == nil { bytes = Int(text.replacingUnderscores()) }
        guard let b = bytes else {
            fail(path, "expected a size like 65536, 64KiB or 1MiB, got \"\(text)\"", node)
            return nil
        }
        guard range.contains(b) else {
            fail(path, "must be between \(range.lowerBound) and \(range.upperBound) bytes, got \(b)", node)
            return nil
        }
        return b
    }

    static func format(_ v: Double) -> String { v == v.rounded() ? String(Int(v)) : String(v) }

    /// The allowed key within edit distance 2, if any.
    static func closest(_ key: String, in allowed: [String]) -> String? {
        allowed.map { ($0, distance(key, $0)) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }?.0
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var prev = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var cur = [i] + Array(repeating: 0, count: b.count)
            for j in 1...max(b.count, 1) where !b.isEmpty {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
