public import NIOCore

/// MQTT 5 properties of one packet (or of a will). Absent = not sent. Each property may
/// appear only in the packets the spec lists, and at most once, except user properties
/// and (in PUBLISH) subscription identifiers.
@dynamicMemberLookup
public struct MQTTProperties: Sendable, Equatable {
    public struct UserProperty: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    /// The properties themselves; `MQTTProperties` reads and writes them by name.
    public struct Fields: Sendable, Equatable {
        public var payloadFormatIndicator: UInt8?
        public var messageExpiryInterval: UInt32?
        public var contentType: String?
        public var responseTopic: String?
        public var correlationData: ByteBuffer?
        public var subscriptionIdentifiers: [Int] = []
        public var sessionExpiryInterval: UInt32?
        public var assignedClientIdentifier: String?
        public var serverKeepAlive: UInt16?
        public var authenticationMethod: String?
        public var authenticationData: ByteBuffer?
        public var requestProblemInformation: UInt8?
        public var willDelayInterval: UInt32?
        public var requestResponseInformation: UInt8?
        public var responseInformation: String?
        public var serverReference: String?
        public var reasonString: String?
        public var receiveMaximum: UInt16?
        public var topicAliasMaximum: UInt16?
        public var topicAlias: UInt16?
        public var maximumQoS: UInt8?
        public var retainAvailable: UInt8?
        public var userProperties: [UserProperty] = []
        public var maximumPacketSize: UInt32?
        public var wildcardSubscriptionAvailable: UInt8?
        public var subscriptionIdentifiersAvailable: UInt8?
        public var sharedSubscriptionAvailable: UInt8?

        public init() {}
    }

    /// Set properties, boxed: nil when none is set (most PUBLISHes and acks), so a packet's
    /// property block costs one word to copy and nothing to check.
    final class Storage: @unchecked Sendable {
        // @unchecked: never changed once made (a write makes a new one).
        let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var storage: Storage?

    public init() {}

    public init(fields: Fields) {
        storage = fields == Fields() ? nil : Storage(fields)
    }

    public var fields: Fields { storage?.fields ?? Fields() }

    public var isEmpty: Bool { storage == nil }

    public subscript<T>(dynamicMember key: WritableKeyPath<Fields, T>) -> T {
        get { (storage?.fields ?? Fields())[keyPath: key] }
        set {
            var f = storage?.fields ?? Fields()
            f[keyPath: key] = newValue
            self = MQTTProperties(fields: f)
        }
    }

    public static func == (a: MQTTProperties, b: MQTTProperties) -> Bool {
        a.storage === b.storage || a.fields == b.fields
    }

    /// Where a property block sits: decides which properties are allowed.
    public enum Context: Sendable {
        case connect, connack, publish, will, ack, subscribe, suback, unsubscribe, unsuback, disconnect, auth
    }

    /// Property identifiers and the contexts that allow them.
    enum ID: UInt8 {
        case payloadFormatIndicator = 0x01
        case messageExpiryInterval = 0x02
        case contentType = 0x03
        case responseTopic = 0x08
        case correlationData = 0x09
        case subscriptionIdentifier = 0x0B
        case sessionExpiryInterval = 0x11
        case assignedClientIdentifier = 0x12
        case serverKeepAlive = 0x13
        case authenticationMethod = 0x15
        case authenticationData = 0x16
        case requestProblemInformation = 0x17
        case willDelayInterval = 0x18
        case requestResponseInformation = 0x19
        case responseInformation = 0x1A
        case serverReference = 0x1C
        case reasonString = 0x1F
        case receiveMaximum = 0x21
        case topicAliasMaximum = 0x22
        case topicAlias = 0x23
        case maximumQoS = 0x24
        case retainAvailable = 0x25
        case userProperty = 0x26
        case maximumPacketSize = 0x27
        case wildcardSubscriptionAvailable = 0x28
        case subscriptionIdentifiersAvailable = 0x29
        case sharedSubscriptionAvailable = 0x2A

