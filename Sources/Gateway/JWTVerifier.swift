import Crypto
import Foundation
public import SwitchyardCore
import _CryptoExtras

/// Why a token was refused (the 401's message).
public struct JWTError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Verifies compact JWS tokens (RFC 7515/7519) against configured keys: HS256/384/512,
/// RS256/384/512 and ES256/384. `alg: none` and algorithms a key was not made for are refused
/// (no HMAC-with-a-public-key confusion).
public struct JWTVerifier: Sendable {
    enum Key: @unchecked Sendable {  // immutable key material
        case hmac(SymmetricKey)
        case rsa(_RSA.Signing.PublicKey)
        case p256(P256.Signing.PublicKey)
        case p384(P384.Signing.PublicKey)
    }

    struct Entry: Sendable {
        let kid: String?
        /// nil: any algorithm of the key's family (JWKS keys without `alg`).
        let alg: String?
        let key: Key
    }

    let entries: [Entry]
    let issuer: String?
    let audiences: [String]
    let leeway: Double
    let cookie: String?

    /// Loads the keys; throws with the config key path of the first problem.
    public init(settings: SwitchyardConfiguration.JWTSettings) throws(KeyPathError) {
        var entries: [Entry] = []
        if let file = settings.jwksFile {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw KeyPathError(path: "gateway.jwt.jwks_file", message: "cannot read \(file)")
            }
            do {
                entries += try Self.parseJWKS(data)
            } catch {
                throw KeyPathError(path: "gateway.jwt.jwks_file", message: "\(file): \(error)")
            }
        }
        for (i, key) in settings.keys.enumerated() {
            do {
                entries.append(Entry(kid: key.kid, alg: key.alg, key: try Self.load(key)))
            } catch {
                throw KeyPathError(path: "gateway.jwt.keys[\(i)]", message: "\(error)")
            }
        }
        self.entries = entries
        issuer = settings.issuer
        audiences = settings.audiences
        leeway = settings.leewaySeconds
        cookie = settings.cookie
    }

    static func load(_ key: SwitchyardConfiguration.JWTKey) throws -> Key {
        if let file = key.secretFile {
            guard var bytes = FileManager.default.contents(atPath: file) else { throw JWTError("cannot read secret_file \(file)") }
            while bytes.last == 0x0A || bytes.last == 0x0D { bytes.removeLast() }
            guard bytes.count >= 32 else { throw JWTError("the secret in \(file) has \(bytes.count) bytes; use at least 32") }
            return .hmac(SymmetricKey(data: bytes))
        }
        let pem: String
        if let inline = key.pem {
            pem = inline
        } else if let file = key.pemFile, let data = FileManager.default.contents(atPath: file) {
            pem = String(decoding: data, as: UTF8.self)
        } else {
            throw JWTError("cannot read pem_file \(key.pemFile ?? "")")
        }
        do {
            switch key.alg.prefix(2) {
            case "RS": return .rsa(try _RSA.Signing.PublicKey(pemRepresentation: pem))
            case _ where key.alg == "ES256": return .p256(try P256.Signing.PublicKey(pemRepresentation: pem))
            default: return .p384(try P384.Signing.PublicKey(pemRepresentation: pem))
            }
        } catch {
            throw JWTError("not a \(key.alg) public key in PEM: \(error)")
        }
    }

    /// Keys of a JWKS document; keys for encryption (`use: enc`) are skipped.
    static func parseJWKS(_ data: Data) throws -> [Entry] {
        guard let doc = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let keys = doc["keys"] as? [[String: Any]] else {
            throw JWTError("not a JWKS document ({\"keys\": [...]})")
        }
        var out: [Entry] = []
        for (i, jwk) in keys.enumerated() where (jwk["use"] as? String) != "enc" {
            func part(_ name: String) throws -> Data {
                guard let text = jwk[name] as? String, let bytes = Base64URL.decode(text) else {
                    throw JWTError("keys[\(i)]: \(name) is missing or not base64url")
                }
                return bytes
            }
            let kid = jwk["kid"] as? String
            let alg = jwk["alg"] as? String
            do {
                switch jwk["kty"] as? String {
                case "RSA": out.append(Entry(kid: kid, alg: alg, key: .rsa(try _RSA.Signing.PublicKey(n: try part("n"), e: try part("e")))))
                case "EC":
                    let point = Data([0x04]) + (try part("x")) + (try part("y"))
                    switch jwk["crv"] as? String {
                    case "P-256": out.append(Entry(kid: kid, alg: alg, key: .p256(try P256.Signing.PublicKey(x963Representation: point))))
                    case "P-384": out.append(Entry(kid: kid, alg: alg, key: .p384(try P384.Signing.PublicKey(x963Representation: point))))
                    case let crv: throw JWTError("keys[\(i)]: curve \(crv ?? "(none)") is not supported (P-256, P-384)")
                    }
                case "oct": out.append(Entry(kid: kid, alg: alg, key: .hmac(SymmetricKey(data: try part("k")))))
                case let kty: throw JWTError("keys[\(i)]: kty \(kty ?? "(none)") is not supported (RSA, EC, oct)")
                }
            } catch let error as JWTError {
                throw error
            } catch {
                throw JWTError("keys[\(i)]: \(error)")
            }
        }
        return out
    }

    /// The token of a request: `Authorization: Bearer …`, else the configured cookie.
    func token(authorization: String?, cookies: () -> [String: String]) -> String? {
        if let authorization, authorization.count > 7, authorization.prefix(7).lowercased() == "bearer " {
            return String(authorization.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        if let cookie { return cookies()[cookie] }
        return nil
    }

    /// The token's claims (string values; numbers and booleans as text, arrays as several
    /// values) once its signature, `exp`, `nbf`, `iss` and `aud` check out.
    public func verify(_ token: String, now: Double = Date().timeIntervalSince1970) throws(JWTError) -> [String: [String]] {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerData = Base64URL.decode(parts[0]), let payload = Base64URL.decode(parts[1]),
            let signature = Base64URL.decode(parts[2])
        else { throw JWTError("malformed token (expected header.payload.signature in base64url)") }
        guard let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any], let alg = header["alg"] as? String else {
            throw JWTError("malformed token header")
        }
        let kid = header["kid"] as? String
        let signed = Data(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        let candidates = entries.filter { ($0.kid == nil || kid == nil || $0.kid == kid) && Self.fits(alg: alg, entry: $0) }
        guard !candidates.isEmpty else {
            throw JWTError(kid.map { "no key \"\($0)\" for \(alg)" } ?? "no key for \(alg)")
        }
        guard candidates.contains(where: { Self.check(signature, of: signed, alg: alg, key: $0.key) }) else {
            throw JWTError("signature does not verify")
        }
        guard let claims = try? JSONDecoder().decode([String: ClaimValue].self, from: payload) else {
            throw JWTError("malformed token payload")
        }
        if let exp = claims["exp"]?.number, now > exp + leeway { throw JWTError("token expired") }
        if let nbf = claims["nbf"]?.number, now + leeway < nbf { throw JWTError("token not valid yet") }
        if let issuer, claims["iss"]?.texts != [issuer] { throw JWTError("issuer is not \(issuer)") }
        if !audiences.isEmpty, !(claims["aud"]?.texts ?? []).contains(where: audiences.contains) {
            throw JWTError("audience is not one of \(audiences.joined(separator: ", "))")
        }
        return claims.mapValues(\.texts)
    }

    static func fits(alg: String, entry: Entry) -> Bool {
        if let own = entry.alg, own != alg { return false }
        switch entry.key {
        case .hmac: return ["HS256", "HS384", "HS512"].contains(alg)
        case .rsa: return ["RS256", "RS384", "RS512"].contains(alg)
        case .p256: return alg == "ES256"
        case .p384: return alg == "ES384"
        }
    }

    static func check(_ signature: Data, of signed: Data, alg: String, key: Key) -> Bool {
        switch key {
        case .hmac(let secret):
            switch alg {
            case "HS256": return HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: signed, using: secret)
            case "HS384": return HMAC<SHA384>.isValidAuthenticationCode(signature, authenticating: signed, using: secret)
            default: return HMAC<SHA512>.isValidAuthenticationCode(signature, authenticating: signed, using: secret)
            }
        case .rsa(let key):
            let sig = _RSA.Signing.RSASignature(rawRepresentation: signature)
            switch alg {
            case "RS256": return key.isValidSignature(sig, for: SHA256.hash(data: signed), padding: .insecurePKCS1v1_5)
            case "RS384": return key.isValidSignature(sig, for: SHA384.hash(data: signed), padding: .insecurePKCS1v1_5)
            default: return key.isValidSignature(sig, for: SHA512.hash(data: signed), padding: .insecurePKCS1v1_5)
            }
        case .p256(let key):
            guard let sig = try? P256.Signing.ECDSASignature(rawRepresentation: signature) else { return false }
            return key.isValidSignature(sig, for: SHA256.hash(data: signed))
        case .p384(let key):
            guard let sig = try? P384.Signing.ECDSASignature(rawRepresentation: signature) else { return false }
            return key.isValidSignature(sig, for: SHA384.hash(data: signed))
        }
    }
}

/// A claim's value as text: strings, numbers, booleans; a list gives several (objects: none).
enum ClaimValue: Decodable {
    case text(String)
    case number(Double)
    case list([String])
    case other

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            self = .text(s)
        } else if let b = try? c.decode(Bool.self) {
            self = .text(b ? "true" : "false")
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let l = try? c.decode([ClaimValue].self) {
            self = .list(l.flatMap(\.texts))
        } else {
            self = .other
        }
    }

    var number: Double? {
        if case .number(let n) = self { return n }
        return nil
    }

    var texts: [String] {
        switch self {
        case .text(let s): [s]
        case .number(let n): [n == n.rounded() && abs(n) < 1e15 ? String(Int64(n)) : String(n)]
        case .list(let l): l
        case .other: []
        }
    }
}

/// base64url without padding (RFC 4648 §5), as JOSE uses it.
public enum Base64URL {
    public static func decode(_ text: some StringProtocol) -> Data? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard !s.contains("=") || text.hasSuffix("=") else { return nil }
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }

    public static func encode(_ data: some DataProtocol) -> String {
        Data(data).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
