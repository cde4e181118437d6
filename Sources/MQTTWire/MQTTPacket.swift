public import NIOCore

/// Every MQTT control packet, 3.1.1 and 5.0 (properties and reason codes are empty/success
/// for 3.1.1, where the wire has none).
public enum MQTTPacket: Sendable, Equatable {
    case connect(Connect)
    case connack(ConnAck)
    case publish(Publish)
    case puback(Ack)
    case pubrec(Ack)
    case pubrel(Ack)
    case pubcomp(Ack)
    case subscribe(Subscribe)
    case suback(SubAck)
    case unsubscribe(Unsubscribe)
    case unsuback(UnsubAck)
    case pingreq
    case pingresp
    case disconnect(Disconnect)
    case auth(Auth)

    /// The packet type in the fixed header's high nibble.
    public enum Kind: UInt8, Sendable {
        case connect = 1, connack, publish, puback, pubrec, pubrel, pubcomp, subscribe, suback, unsubscribe, unsuback
        case pingreq, pingresp, disconnect, auth
    }

    public var kind: Kind {
        switch self {
        case .connect: .connect
        case .connack: .connack
        case .publish: .publish
        case .puback: .puback
        case .pubrec: .pubrec
        case .pubrel: .pubrel
        case .pubcomp: .pubcomp
        case .subscribe: .subscribe
        case .suback: .suback
        case .unsubscribe: .unsubscribe
        case .unsuback: .unsuback
        case .pingreq: .pingreq
        case .pingresp: .pingresp
        case .disconnect: .disconnect
        case .auth: .auth
        }
    }

    public struct Will: Sendable, Equatable {
        public var topic: String
        public var payload: ByteBuffer
        public var qos: QoS
        public var retain: Bool
        public var properties: MQTTProperties

        public init(topic: String, payload: ByteBuffer, qos: QoS = .atMostOnce, retain: Bool = false, properties: MQTTProperties = MQTTProperties()) {
            self.topic = topic
            self.payload = payload
            self.qos = qos
            self.retain = retain
            self.properties = properties
        }
    }

    public struct Connect: Sendable, Equatable {
        public var version: MQTTVersion
        public var clientID: String
        /// Clean session (3.1.1) / clean start (5).
        public var cleanStart: Bool
        public var keepAliveSeconds: UInt16
        public var username: String?
        public var password: ByteBuffer?
        public var will: Will?
        public var properties: MQTTProperties

        public init(
            version: MQTTVersion,
            clientID: String,
            cleanStart: Bool = true,
            keepAliveSeconds: UInt16 = 60,
            username: String? = nil,
            password: ByteBuffer? = nil,
            will: Will? = nil,
            properties: MQTTProperties = MQTTProperties()
        ) {
            self.version = version
            self.clientID = clientID
            self.cleanStart = cleanStart
            self.keepAliveSeconds = keepAliveSeconds
            self.username = username
            self.password = password
            self.will = will
            self.properties = properties
        }
    }

    public struct ConnAck: Sendable, Equatable {
        public var sessionPresent: Bool
        /// v5 reason code; for 3.1.1 the return code is derived from it (see `v3ReturnCode`).
        public var reason: ReasonCode
        public var properties: MQTTProperties

        public init(sessionPresent: Bool = false, reason: ReasonCode = .success, properties: MQTTProperties = MQTTProperties()) {
            self.sessionPresent = sessionPresent
            self.reason = reason
            self.properties = properties
        }

        /// The MQTT 3.1.1 CONNACK return code for a reason.
        public var v3ReturnCode: UInt8 {
            switch reason {
            case .success: 0
            case .unsupportedProtocolVersion: 1
            case .clientIdentifierNotValid: 2
            case .badUserNameOrPassword: 4
            case .notAuthorized, .banned: 5
            default: 3  // server unavailable
            }
        }

        static func reason(v3ReturnCode code: UInt8) -> ReasonCode? {
            switch code {
            case 0: .success
            case 1: .unsupportedProtocolVersion
            case 2: .clientIdentifierNotValid
            case 3: .serverUnavailable
            case 4: .badUserNameOrPassword
            case 5: .notAuthorized
            default: nil
            }
        }
    }

