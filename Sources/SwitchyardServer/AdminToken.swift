import Foundation

/// The bearer token of the admin API: `SWITCHYARD_ADMIN_TOKEN` when set, else the
/// `admin-token` file in the data dir, generated (0600) on first start. There is no default.
public enum AdminToken {
    public static let environmentVariable = "SWITCHYARD_ADMIN_TOKEN"
    public static let fileName = "admin-token"

    public static func load(dataDir: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        if let token = environment[environmentVariable], !token.isEmpty { return token }
        let fm = FileManager.default
        // The data dir holds the token and the journal (message payloads): owner only.
        try fm.createDirectory(atPath: dataDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let path = (dataDir as NSString).appendingPathComponent(fileName)
        if let existing = try? String(contentsOfFile: path, encoding: .utf8) {
            let token = existing.trimmingCharacters(in: .whitespacesAndNewlines)
            if !token.isEmpty { return token }
        }
        var rng = SystemRandomNumberGenerator()
        let token = (0..<4).map { _ in
            let s = String(rng.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }.joined()
        guard fm.createFile(atPath: path, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw AdminTokenError(message: "cannot write the admin token to \(path)")
        }
        return token
    }

    /// Compares without an early exit, so timing does not reveal the token.
    static func matches(_ presented: String, _ token: String) -> Bool {
        let a = Array(presented.utf8), b = Array(token.utf8)
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<max(a.count, b.count) {
            diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return diff == 0
    }
}

public struct AdminTokenError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
