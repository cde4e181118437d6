import Foundation
import HTTPIngress
import MQTTBroker
import NIOCore
import NIOHTTP1
import SwitchyardCore

/// `POST /v1/devices/{product}/{device}/commands[?wait=5s]` (admin token): the body goes to the
/// device as an MQTT command (QoS 1). Without `wait`: 202 once published; with it: 200 and the
/// device's reply as the body, or 504 when none came in time. 404 when the device is not
/// connected and subscribed to its command topic — unless `queue=true` and the device has a
/// kept (persistent) session subscribed to it: then 202 with status `queued`.
extension AdminResponder {
    func command(_ request: IncomingRequest, on loop: any EventLoop) -> EventLoopFuture<OutgoingResponse> {
        let parts = request.path.dropFirst("/v1/devices/".count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2] == "commands", let product = String(parts[0]).removingPercentEncoding,
            let device = String(parts[1]).removingPercentEncoding, !product.isEmpty, !device.isEmpty
        else {
            return loop.makeSucceededFuture(.error(.notFound, "not_found", "commands go to POST /v1/devices/{product}/{device}/commands"))
        }
        guard request.method == .POST else {
            return loop.makeSucceededFuture(.error(.methodNotAllowed, "method_not_allowed", "use POST", headers: ["allow": "POST"]))
        }
        guard let server = app.mqttServer else {
            return loop.makeSucceededFuture(.error(.serviceUnavailable, "mqtt_disabled", "the MQTT channel is off (channels.mqtt.enabled)"))
        }
        var wait: TimeAmount?
        if let text = request.query["wait"] {
            guard let seconds = Self.seconds(text), seconds > 0, seconds <= 300 else {
                return loop.makeSucceededFuture(.error(.badRequest, "bad_query", "wait must be a duration like 500ms or 5s, at most 300s"))
            }
            wait = .nanoseconds(Int64(seconds * 1e9))
        }
        let queue: Bool
        switch request.query["queue"] {
        case nil, "false": queue = false
        case "true": queue = true
        default: return loop.makeSucceededFuture(.error(.badRequest, "bad_query", "queue must be true or false"))
        }
        return server.sendCommand(
            product: product,
            device: device,
            payload: request.body,
            contentType: request.headers.first(name: "content-type"),
            wait: wait,
            queue: queue,
            on: loop
        ).map { outcome in
            switch outcome {
            case .sent(let id, let topic, let connections):
                return .json(
                    .accepted,
                    "{\"command_id\":\(JSONText.quote(id)),\"topic\":\(JSONText.quote(topic)),\"connections\":\(connections),\"status\":\"sent\"}"
                )
            case .queued(let id, let topic, let sessions):
                return .json(
                    .accepted,
                    "{\"command_id\":\(JSONText.quote(id)),\"topic\":\(JSONText.quote(topic)),\"sessions\":\(sessions),\"status\":\"queued\"}"
                )
            case .replied(let id, let payload, let contentType):
                return OutgoingResponse(
                    status: .ok,
                    headers: ["content-type": contentType ?? "application/octet-stream", "x-switchyard-command-id": id],
                    body: payload
                )
            case .offline(let topic):
                return .error(
                    .notFound,
                    "device_offline",
                    "no connection of \(product)/\(device) is subscribed to \(topic) (add ?queue=true to keep it in the device's persistent session)"
                )
            case .noReply(let id, let waited):
                return .error(.gatewayTimeout, "no_reply", "command \(id) was sent; no reply within \(waited) s")
            }
        }
    }

    /// `500ms`, `5s`, `1m`, or plain seconds.
    static func seconds(_ text: String) -> Double? {
        for (suffix, factor) in [("ms", 0.001), ("s", 1.0), ("m", 60.0)] where text.hasSuffix(suffix) {
            return Double(text.dropLast(suffix.count)).map { $0 * factor }
        }
        return Double(text)
    }
}
