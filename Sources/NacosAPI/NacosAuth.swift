import Crypto
import Foundation
public import Registry

/// Users, passwords and tokens of the registry API. Tokens are HS256 JWTs signed with a key
/// generated at first start into the data dir (there is no default key, unlike Nacos'
/// `token.secret.key`); passwords are stored as PBKDF2-HMAC-SHA256 digests.
public struct NacosAuth: Sendable {
    public static let keyFile = "registry-jwt.key"
    public static let adminPasswordFile = "registry-admin-password"
    public static let adminUser = "nacos"

    /// Off only on a loopback-bound listener (decided by the configuration).
    public let enabled: Bool
    public let tokenTTLSeconds: Int
    let keyBytes: Data
    var key: SymmetricKey { SymmetricKey(data: keyBytes) }
    let registry: Registry
    let now: @Sendable () -> Int64

    public init(
        enabled: Bool,
        dataDir: String,
        registry: Registry,
        tokenTTLSeconds: Int = 18_000,
        now: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) }
    ) throws {
        self.enabled = enabled
        self.registry = registry
        self.tokenTTLSeconds = tokenTTLSeconds
        self.now = now
        keyBytes = try Self.secretFile(dataDir + "/" + Self.keyFile, bytes: 32)
        if registry.user(Self.adminUser) == nil {
            // The first administrator: a generated password, readable only by the node's user.
            let password = Self.base64URL(
                try Self.secretFile(dataDir + "/" + Self.adminPasswordFile, bytes: 18, encode: Self.base64URL, decode: { Self.unbase64URL($0[...]) })
            )
            try registry.save(user: RegistryUser(username: Self.adminUser, passwordHash: Self.hash(password), admin: true))
        }
    }

    /// Reads `path` (`bytes` random bytes, base64 by default), creating it (0600) on first use.
    static func secretFile(
        _ path: String,
        bytes: Int,
        encode: (Data) -> String = { $0.base64EncodedString() },
        decode: (String) -> Data? = { Data(base64Encoded: $0) }
    ) throws -> Data {
        if let text = try? String(contentsOfFile: path, encoding: .utf8),
            let data = decode(text.trimmingCharacters(in: .whitespacesAndNewlines)), data.count == bytes
        {
            return data
        }
        var rng = SystemRandomNumberGenerator()
        let data = Data((0..<bytes).map { _ in UInt8.random(in: 0...255, using: &rng) })
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        guard
            FileManager.default.createFile(
                atPath: path,
                contents: Data((encode(data) + "\n").utf8),
                attributes: [.posixPermissions: 0o600]
            )
        else {
            throw RegistryError(.storage, "cannot write \(path)")
        }
        return data
    }

    // MARK: - Passwords

    public static let iterations = 10_000

    /// `pbkdf2-sha256$iterations$salt$digest` (base64).
    public static func hash(_ password: String, salt: Data? = nil, iterations: Int = NacosAuth.iterations) -> String {
        var rng = SystemRandomNumberGenerator()
        let salt = salt ?? Data((0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) })
        let digest = pbkdf2(Data(password.utf8), salt: salt, iterations: iterations)
        return "pbkdf2-sha256$\(iterations)$\(salt.base64EncodedString())$\(digest.base64EncodedString())"
    }

    static func verify(_ password: String, against stored: String) -> Bool {
        let parts = stored.split(separator: "$")
        guard parts.count == 4, parts[0] == "pbkdf2-sha256", let iterations = Int(parts[1]), iterations > 0,
            let salt = Data(base64Encoded: String(parts[2])), let expected = Data(base64Encoded: String(parts[3]))
        else { return false }
        return constantTimeEqual(pbkdf2(Data(password.utf8), salt: salt, iterations: iterations), expected)
    }

    /// PBKDF2-HMAC-SHA256, one 32-byte block.
    static func pbkdf2(_ password: Data, salt: Data, iterations: Int) -> Data {
        let key = SymmetricKey(data: password)
        var u = Data(HMAC<SHA256>.authenticationCode(for: salt + Data([0, 0, 0, 1]), using: key))
        var t = [UInt8](u)
        for _ in 1..<iterations {
            u = Data(HMAC<SHA256>.authenticationCode(for: u, using: key))
            for (i, b) in u.enumerated() { t[i] ^= b }
        }
        return Data(t)
    }

    static func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for (x, y) in zip(a, b) { diff |= x ^ y }
        return diff == 0
    }

    // MARK: - Tokens

    /// Checks a user's password and issues a token.
    public func login(username: String, password: String) -> String? {
        guard let user = registry.user(username) else {
            // The same work as for a known user: the answer's timing does not tell who exists.
            _ = Self.verify(password, against: Self.decoy)
            return nil
        }
        guard Self.verify(password, against: user.passwordHash) else { return nil }
        return token(for: user.username)
    }

    static let decoy = hash(UUID().uuidString)

    func token(for username: String) -> String {
        let header = Self.base64URL(Data(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let payload = Self.base64URL(Data(JSON.object([("sub", .string(username)), ("exp", .int(now() + Int64(tokenTTLSeconds)))]).text.utf8))
        let signature = Self.base64URL(Data(HMAC<SHA256>.authenticationCode(for: Data("\(header).\(payload)".utf8), using: key)))
        return "\(header).\(payload).\(signature)"
    }

    /// The user a token belongs to, when it is ours, unexpired, and its user still exists.
    public func user(forToken token: String) -> RegistryUser? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let signature = Self.unbase64URL(parts[2]),
            let payloadData = Self.unbase64URL(parts[1])
        else { return nil }
        let expected = Data(HMAC<SHA256>.authenticationCode(for: Data("\(parts[0]).\(parts[1])".utf8), using: key))
        guard Self.constantTimeEqual(signature, expected),
            let payload = try? JSONSerialization.jsonObject(with: payloadData) as? [String: Any],
            let subject = payload["sub"] as? String, let exp = (payload["exp"] as? NSNumber)?.int64Value, exp > now()
        else { return nil }
        return registry.user(subject)
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func unbase64URL(_ text: Substring) -> Data? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }
}

extension RegistryUser {
    func canRead(_ namespace: String) -> Bool { admin || permissions[Self.normalized(namespace)]?.canRead == true }
    func canWrite(_ namespace: String) -> Bool { admin || permissions[Self.normalized(namespace)]?.canWrite == true }
    static func normalized(_ namespace: String) -> String { namespace.isEmpty ? "public" : namespace }
}