    public struct Publish: Sendable, Equatable {
        public var topic: String
        public var payload: ByteBuffer
        public var qos: QoS
        public var retain: Bool
        public var dup: Bool
        /// Present exactly when `qos` is above 0.
        public var packetID: UInt16?
        public var properties: MQTTProperties

        public init(
            topic: String,
            payload: ByteBuffer,
            qos: QoS = .atMostOnce,
            retain: Bool = false,
            dup: Bool = false,
            packetID: UInt16? = nil,
            properties: MQTTProperties = MQTTProperties()
        ) {
            self.topic = topic
            self.payload = payload
            self.qos = qos
            self.retain = retain
            self.dup = dup
            self.packetID = packetID
            self.properties = properties
        }
    }

    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    public struct Ack: Sendable, Equatable {
        public var packetID: UInt16
        public var reason: ReasonCode
        public var properties: MQTTProperties

        public init(packetID: UInt16, reason: ReasonCode = .success, properties: MQTTProperties = MQTTProperties()) {
            self.packetID = packetID
            self.reason = reason
            self.properties = properties
        }
    }

    public struct Subscription: Sendable, Equatable {
        public enum RetainHandling: UInt8, Sendable {
            /// Send retained messages at subscribe time.
            case sendOnSubscribe = 0
            /// Only when the subscription is new.
            case sendIfNew = 1
            case doNotSend = 2
        }

        public var filter: String
        public var qos: QoS
        public var noLocal: Bool
        public var retainAsPublished: Bool
        public var retainHandling: RetainHandling

        public init(
            filter: String,
            qos: QoS = .atMostOnce,
            noLocal: Bool = false,
            retainAsPublished: Bool = false,
            retainHandling: RetainHandling = .sendOnSubscribe
        ) {
            self.filter = filter
            self.qos = qos
            self.noLocal = noLocal
            self.retainAsPublished = retainAsPublished
            self.retainHandling = retainHandling
        }
    }

    public struct Subscribe: Sendable, Equatable {
        public var packetID: UInt16
        public var subscriptions: [Subscription]
        public var properties: MQTTProperties

        public init(packetID: UInt16, subscriptions: [Subscription], properties: MQTTProperties = MQTTProperties()) {
            self.packetID = packetID
            self.subscriptions = subscriptions
            self.properties = properties
        }
    }

    public struct SubAck: Sendable, Equatable {
        public var packetID: UInt16
        /// One per subscription: granted QoS (0x00–0x02) or a failure (3.1.1: any failure is 0x80).
        public var reasons: [ReasonCode]
        public var properties: MQTTProperties

        public init(packetID: UInt16, reasons: [ReasonCode], properties: MQTTProperties = MQTTProperties()) {
            self.packetID = packetID
            self.reasons = reasons
            self.properties = properties
        }
    }

    public struct Unsubscribe: Sendable, Equatable {
        public var packetID: UInt16
        public var filters: [String]
        public var properties: MQTTProperties

        public init(packetID: UInt16, filters: [String], properties: MQTTProperties = MQTTProperties()) {
            self.packetID = packetID
            self.filters = filters
            self.properties = properties
        }
    }

    public struct UnsubAck: Sendable, Equatable {
        public var packetID: UInt16
        /// v5 only (3.1.1 UNSUBACK carries none).
        public var reasons: [ReasonCode]
        public var properties: MQTTProperties

        public init(packetID: UInt16, reasons: [ReasonCode] = [], properties: MQTTProperties = MQTTProperties()) {
            self.packetID = packetID
            self.reasons = reasons
            self.properties = properties
        }
    }

    public struct Disconnect: Sendable, Equatable {
        public var reason: ReasonCode
        public var properties: MQTTProperties

        public init(reason: ReasonCode = .success, properties: MQTTProperties = MQTTProperties()) {
            self.reason = reason
            self.properties = properties
        }
    }

    public struct Auth: Sendable, Equatable {
        public var reason: ReasonCode
        public var properties: MQTTProperties

        public init(reason: ReasonCode = .success, properties: MQTTProperties = MQTTProperties()) {
            self.reason = reason
            self.properties = properties
        }
    }
}
