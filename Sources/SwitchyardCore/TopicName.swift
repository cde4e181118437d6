/// Rules for the topic of a message that is published (not a subscription filter).
public enum TopicName {
    public static let maxBytes = 1024

    /// nil when `topic` is acceptable, else what is wrong with it.
    public static func problem(with topic: String) -> String? {
        if topic.isEmpty { return "topic is empty" }
        if topic.utf8.count > maxBytes { return "topic is \(topic.utf8.count) bytes; the limit is \(maxBytes)" }
        if topic.hasPrefix("$") { return "topics starting with \"$\" are reserved for the system" }
        if topic.hasPrefix("/") || topic.hasSuffix("/") || topic.contains("//") {
            return "topic \"\(topic)\" has an empty level (leading, trailing or double \"/\")"
        }
        for (offset, scalar) in topic.unicodeScalars.enumerated() {
            if scalar == "+" || scalar == "#" {
                return "wildcard \"\(scalar)\" at offset \(offset) is not allowed in a published topic"
            }
            if scalar.value < 0x20 || scalar.value == 0x7F || scalar.value == 0xFFFD {
                return "control or invalid character at offset \(offset) in topic"
            }
        }
        return nil
    }
}
