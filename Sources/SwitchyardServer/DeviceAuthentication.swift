import DeviceRegistry
import MQTTBroker
import MQTTWire
import NIOCore

/// MQTT sign-in against the device registry: user name `{device}&{product}` (as Alibaba IoT
/// devices send it), password the device secret.
struct RegistryAuthenticator: DeviceAuthenticator {
    let store: DeviceStore

    func authenticate(username: String, password: ByteBuffer?, clientID: String) -> Result<DeviceIdentity, MQTTWireError> {
        guard let amp = username.lastIndex(of: "&") else {
            return .failure(MQTTWireError(.badUserNameOrPassword, "the user name is {device}&{product}"))
        }
        let device = String(username[..<amp])
        let product = String(username[username.index(after: amp)...])
        guard let password, let secret = String(validating: password.readableBytesView, as: UTF8.self) else {
            return .failure(MQTTWireError(.badUserNameOrPassword, "the password is the device secret"))
        }
        switch store.authenticate(product: product, device: device, secret: secret) {
        case .success: return .success(DeviceIdentity(product: product, device: device))
        case .failure(.disabled): return .failure(MQTTWireError(.notAuthorized, "device \(product)/\(device) is disabled"))
        case .failure: return .failure(MQTTWireError(.badUserNameOrPassword, "unknown device or wrong secret"))
        }
    }
}
