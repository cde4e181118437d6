// DeviceRegistry: per-device credentials. Secrets are generated here, shown once, and kept
// only as salted HMAC-SHA256 digests in `<data dir>/devices.json` (0600).
import Crypto
import Foundation
import NIOConcurrencyHelpers
import SwitchyardCore

/// One device's record: no secret, only its salted digest.
public struct DeviceRecord: Sendable, Codable, Equatable {
    public var product: String
    public var device: String
    public var disabled: Bool
    public var createdAt: Date
    public var rotatedAt: Date
    var salt: String
    var digest: String
    /// The secret itself, sealed (AES-GCM) with the node's signing key — only for devices that
    /// sign their password (Alibaba style), which needs the secret to check the signature.
    var sealed: String?

    /// Whether the device may sign in with a signed password.
    public var signing: Bool { sealed != nil }
}

public struct DeviceRegistryError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidName = "invalid_name"
        case exists
        case notFound = "not_found"
        case storage
    }

    public var code: Code
    public var message: String
    public var description: String { message }
}

/// Why a device could not sign in.
public enum AuthenticationFailure: Error, Sendable, Equatable {
    case unknownDevice
    case wrongSecret
    case disabled
    /// The device has no sealed secret: it signs in with the secret, not a signature.
    case notSigning
}

/// The device registry, in memory and persisted to a file after each change (written to a
/// temporary file, fsynced, renamed).
public final class DeviceStore: Sendable {
    private let path: String?
    private let records: NIOLockedValueBox<[String: DeviceRecord]>
    /// Seals the secrets of signing devices: 32 random bytes in `device-signing.key` next to
    /// the registry (0600), made when the first signing device is added.
    private let sealingKey = NIOLockedValueBox<Data?>(nil)

    /// `path` nil: in memory only (tests).
    public init(path: String?) throws(DeviceRegistryError) {
        self.path = path
        var loaded: [String: DeviceRecord] = [:]
        if let path, FileManager.default.fileExists(atPath: path) {
            do {
                let data = try Data(contentsOf: URL(fileURLWithPath: path))
                for r in try JSONDecoder.registry.decode(File.self, from: data).devices { loaded[Self.key(r.product, r.device)] = r }
            } catch {
                throw DeviceRegistryError(code: .storage, message: "cannot read \(path): \(error)")
            }
        }
        records = NIOLockedValueBox(loaded)
    }

    struct File: Codable {
        var devices: [DeviceRecord]
    }

    static func key(_ product: String, _ device: String) -> String { "\(product)\u{0}\(device)" }

    /// Names are topic levels: 1–128 bytes, no `/`, `+`, `#`, `&`, control characters or spaces.
    public static func problem(with name: String, _ what: String) -> String? {
        if name.isEmpty || name.utf8.count > 128 { return "\(what) must be 1–128 bytes" }
        if name.unicodeScalars.contains(where: { "/+#&".unicodeScalars.contains($0) || $0.value <= 0x20 || $0.value == 0x7F }) {
            return "\(what) \"\(name)\" may not contain / + # & spaces or control characters"
        }
        return nil
    }

    /// Registers a device and returns its secret (shown once; only a digest is kept — and, for
    /// a `signing` device, the secret sealed with the node's key).
    public func add(product: String, device: String, signing: Bool = false) throws(DeviceRegistryError) -> String {
        for (name, what) in [(product, "product"), (device, "device")] {
            if let problem = Self.problem(with: name, what) { throw DeviceRegistryError(code: .invalidName, message: problem) }
        }
        let secret = Self.makeSecret()
        let now = Date()
        let (salt, digest) = Self.digest(secret)
        let sealed = signing ? try seal(secret) : nil
        let record = DeviceRecord(
            product: product,
            device: device,
            disabled: false,
            createdAt: now,
            rotatedAt: now,
            salt: salt,
            digest: digest,
            sealed: sealed
        )
        try change { records throws(DeviceRegistryError) in
            guard records[Self.key(product, device)] == nil else {
                throw DeviceRegistryError(code: .exists, message: "device \(product)/\(device) exists; rotate its secret instead")
            }
            records[Self.key(product, device)] = record
        }
        return secret
    }

    /// A new secret for a device; the old one stops working at once.
    public func rotate(product: String, device: String) throws(DeviceRegistryError) -> String {
        let secret = Self.makeSecret()
        let (salt, digest) = Self.digest(secret)
        let signing = records.withLockedValue { $0[Self.key(product, device)]?.signing } ?? false
        let sealed = signing ? try seal(secret) : nil
        try update(product, device) { r in
            r.salt = salt
            r.digest = digest
            r.sealed = sealed
            r.rotatedAt = Date()
        }
        return secret
    }

    /// Checks an Alibaba-style signed password: `signature` is the hex HMAC (`sha256` or `sha1`)
    /// of `content` keyed with the device secret.
    public func verifySignature(
        product: String,
        device: String,
        content: String,
        signature: String,
        method: SignMethod
    ) -> Result<DeviceRecord, AuthenticationFailure> {
        guard let record = records.withLockedValue({ $0[Self.key(product, device)] }) else { return .failure(.unknownDevice) }
        guard let sealed = record.sealed else { return .failure(.notSigning) }
        guard let secret = try? open(sealed) else { return .failure(.wrongSecret) }
        let key = SymmetricKey(data: Data(secret.utf8))
        let mac: Data
        switch method {
        case .hmacSHA256: mac = Data(HMAC<SHA256>.authenticationCode(for: Data(content.utf8), using: key))
        case .hmacSHA1: mac = Data(HMAC<Insecure.SHA1>.authenticationCode(for: Data(content.utf8), using: key))
        }
        let expected = Data(mac.map { String(format: "%02x", $0) }.joined().utf8)
        guard Self.constantTimeEqual(Data(signature.lowercased().utf8), expected) else { return .failure(.wrongSecret) }
        if record.disabled { return .failure(.disabled) }
        return .success(record)
    }

