// MQTTWire: MQTT 3.1.1 and 5.0 packets, properties, reason codes and topic rules, with a
// two-step decoder (fixed header, then the typed packet) and an encoder. Pure: NIOCore only.

/// MQTT 5 reason codes (one byte on the wire). MQTT 3.1.1 uses a subset: CONNACK return
/// codes are mapped by `MQTTPacket.ConnAck`, SUBACK uses 0x00–0x02 and 0x80.
public enum ReasonCode: UInt8, Sendable, Hashable, CaseIterable {
    /// Success, normal disconnection, granted QoS 0.
    case success = 0x00
    case grantedQoS1 = 0x01
    case grantedQoS2 = 0x02
    case disconnectWithWillMessage = 0x04
    case noMatchingSubscribers = 0x10
    case noSubscriptionExisted = 0x11
    case continueAuthentication = 0x18
    case reAuthenticate = 0x19
    case unspecifiedError = 0x80
    case malformedPacket = 0x81
    case protocolError = 0x82
    case implementationSpecificError = 0x83
    case unsupportedProtocolVersion = 0x84
    case clientIdentifierNotValid = 0x85
    case badUserNameOrPassword = 0x86
    case notAuthorized = 0x87
    case serverUnavailable = 0x88
    case serverBusy = 0x89
    case banned = 0x8A
    case serverShuttingDown = 0x8B
    case badAuthenticationMethod = 0x8C
    case keepAliveTimeout = 0x8D
    case sessionTakenOver = 0x8E
    case topicFilterInvalid = 0x8F
    case topicNameInvalid = 0x90
    case packetIdentifierInUse = 0x91
    case packetIdentifierNotFound = 0x92
    case receiveMaximumExceeded = 0x93
    case topicAliasInvalid = 0x94
    case packetTooLarge = 0x95
    case messageRateTooHigh = 0x96
    case quotaExceeded = 0x97
    case administrativeAction = 0x98
    case payloadFormatInvalid = 0x99
    case retainNotSupported = 0x9A
    case qosNotSupported = 0x9B
    case useAnotherServer = 0x9C
    case serverMoved = 0x9D
    case sharedSubscriptionsNotSupported = 0x9E
    case connectionRateExceeded = 0x9F
    case maximumConnectTime = 0xA0
    case subscriptionIdentifiersNotSupported = 0xA1
    case wildcardSubscriptionsNotSupported = 0xA2

    public var isFailure: Bool { rawValue >= 0x80 }
}

/// Why bytes could not be read (or written) as MQTT: the reason code a server answers with
/// (in a v5 CONNACK or DISCONNECT) and a sentence naming the field.
public struct MQTTWireError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: ReasonCode
    public var message: String

    public init(_ code: ReasonCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func malformed(_ message: String) -> MQTTWireError { MQTTWireError(.malformedPacket, message) }
    public static func protocolError(_ message: String) -> MQTTWireError { MQTTWireError(.protocolError, message) }

    public var description: String { "\(code) (0x\(String(code.rawValue, radix: 16))): \(message)" }
}

/// The protocol level in CONNECT.
public enum MQTTVersion: UInt8, Sendable, Hashable {
    case v3_1_1 = 4
    case v5 = 5
}

/// Quality of service.
public enum QoS: UInt8, Sendable, Hashable, Comparable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (a: QoS, b: QoS) -> Bool { a.rawValue < b.rawValue }
}