        func allowed(in context: Context) -> Bool {
            switch self {
            case .payloadFormatIndicator, .messageExpiryInterval, .contentType, .responseTopic, .correlationData:
                return context == .publish || context == .will
            case .subscriptionIdentifier: return context == .publish || context == .subscribe
            case .sessionExpiryInterval: return context == .connect || context == .connack || context == .disconnect
            case .assignedClientIdentifier, .serverKeepAlive, .responseInformation, .maximumQoS, .retainAvailable,
                .wildcardSubscriptionAvailable, .subscriptionIdentifiersAvailable, .sharedSubscriptionAvailable:
                return context == .connack
            case .authenticationMethod, .authenticationData: return context == .connect || context == .connack || context == .auth
            case .requestProblemInformation, .requestResponseInformation: return context == .connect
            case .willDelayInterval: return context == .will
            case .serverReference: return context == .connack || context == .disconnect
            case .reasonString:
                return [.connack, .ack, .suback, .unsuback, .disconnect, .auth].contains(context)
            case .receiveMaximum, .topicAliasMaximum, .maximumPacketSize: return context == .connect || context == .connack
            case .topicAlias: return context == .publish
            case .userProperty: return true
            }
        }
    }

    // MARK: - Decoding

    /// Reads a property block (length, then properties) for `context`.
    static func decode(from buffer: inout ByteBuffer, context: Context) throws(MQTTWireError) -> MQTTProperties {
        let length = try VariableByteInteger.read(from: &buffer, field: "property length")
        guard length <= buffer.readableBytes else { throw .malformed("the property length \(length) runs past the packet") }
        var block = buffer.readSlice(length: length)!
        var p = Fields()
        var seen = Set<UInt8>()
        while block.readableBytes > 0 {
            let idByte = try VariableByteInteger.read(from: &block, field: "property identifier")
            guard idByte < 256, let id = ID(rawValue: UInt8(idByte)) else {
                throw .malformed("unknown property identifier 0x\(String(idByte, radix: 16))")
            }
            guard id.allowed(in: context) else { throw .protocolError("property \(id) is not allowed in \(context)") }
            let repeatable = id == .userProperty || (id == .subscriptionIdentifier && context == .publish)
            if !repeatable {
                guard seen.insert(id.rawValue).inserted else { throw .protocolError("property \(id) appears twice") }
            }
            switch id {
            case .payloadFormatIndicator:
                let v = try Wire.byte(&block, "\(id)")
                guard v <= 1 else { throw .protocolError("payload format indicator must be 0 or 1") }
                p.payloadFormatIndicator = v
            case .messageExpiryInterval: p.messageExpiryInterval = try Wire.uint32(&block, "\(id)")
            case .contentType: p.contentType = try Wire.string(&block, "\(id)")
            case .responseTopic:
                let topic = try Wire.string(&block, "\(id)")
                if let problem = MQTTTopic.problemWithName(topic) { throw .protocolError("response topic: \(problem)") }
                p.responseTopic = topic
            case .correlationData: p.correlationData = try Wire.binary(&block, "\(id)")
            case .subscriptionIdentifier:
                let v = try VariableByteInteger.read(from: &block, field: "\(id)")
                guard v > 0 else { throw .protocolError("subscription identifier 0 is not allowed") }
                p.subscriptionIdentifiers.append(v)
            case .sessionExpiryInterval: p.sessionExpiryInterval = try Wire.uint32(&block, "\(id)")
            case .assignedClientIdentifier: p.assignedClientIdentifier = try Wire.string(&block, "\(id)")
            case .serverKeepAlive: p.serverKeepAlive = try Wire.uint16(&block, "\(id)")
            case .authenticationMethod: p.authenticationMethod = try Wire.string(&block, "\(id)")
            case .authenticationData: p.authenticationData = try Wire.binary(&block, "\(id)")
            case .requestProblemInformation: p.requestProblemInformation = try Wire.flag(&block, "\(id)")
            case .willDelayInterval: p.willDelayInterval = try Wire.uint32(&block, "\(id)")
            case .requestResponseInformation: p.requestResponseInformation = try Wire.flag(&block, "\(id)")
            case .responseInformation: p.responseInformation = try Wire.string(&block, "\(id)")
            case .serverReference: p.serverReference = try Wire.string(&block, "\(id)")
            case .reasonString: p.reasonString = try Wire.string(&block, "\(id)")
            case .receiveMaximum:
                let v = try Wire.uint16(&block, "\(id)")
                guard v > 0 else { throw .protocolError("receive maximum 0 is not allowed") }
                p.receiveMaximum = v
            case .topicAliasMaximum: p.topicAliasMaximum = try Wire.uint16(&block, "\(id)")
            case .topicAlias:
                let v = try Wire.uint16(&block, "\(id)")
                guard v > 0 else { throw .protocolError("topic alias 0 is not allowed") }
                p.topicAlias = v
            case .maximumQoS:
                let v = try Wire.byte(&block, "\(id)")
                guard v <= 1 else { throw .protocolError("maximum QoS must be 0 or 1") }
                p.maximumQoS = v
            case .retainAvailable: p.retainAvailable = try Wire.flag(&block, "\(id)")
            case .userProperty:
                let key = try Wire.string(&block, "user property name")
                p.userProperties.append(UserProperty(key, try Wire.string(&block, "user property value")))
            case .maximumPacketSize:
                let v = try Wire.uint32(&block, "\(id)")
                guard v > 0 else { throw .protocolError("maximum packet size 0 is not allowed") }
                p.maximumPacketSize = v
            case .wildcardSubscriptionAvailable: p.wildcardSubscriptionAvailable = try Wire.flag(&block, "\(id)")
            case .subscriptionIdentifiersAvailable: p.subscriptionIdentifiersAvailable = try Wire.flag(&block, "\(id)")
            case .sharedSubscriptionAvailable: p.sharedSubscriptionAvailable = try Wire.flag(&block, "\(id)")
            }
        }
        return MQTTProperties(fields: p)
    }

