public import SwitchyardCore

/// Renders a target path such as `/ingest/{product}/{device}` from route captures and
/// envelope fields. Unknown names are left empty (config validation prevents them);
/// values are percent-encoded except `/` and the unreserved characters.
public enum PathTemplate {
    /// (On bytes: once per forwarded message, where Character-wise String work cost ~2 µs.)
    public static func render(_ template: String, captures: [String: String], envelope: Envelope) -> String {
        template.withUTF8Bytes { t in
            guard t.contains(UInt8(ascii: "{")) else { return template }
            var out: [UInt8] = []
            out.reserveCapacity(t.count + 64)
            var i = 0
            while i < t.count {
                guard t[i] == UInt8(ascii: "{"), let close = t[i...].firstIndex(of: UInt8(ascii: "}")) else {
                    out.append(t[i])
                    i += 1
                    continue
                }
                let name = String(decoding: UnsafeRawBufferPointer(rebasing: t[(i + 1)..<close]), as: UTF8.self)
                if let value = value(of: name, captures: captures, envelope: envelope) {
                    value.withUTF8Bytes { appendPercentEncoded($0, keepSlash: true, to: &out) }
                }
                i = close + 1
            }
            return String(decoding: out, as: UTF8.self)
        }
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
        value.withUTF8Bytes { bytes in
            var out: [UInt8] = []
            out.reserveCapacity(bytes.count)
            appendPercentEncoded(bytes, keepSlash: keepSlash, to: &out)
            return String(decoding: out, as: UTF8.self)
        }
    }

    /// Unreserved bytes (and `/` when kept) as they are, the rest as `%XX`.
    static func appendPercentEncoded(_ bytes: UnsafeRawBufferPointer, keepSlash: Bool, to out: inout [UInt8]) {
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.append(byte)
            case UInt8(ascii: "/") where keepSlash:
                out.append(byte)
            default:
                let digits: StaticString = "0123456789ABCDEF"
                out.append(UInt8(ascii: "%"))
                out.append(digits.utf8Start[Int(byte >> 4)])
                out.append(digits.utf8Start[Int(byte & 0xF)])
            }
        }
    }
}
