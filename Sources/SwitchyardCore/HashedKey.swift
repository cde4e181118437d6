/// A string with its hash computed once: a dictionary looked up by it once or twice per
/// request (outstanding counts, retry budgets, idle connections) hashes one word, not the
/// string's bytes each time.
public struct HashedKey: Hashable, Sendable {
    public let text: String
    private let hash: Int

    public init(_ text: String) {
        self.text = text
        hash = text.hashValue
    }

    public static func == (lhs: HashedKey, rhs: HashedKey) -> Bool { lhs.hash == rhs.hash && lhs.text == rhs.text }

    public func hash(into hasher: inout Hasher) { hasher.combine(hash) }
}
