public import SwitchyardCore

/// Renders a target path such as `/ingest/{product}/{device}` from route captures and
/// envelope fields. Unknown names are left empty (config validation prevents them);
/// values are percent-encoded except `/` and the unreserved characters.
public enum PathTemplate {
    public static func render(_ template: String, captures: [String: String], envelope: Envelope) -> String {
        guard template.contains("{") else { return template }
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else {
                out += rest[open...]
                return out
            }
            let name = String(rest[rest.index(after: open)..<close])
            out += percentEncode(value(of: name, captures: captures, envelope: envelope) ?? "")
            rest = rest[rest.index(after: close)...]
        }
        out += rest
        return out
    }

    /// Names a template may use beyond the route's captures.
    public static let builtins: Set<String> = ["topic", "device", "product", "id", "lane", "channel"]

    /// Template placeholders, for validation.
    public static func placeholders(in template: String) -> [String] {
        var names: [String] = []
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
            names.append(String(rest[rest.index(after: open)..<close]))
            rest = rest[rest.index(after: close)...]
        }
        return names
    }

    static func value(of name: String, captures: [String: String], envelope: Envelope) -> String? {
        if let v = captures[name] { return v }
        switch name {
        case "topic": return envelope.topic
        case "device": return envelope.device
        case "product": return envelope.product
        case "id": return envelope.id
        case "lane": return envelope.lane ?? "baseline"
        case "channel": return envelope.channel
        default: return nil
        }
    }

    public static func percentEncode(_ value: String, keepSlash: Bool = true) -> String {
        var out = ""
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }
}
