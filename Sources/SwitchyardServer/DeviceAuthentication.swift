import DeviceRegistry
import Foundation
import MQTTBroker
import MQTTWire
import NIOCore

/// MQTT sign-in against the device registry: user name `{device}&{product}` (as Alibaba IoT
/// devices send it), password the device secret — or, for devices registered as signing, the
/// Alibaba-style signed password: client id `{id}|securemode=…,signmethod=hmacsha256,timestamp=…|`
/// and password `hex(HMAC(secret, "clientId{id}deviceName{device}productKey{product}timestamp{ts}"))`,
/// the timestamp (milliseconds) within `maxSkew` of now.
struct RegistryAuthenticator: DeviceAuthenticator {
    let store: DeviceStore
    var maxSkewSeconds: Double = 900
    var now: @Sendable () -> Double = { Date().timeIntervalSince1970 }

    func authenticate(username: String, password: ByteBuffer?, clientID: String) -> Result<DeviceIdentity, MQTTWireError> {
        guard let amp = username.lastIndex(of: "&") else {
            return .failure(MQTTWireError(.badUserNameOrPassword, "the user name is {device}&{product}"))
        }
        let device = String(username[..<amp])
        let product = String(username[username.index(after: amp)...])
        guard let password, let secret = String(validating: password.readableBytesView, as: UTF8.self) else {
            return .failure(MQTTWireError(.badUserNameOrPassword, "the password is the device secret"))
        }
        if let signed = Self.signedClientID(clientID) {
            return verify(signed, product: product, device: device, signature: secret)
        }
        switch store.authenticate(product: product, device: device, secret: secret) {
        case .success: return .success(DeviceIdentity(product: product, device: device))
        case .failure(.disabled): return .failure(MQTTWireError(.notAuthorized, "device \(product)/\(device) is disabled"))
        case .failure: return .failure(MQTTWireError(.badUserNameOrPassword, "unknown device or wrong secret"))
        }
    }

    struct SignedClientID {
        var id: String
        var method: DeviceStore.SignMethod?
        var methodName: String
        var timestamp: String?
    }

    /// `{id}|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|`, nil for a plain id.
    static func signedClientID(_ clientID: String) -> SignedClientID? {
        guard clientID.hasSuffix("|"), let bar = clientID.firstIndex(of: "|") else { return nil }
        let id = String(clientID[..<bar])
        var params: [String: String] = [:]
        for pair in clientID[clientID.index(after: bar)..<clientID.index(before: clientID.endIndex)].split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { params[String(kv[0]).lowercased()] = String(kv[1]) }
        }
        let name = params["signmethod"]?.lowercased() ?? ""
        return SignedClientID(id: id, method: DeviceStore.SignMethod(rawValue: name), methodName: name, timestamp: params["timestamp"])
    }

    func verify(_ signed: SignedClientID, product: String, device: String, signature: String) -> Result<DeviceIdentity, MQTTWireError> {
        guard let method = signed.method else {
            return .failure(MQTTWireError(.badUserNameOrPassword, "signmethod \"\(signed.methodName)\" is not supported (hmacsha256, hmacsha1)"))
        }
        guard let stamp = signed.timestamp, let millis = Double(stamp) else {
            return .failure(MQTTWireError(.badUserNameOrPassword, "a signed password needs timestamp=<milliseconds> in the client id"))
        }
        guard abs(now() - millis / 1000) <= maxSkewSeconds else {
            return .failure(MQTTWireError(.badUserNameOrPassword, "the signature's timestamp is more than \(Int(maxSkewSeconds)) s from now"))
        }
        let content = "clientId\(signed.id)deviceName\(device)productKey\(product)timestamp\(stamp)"
        switch store.verifySignature(product: product, device: device, content: content, signature: signature, method: method) {
        case .success: return .success(DeviceIdentity(product: product, device: device, clientID: signed.id))
        case .failure(.disabled): return .failure(MQTTWireError(.notAuthorized, "device \(product)/\(device) is disabled"))
        case .failure(.notSigning):
            return .failure(
                MQTTWireError(.badUserNameOrPassword, "device \(product)/\(device) is not registered for signed passwords (devices add --signing)")
            )
        case .failure: return .failure(MQTTWireError(.badUserNameOrPassword, "unknown device or wrong signature"))
        }
    }
}