    public enum SignMethod: String, Sendable {
        case hmacSHA256 = "hmacsha256"
        case hmacSHA1 = "hmacsha1"
    }

    private func key() throws(DeviceRegistryError) -> SymmetricKey {
        let result: Result<Data, DeviceRegistryError> = sealingKey.withLockedValue { cached in
            if let cached { return .success(cached) }
            var made = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
            if let path {
                let keyPath = (path as NSString).deletingLastPathComponent + "/device-signing.key"
                if let data = FileManager.default.contents(atPath: keyPath), data.count == 32 {
                    made = data
                } else if !FileManager.default.createFile(atPath: keyPath, contents: made, attributes: [.posixPermissions: 0o600]) {
                    return .failure(DeviceRegistryError(code: .storage, message: "cannot write \(keyPath)"))
                }
            }
            cached = made
            return .success(made)
        }
        return SymmetricKey(data: try result.get())
    }

    private func seal(_ secret: String) throws(DeviceRegistryError) -> String {
        do {
            guard let combined = try AES.GCM.seal(Data(secret.utf8), using: key()).combined else {
                throw DeviceRegistryError(code: .storage, message: "cannot seal a device secret")
            }
            return combined.base64EncodedString()
        } catch let error as DeviceRegistryError {
            throw error
        } catch {
            throw DeviceRegistryError(code: .storage, message: "cannot seal a device secret: \(error)")
        }
    }

    private func open(_ sealed: String) throws -> String {
        guard let data = Data(base64Encoded: sealed) else { throw DeviceRegistryError(code: .storage, message: "bad sealed secret") }
        let plain = try AES.GCM.open(AES.GCM.SealedBox(combined: data), using: key())
        return String(decoding: plain, as: UTF8.self)
    }

    public func setDisabled(_ disabled: Bool, product: String, device: String) throws(DeviceRegistryError) {
        try update(product, device) { $0.disabled = disabled }
    }

    public func remove(product: String, device: String) throws(DeviceRegistryError) {
        try change { records throws(DeviceRegistryError) in
            guard records.removeValue(forKey: Self.key(product, device)) != nil else { throw Self.notFound(product, device) }
        }
    }

    public func list() -> [DeviceRecord] {
        records.withLockedValue { Array($0.values) }.sorted { ($0.product, $0.device) < ($1.product, $1.device) }
    }

    public var count: Int { records.withLockedValue { $0.count } }

    /// Checks a device's secret (constant-time comparison of the digests).
    public func authenticate(product: String, device: String, secret: String) -> Result<DeviceRecord, AuthenticationFailure> {
        guard let record = records.withLockedValue({ $0[Self.key(product, device)] }) else { return .failure(.unknownDevice) }
        guard let salt = Data(base64Encoded: record.salt), let expected = Data(base64Encoded: record.digest) else {
            return .failure(.wrongSecret)
        }
        let actual = Data(HMAC<SHA256>.authenticationCode(for: Data(secret.utf8), using: SymmetricKey(data: salt)))
        guard Self.constantTimeEqual(actual, expected) else { return .failure(.wrongSecret) }
        if record.disabled { return .failure(.disabled) }
        return .success(record)
    }

    // MARK: - Internals

    private func update(_ product: String, _ device: String, _ body: (inout DeviceRecord) -> Void) throws(DeviceRegistryError) {
        try change { records throws(DeviceRegistryError) in
            guard var r = records[Self.key(product, device)] else { throw Self.notFound(product, device) }
            body(&r)
            records[Self.key(product, device)] = r
        }
    }

    static func notFound(_ product: String, _ device: String) -> DeviceRegistryError {
        DeviceRegistryError(code: .notFound, message: "no device \(product)/\(device)")
    }

    /// Applies a change and persists the result; on a storage error nothing changes.
    private func change(_ body: (inout [String: DeviceRecord]) throws(DeviceRegistryError) -> Void) throws(DeviceRegistryError) {
        let result: Result<Void, DeviceRegistryError> = records.withLockedValue { records in
            var next = records
            do throws(DeviceRegistryError) {
                try body(&next)
                try save(next)
            } catch {
                return .failure(error)
            }
            records = next
            return .success(())
        }
        try result.get()
    }

    private func save(_ records: [String: DeviceRecord]) throws(DeviceRegistryError) {
        guard let path else { return }
        let sorted = records.values.sorted { ($0.product, $0.device) < ($1.product, $1.device) }
        do {
            try AtomicFile.write(try JSONEncoder.registry.encode(File(devices: sorted)), to: path)
        } catch let error as AtomicFile.Failure {
            throw DeviceRegistryError(code: .storage, message: error.description)
        } catch {
            throw DeviceRegistryError(code: .storage, message: "cannot write \(path): \(error)")
        }
    }

    /// 32 random bytes from the system's secure generator, as URL-safe base64 (43 characters).
    static func makeSecret() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// A fresh 16-byte salt and HMAC-SHA256(salt, secret), both base64.
    static func digest(_ secret: String) -> (salt: String, digest: String) {
        var rng = SystemRandomNumberGenerator()
        let salt = Data((0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) })
        let mac = HMAC<SHA256>.authenticationCode(for: Data(secret.utf8), using: SymmetricKey(data: salt))
        return (salt.base64EncodedString(), Data(mac).base64EncodedString())
    }

    static func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }
}

extension JSONEncoder {
    static var registry: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.dateEncodingStrategy = .iso8601
        e.keyEncodingStrategy = .convertToSnakeCase
        return e
    }
}

extension JSONDecoder {
    static var registry: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }
}
