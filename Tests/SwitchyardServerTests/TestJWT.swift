import Crypto
import Foundation
import Gateway

/// Signs tokens the way an identity provider would, for the gateway's tests.
enum TestJWT {
    static func token(_ claims: [String: Any], header: [String: Any]) -> (input: String, sign: (Data) -> Data) {
        let h = Base64URL.encode(try! JSONSerialization.data(withJSONObject: header, options: .sortedKeys))
        let p = Base64URL.encode(try! JSONSerialization.data(withJSONObject: claims, options: .sortedKeys))
        return ("\(h).\(p)", { $0 })
    }

    static func hs256(_ claims: [String: Any], secret: String, kid: String? = nil) -> String {
        var header: [String: Any] = ["alg": "HS256", "typ": "JWT"]
        if let kid { header["kid"] = kid }
        let input = token(claims, header: header).input
        let mac = HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(secret.utf8)))
        return input + "." + Base64URL.encode(Data(mac))
    }

    static func es256(_ claims: [String: Any], key: P256.Signing.PrivateKey, kid: String) -> String {
        let input = token(claims, header: ["alg": "ES256", "kid": kid]).input
        let signature = try! key.signature(for: Data(input.utf8))
        return input + "." + Base64URL.encode(signature.rawRepresentation)
    }

    /// A JWKS entry for an EC P-256 public key.
    static func jwk(_ key: P256.Signing.PublicKey, kid: String) -> [String: Any] {
        let point = key.x963Representation
        return ["kty": "EC", "crv": "P-256", "kid": kid, "x": Base64URL.encode(point[1..<33]), "y": Base64URL.encode(point[33..<65])]
    }

    static let secret = "a-test-secret-of-thirty-two-bytes-or-more"

    /// Writes the shared secret into `dir` and returns the `gateway.jwt` YAML using it.
    static func config(dir: String) throws -> String {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try (secret + "\n").write(toFile: "\(dir)/jwt.secret", atomically: true, encoding: .utf8)
        return #"jwt: {keys: [{kid: k1, alg: HS256, secret_file: "\#(dir)/jwt.secret"}], issuer: https://id.test}"#
    }
}
