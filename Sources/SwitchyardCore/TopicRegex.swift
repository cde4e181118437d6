/// A compiled topic regex with named captures.
///
/// Swift's `Regex` costs microseconds per match, so the common shapes of topic
/// patterns — anchored (`^…$`) sequences of literals, `[^/]+` and `.+`/`.*`, with or
/// without names — are compiled to a small backtracking matcher that runs without it. Anything
/// else falls back to `Regex`. Both give the same answers (tested side by side).
public struct TopicRegex: @unchecked Sendable {
    // @unchecked: Regex<AnyRegexOutput> is immutable after compilation.
    public let pattern: String
    /// Literal text every match must start with (only for patterns anchored with `^`).
    public let literalPrefix: String
    public let captureNames: [String]
    private let fast: [Token]?
    private let regex: Regex<AnyRegexOutput>?

    struct Span {
        var name: String
        var from: Int
        var to: Int
    }

    enum Token: Equatable {
        case literal(String)
        case segment(String?)  // [^/]+
        case rest(String?, allowEmpty: Bool)  // .+ / .*
    }

    /// Compiles `pattern`; throws `PatternError` with the offset of the problem.
    public init(_ pattern: String) throws(PatternError) {
        self.pattern = pattern
        try PatternError.checkBalanced(pattern)
        if let tokens = TopicRegex.tokenize(pattern) {
            fast = tokens
            regex = nil
            captureNames = tokens.compactMap {
                switch $0 {
                case .segment(let n): n
                case .rest(let n, _): n
                case .literal: nil
                }
            }
            if case .literal(let l) = tokens.first { literalPrefix = l } else { literalPrefix = "" }
        } else {
            fast = nil
            do {
                let r = try Regex(pattern)
                regex = r
            } catch {
                throw PatternError(message: "\(error)", offset: nil)
            }
            captureNames = TopicRegex.namedGroups(in: pattern)
            literalPrefix = TopicRegex.anchoredLiteralPrefix(pattern)
        }
    }

    /// Matches the topic; returns the named captures, or nil when it does not match.
    public func match(_ topic: String) -> [String: String]? {
        if !literalPrefix.isEmpty && !topic.hasPrefix(literalPrefix) { return nil }
        if let fast { return TopicRegex.run(fast, on: topic, capturing: true) }
        guard let regex, let m = try? regex.firstMatch(in: topic) else { return nil }
        var captures: [String: String] = [:]
        for name in captureNames {
            if let sub = m[name]?.substring { captures[name] = String(sub) }
        }
        return captures
    }

    /// Whether the topic matches, without collecting the captures (tag rules need no more).
    public func matches(_ topic: String) -> Bool {
        if !literalPrefix.isEmpty && !topic.hasPrefix(literalPrefix) { return false }
        if let fast { return TopicRegex.run(fast, on: topic, capturing: false) != nil }
        guard let regex else { return false }
        return (try? regex.firstMatch(in: topic)) != nil
    }

    /// True when the pattern runs on the segment matcher (exposed for tests and explain).
    public var usesFastPath: Bool { fast != nil }

    /// Runs the regex engine even when the fast path exists (for equivalence tests).
    public func matchWithRegexEngine(_ topic: String) -> [String: String]? {
        guard let r = try? Regex(pattern), let m = try? r.firstMatch(in: topic) else { return nil }
        var captures: [String: String] = [:]
        for name in captureNames {
            if let sub = m[name]?.substring { captures[name] = String(sub) }
        }
        return captures
    }

