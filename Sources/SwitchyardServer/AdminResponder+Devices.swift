import DeviceRegistry
import Foundation
import HTTPIngress
import NIOCore
import NIOHTTP1

/// `/admin/devices`: MQTT device credentials. A secret is shown once, when it is made.
extension AdminResponder {
    struct NewDevice: Decodable {
        var product: String
        var device: String
        /// Keep the secret sealed so that the device may sign in with a signed password.
        var signing: Bool?
    }

    struct DeviceView: Encodable {
        var product: String
        var device: String
        var disabled: Bool
        var createdAt: Date
        var rotatedAt: Date
        /// What the device sends as its MQTT user name.
        var username: String
        /// Registered for signed passwords.
        var signing: Bool
        init(_ r: DeviceRecord) {
            product = r.product
            device = r.device
            disabled = r.disabled
            signing = r.signing
            createdAt = r.createdAt
            rotatedAt = r.rotatedAt
            username = "\(r.device)&\(r.product)"
        }
    }

    struct Secret: Encodable {
        var product: String
        var device: String
        var username: String
        var secret: String
        var note = "shown once: only a salted digest is kept"
    }

    /// nil when the path is not a device endpoint.
    func handleDevices(_ request: IncomingRequest, path: String) -> OutgoingResponse? {
        let store = app.devices
        if path == "/admin/devices" {
            switch request.method {
            case .GET:
                return encode(store.list().map(DeviceView.init))
            case .POST:
                guard let new = try? JSONDecoder().decode(NewDevice.self, from: Data(request.body.readableBytesView)) else {
                    return .error(.badRequest, "bad_request", "expected JSON {\"product\": \"…\", \"device\": \"…\"}")
                }
                return answer(.created) {
                    Secret(
                        product: new.product,
                        device: new.device,
                        username: "\(new.device)&\(new.product)",
                        secret: try store.add(product: new.product, device: new.device, signing: new.signing ?? false)
                    )
                }
            default:
                return .error(.methodNotAllowed, "method_not_allowed", "GET or POST \(path)")
            }
        }
        guard path.hasPrefix("/admin/devices/") else { return nil }
        let parts = path.dropFirst("/admin/devices/".count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3, let product = parts.first.flatMap({ $0.removingPercentEncoding }),
            let device = parts[1].removingPercentEncoding
        else {
            return .error(.notFound, "not_found", "devices are at /admin/devices/{product}/{device}[/rotate|/disable|/enable]")
        }
        switch (request.method, parts.count == 3 ? parts[2] : nil) {
        case (.DELETE, nil):
            return answer(.ok) {
                try store.remove(product: product, device: device)
                return ["removed": "\(product)/\(device)"]
            }
        case (.GET, nil):
            guard let record = store.list().first(where: { $0.product == product && $0.device == device }) else {
                return .error(.notFound, "not_found", "no device \(product)/\(device)")
            }
            return encode(DeviceView(record))
        case (.POST, "rotate"):
            return answer(.ok) {
                Secret(product: product, device: device, username: "\(device)&\(product)", secret: try store.rotate(product: product, device: device))
            }
        case (.POST, "disable"), (.POST, "enable"):
            let disabled = parts[2] == "disable"
            return answer(.ok) {
                try store.setDisabled(disabled, product: product, device: device)
                return ["status": disabled ? "disabled" : "enabled"]
            }
        default:
            return .error(.methodNotAllowed, "method_not_allowed", "GET/DELETE a device, or POST …/rotate, …/disable, …/enable")
        }
    }

    /// Runs a registry change; its errors become 400 / 404 / 409 / 500.
    private func answer<T: Encodable>(_ status: HTTPResponseStatus, _ body: () throws -> T) -> OutgoingResponse {
        do {
            var response = encode(try body())
            response.status = status
            return response
        } catch let error as DeviceRegistryError {
            let status: HTTPResponseStatus =
                switch error.code {
                case .invalidName: .badRequest
                case .exists: .conflict
                case .notFound: .notFound
                case .storage: .internalServerError
                }
            return .error(status, error.code.rawValue, error.message)
        } catch {
            return .error(.internalServerError, "internal", "\(error)")
        }
    }
}