    // MARK: - Encoding

    /// Writes the property block (length, then properties); a property the context does not
    /// allow is an error, never sent.
    func encode(into buffer: inout ByteBuffer, context: Context) throws(MQTTWireError) {
        guard let storage else {  // the usual case (most PUBLISHes, acks): a zero length, nothing to check
            buffer.writeInteger(UInt8(0))
            return
        }
        try storage.fields.encode(into: &buffer, context: context)
    }
}

extension MQTTProperties.Fields {
    typealias ID = MQTTProperties.ID
    typealias Context = MQTTProperties.Context

    /// The identifiers of the properties that are set.
    var present: [ID] {
        var ids: [ID] = []
        func add(_ set: Bool, _ id: ID) { if set { ids.append(id) } }
        add(payloadFormatIndicator != nil, .payloadFormatIndicator)
        add(messageExpiryInterval != nil, .messageExpiryInterval)
        add(contentType != nil, .contentType)
        add(responseTopic != nil, .responseTopic)
        add(correlationData != nil, .correlationData)
        add(!subscriptionIdentifiers.isEmpty, .subscriptionIdentifier)
        add(sessionExpiryInterval != nil, .sessionExpiryInterval)
        add(assignedClientIdentifier != nil, .assignedClientIdentifier)
        add(serverKeepAlive != nil, .serverKeepAlive)
        add(authenticationMethod != nil, .authenticationMethod)
        add(authenticationData != nil, .authenticationData)
        add(requestProblemInformation != nil, .requestProblemInformation)
        add(willDelayInterval != nil, .willDelayInterval)
        add(requestResponseInformation != nil, .requestResponseInformation)
        add(responseInformation != nil, .responseInformation)
        add(serverReference != nil, .serverReference)
        add(reasonString != nil, .reasonString)
        add(receiveMaximum != nil, .receiveMaximum)
        add(topicAliasMaximum != nil, .topicAliasMaximum)
        add(topicAlias != nil, .topicAlias)
        add(maximumQoS != nil, .maximumQoS)
        add(retainAvailable != nil, .retainAvailable)
        add(!userProperties.isEmpty, .userProperty)
        add(maximumPacketSize != nil, .maximumPacketSize)
        add(wildcardSubscriptionAvailable != nil, .wildcardSubscriptionAvailable)
        add(subscriptionIdentifiersAvailable != nil, .subscriptionIdentifiersAvailable)
        add(sharedSubscriptionAvailable != nil, .sharedSubscriptionAvailable)
        return ids
    }