    /// The captures (empty when not `capturing`), or nil when the topic does not match; reads
    /// the topic's bytes in place.
    private static func run(_ tokens: [Token], on topic: String, capturing: Bool) -> [String: String]? {
        func run(_ bytes: UnsafeRawBufferPointer) -> [String: String]? {
            var spans: [Span] = []
            guard matchFrom(tokens, 0, bytes, 0, &spans, capturing: capturing) else { return nil }
            var captures: [String: String] = [:]
            for span in spans {
                captures[span.name] = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[span.from..<span.to]), as: UTF8.self)
            }
            return captures
        }
        return topic.withUTF8Bytes(run)
    }

    /// Backtracking in the regex engine's order: greedy quantifiers try the longest span first.
    private static func matchFrom(
        _ tokens: [Token],
        _ t: Int,
        _ bytes: UnsafeRawBufferPointer,
        _ i: Int,
        _ spans: inout [Span],
        capturing: Bool
    ) -> Bool {
        if t == tokens.count { return i == bytes.count }
        switch tokens[t] {
        case .literal(let lit):
            let l = lit.utf8
            guard bytes.count - i >= l.count, bytes[i..<(i + l.count)].elementsEqual(l) else { return false }
            return matchFrom(tokens, t + 1, bytes, i + l.count, &spans, capturing: capturing)
        case .segment(let name), .rest(let name, _):
            let isSegment: Bool
            let minimum: Int
            if case .rest(_, let allowEmpty) = tokens[t] {
                isSegment = false
                minimum = allowEmpty ? 0 : 1
            } else {
                isSegment = true
                minimum = 1
            }
            var end = i
            while end < bytes.count, bytes[end] != UInt8(ascii: "\n"), !(isSegment && bytes[end] == UInt8(ascii: "/")) { end += 1 }
            var length = end - i
            while length >= minimum {
                let mark = spans.count
                if capturing, let name { spans.append(Span(name: name, from: i, to: i + length)) }
                if matchFrom(tokens, t + 1, bytes, i + length, &spans, capturing: capturing) { return true }
                spans.removeSubrange(mark...)
                length -= 1
            }
            return false
        }
    }

    /// Splits `^…$` patterns made of literals, `[^/]+` and a final `.+`/`.*` into tokens.
    static func tokenize(_ pattern: String) -> [Token]? {
        guard pattern.hasPrefix("^"), pattern.hasSuffix("$"), !pattern.hasSuffix("\\$") else { return nil }
        var s = Substring(pattern.dropFirst().dropLast())
        var tokens: [Token] = []
        var literal = ""
        func flush() {
            if !literal.isEmpty { tokens.append(.literal(literal)) }
            literal = ""
        }
        let metas: Set<Character> = [".", "*", "+", "?", "(", ")", "[", "]", "{", "}", "|", "^", "$", "\\"]
        while let c = s.first {
            if s.hasPrefix("[^/]+") {
                flush(); tokens.append(.segment(nil)); s = s.dropFirst(5)
            } else if s.hasPrefix("(?<") {
                guard let close = s.firstIndex(of: ">") else { return nil }
                let name = String(s[s.index(s.startIndex, offsetBy: 3)..<close])
                guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else { return nil }
                let body = s[s.index(after: close)...]
                if body.hasPrefix("[^/]+)") {
                    flush(); tokens.append(.segment(name)); s = body.dropFirst(6)
                } else if body.hasPrefix(".+)") || body.hasPrefix(".*)") {
                    flush(); tokens.append(.rest(name, allowEmpty: body.hasPrefix(".*"))); s = body.dropFirst(3)
                } else {
                    return nil
                }
            } else if s.hasPrefix(".+") || s.hasPrefix(".*") {
                flush(); tokens.append(.rest(nil, allowEmpty: s.hasPrefix(".*"))); s = s.dropFirst(2)
            } else if c == "\\", s.count >= 2, let next = s.dropFirst().first, metas.contains(next) || next == "/" {
                literal.append(next); s = s.dropFirst(2)
            } else if metas.contains(c) {
                return nil
            } else {
                literal.append(c); s = s.dropFirst()
            }
        }
        flush()
        return tokens
    }

    static func namedGroups(in pattern: String) -> [String] {
        var names: [String] = []
        var s = Substring(pattern)
        while let r = s.firstRange(of: "(?<") {
            let after = s[r.upperBound...]
            if let close = after.firstIndex(of: ">") {
                let name = String(after[..<close])
                if !name.isEmpty, !name.hasPrefix("="), !name.hasPrefix("!") { names.append(name) }
                s = after[close...]
            } else {
                break
            }
        }
        return names
    }

    static func anchoredLiteralPrefix(_ pattern: String) -> String {
        guard pattern.hasPrefix("^") else { return "" }
        var out = ""
        var rest = pattern.dropFirst()
        while let c = rest.first {
            if "/-_:".contains(c) || c.isLetter || c.isNumber {
                // A literal followed by a quantifier is not certain to appear.
                let next = rest.dropFirst().first
                if let next, "*?{+".contains(next) { break }
                out.append(c); rest = rest.dropFirst()
            } else {
                break
            }
        }
        // The whole rest might be alternation at top level: then no prefix is certain.
        return pattern.contains("|") ? "" : out
    }
}

/// A pattern that does not compile, with the offset (in characters) of the problem.
public struct PatternError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var offset: Int?

    public var description: String {
        if let offset { return "\(message) at offset \(offset)" }
        return message
    }

    /// Finds unbalanced parentheses and brackets, ignoring escaped ones and those in classes.
    static func checkBalanced(_ pattern: String) throws(PatternError) {
        var stack: [(Character, Int)] = []
        var inClass: Int? = nil
        var escaped = false
        for (offset, c) in pattern.enumerated() {
            if escaped { escaped = false; continue }
            if c == "\\" { escaped = true; continue }
            if let classStart = inClass {
                if c == "]" && offset > classStart + 1 && !(offset == classStart + 2 && pattern.dropFirst(classStart + 1).first == "^") {
                    inClass = nil
                }
                continue
            }
            switch c {
            case "[": inClass = offset
            case "(": stack.append(("(", offset))
            case ")":
                if stack.popLast() == nil {
                    throw PatternError(message: "unbalanced \")\"", offset: offset)
                }
            default: break
            }
        }
        if let open = inClass { throw PatternError(message: "unterminated \"[\"", offset: open) }
        if let (_, offset) = stack.last { throw PatternError(message: "unbalanced \"(\"", offset: offset) }
        if escaped { throw PatternError(message: "trailing \"\\\"", offset: pattern.count - 1) }
    }
}
