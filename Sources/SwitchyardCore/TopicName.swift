/// Rules for the topic of a message that is published (not a subscription filter).
public enum TopicName {
    public static let maxBytes = 1024

    /// nil when `topic` is acceptable, else what is wrong with it.
    public static func problem(with topic: String) -> String? {
        if topic.isEmpty { return "topic is empty" }
        if topic.utf8.count > maxBytes { return "topic is \(topic.utf8.count) bytes; the limit is \(maxBytes)" }
        if topic.hasPrefix("$") { return "topics starting with \"$\" are reserved for the system" }
        // One pass over the bytes (this runs for every message).
        var offset = 0
        var previous: UInt8 = UInt8(ascii: "/")  // a leading "/" is an empty first level
        for byte in topic.utf8 {
            if byte == UInt8(ascii: "/") && previous == UInt8(ascii: "/") { return emptyLevel(topic) }
            if byte == UInt8(ascii: "+") || byte == UInt8(ascii: "#") {
                return "wildcard \"\(Character(Unicode.Scalar(byte)))\" at byte offset \(offset) is not allowed in a published topic"
            }
            if byte < 0x20 || byte == 0x7F {
                return "control character at byte offset \(offset) in topic"
            }
            previous = byte
            offset += 1
        }
        return previous == UInt8(ascii: "/") ? emptyLevel(topic) : nil
    }

    private static func emptyLevel(_ topic: String) -> String {
        "topic \"\(topic)\" has an empty level (leading, trailing or double \"/\")"
    }
}