    /// Writes the property block (length, then properties); a property the context does not
    /// allow is an error, never sent.
    func encode(into buffer: inout ByteBuffer, context: Context) throws(MQTTWireError) {
        if let wrong = present.first(where: { !$0.allowed(in: context) }) {
            throw .protocolError("property \(wrong) is not allowed in \(context)")
        }
        var block = ByteBuffer()
        func id(_ i: ID) { block.writeInteger(i.rawValue) }
        if let v = payloadFormatIndicator { id(.payloadFormatIndicator); block.writeInteger(v) }
        if let v = messageExpiryInterval { id(.messageExpiryInterval); block.writeInteger(v) }
        if let v = contentType { id(.contentType); try Wire.writeString(v, into: &block) }
        if let v = responseTopic { id(.responseTopic); try Wire.writeString(v, into: &block) }
        if let v = correlationData { id(.correlationData); try Wire.writeBinary(v, into: &block) }
        for v in subscriptionIdentifiers {
            id(.subscriptionIdentifier)
            try VariableByteInteger.write(v, into: &block)
        }
        if let v = sessionExpiryInterval { id(.sessionExpiryInterval); block.writeInteger(v) }
        if let v = assignedClientIdentifier { id(.assignedClientIdentifier); try Wire.writeString(v, into: &block) }
        if let v = serverKeepAlive { id(.serverKeepAlive); block.writeInteger(v) }
        if let v = authenticationMethod { id(.authenticationMethod); try Wire.writeString(v, into: &block) }
        if let v = authenticationData { id(.authenticationData); try Wire.writeBinary(v, into: &block) }
        if let v = requestProblemInformation { id(.requestProblemInformation); block.writeInteger(v) }
        if let v = willDelayInterval { id(.willDelayInterval); block.writeInteger(v) }
        if let v = requestResponseInformation { id(.requestResponseInformation); block.writeInteger(v) }
        if let v = responseInformation { id(.responseInformation); try Wire.writeString(v, into: &block) }
        if let v = serverReference { id(.serverReference); try Wire.writeString(v, into: &block) }
        if let v = reasonString { id(.reasonString); try Wire.writeString(v, into: &block) }
        if let v = receiveMaximum { id(.receiveMaximum); block.writeInteger(v) }
        if let v = topicAliasMaximum { id(.topicAliasMaximum); block.writeInteger(v) }
        if let v = topicAlias { id(.topicAlias); block.writeInteger(v) }
        if let v = maximumQoS { id(.maximumQoS); block.writeInteger(v) }
        if let v = retainAvailable { id(.retainAvailable); block.writeInteger(v) }
        for u in userProperties {
            id(.userProperty)
            try Wire.writeString(u.name, into: &block)
            try Wire.writeString(u.value, into: &block)
        }
        if let v = maximumPacketSize { id(.maximumPacketSize); block.writeInteger(v) }
        if let v = wildcardSubscriptionAvailable { id(.wildcardSubscriptionAvailable); block.writeInteger(v) }
        if let v = subscriptionIdentifiersAvailable { id(.subscriptionIdentifiersAvailable); block.writeInteger(v) }
        if let v = sharedSubscriptionAvailable { id(.sharedSubscriptionAvailable); block.writeInteger(v) }
        try VariableByteInteger.write(block.readableBytes, into: &buffer)
        buffer.writeBuffer(&block)
    }
}
