import Foundation
public import MQTTWire
public import NIOCore
import SwitchyardCore

/// The broker's state between runs — persistent sessions and retained messages — as one
/// binary file (`mqtt/state.bin` in the data dir), replaced atomically (temporary file,
/// fsync, rename). Messages are stored as MQTT 5 PUBLISH packets, so every property survives.
///
/// Layout: magic `SWYMQTT1`, then the retained messages, then the sessions; integers are
/// big-endian, strings and packets carry a 32-bit length.
public enum MQTTStateFile {
    static let magic = "SWYMQTT1"

    public struct Contents: Sendable, Equatable {
        public var sessions: [MQTTSession] = []
        public var retained: [MQTTRetained] = []
        public init(sessions: [MQTTSession] = [], retained: [MQTTRetained] = []) {
            self.sessions = sessions
            self.retained = retained
        }
    }

    public static func encode(_ contents: Contents) throws(MQTTWireError) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeString(magic)
        b.writeInteger(UInt32(contents.retained.count))
        for r in contents.retained {
            b.writeInteger(r.expiresAt ?? 0)
            try writePublish(r.publish, into: &b)
        }
        b.writeInteger(UInt32(contents.sessions.count))
        for s in contents.sessions {
            writeString(s.clientID, into: &b)
            b.writeInteger(UInt8(s.identity == nil ? 0 : 1))
            if let id = s.identity {
                writeString(id.product, into: &b)
                writeString(id.device, into: &b)
            }
            b.writeInteger(s.expirySeconds)
            b.writeInteger(s.endedAt)
            b.writeInteger(s.nextPacketID)
            b.writeInteger(UInt32(s.subscriptions.count))
            for (filter, sub) in s.subscriptions.sorted(by: { $0.key < $1.key }) {
                writeString(filter, into: &b)
                b.writeInteger(sub.qos.rawValue)
                b.writeInteger(UInt8((sub.noLocal ? 1 : 0) | (sub.retainAsPublished ? 2 : 0)))
                b.writeInteger(sub.retainHandling.rawValue)
                b.writeInteger(UInt32(s.identifiers[filter] ?? 0))
            }
            b.writeInteger(UInt32(s.awaitingRelease.count))
            for id in s.awaitingRelease.sorted() { b.writeInteger(id) }
            for list in [s.inflight, Array(s.queued.elements)] {
                b.writeInteger(UInt32(list.count))
                for m in list {
                    b.writeInteger(m.expiresAt ?? 0)
                    b.writeInteger(UInt8(m.released ? 1 : 0))
                    writeString(m.shareFilter ?? "", into: &b)
                    try writePublish(m.publish, into: &b)
                }
            }
        }
        return b
    }

    public static func decode(_ buffer: ByteBuffer) throws(MQTTWireError) -> Contents {
        var b = buffer
        guard b.readString(length: magic.utf8.count) == magic else { throw .malformed("not a Switchyard MQTT state file (bad magic)") }
        var contents = Contents()
        for _ in 0..<(try int(&b, as: UInt32.self)) {
            let expiresAt = try int(&b, as: UInt64.self)
            contents.retained.append(MQTTRetained(publish: try readPublish(&b), expiresAt: expiresAt == 0 ? nil : expiresAt))
        }
        for _ in 0..<(try int(&b, as: UInt32.self)) {
            let clientID = try string(&b)
            var identity: DeviceIdentity?
            if try int(&b, as: UInt8.self) == 1 { identity = DeviceIdentity(product: try string(&b), device: try string(&b)) }
            var s = MQTTSession(clientID: clientID, identity: identity, expirySeconds: try int(&b, as: UInt32.self))
            s.endedAt = try int(&b, as: UInt64.self)
            s.nextPacketID = try int(&b, as: UInt16.self)
            for _ in 0..<(try int(&b, as: UInt32.self)) {
                let filter = try string(&b)
                guard let qos = QoS(rawValue: try int(&b, as: UInt8.self)) else { throw .malformed("bad QoS in \(clientID)'s subscription") }
                let flags = try int(&b, as: UInt8.self)
                guard let handling = MQTTPacket.Subscription.RetainHandling(rawValue: try int(&b, as: UInt8.self)) else {
                    throw .malformed("bad retain handling in \(clientID)'s subscription")
                }
                let identifier = try int(&b, as: UInt32.self)
                s.subscriptions[filter] = MQTTPacket.Subscription(
                    filter: filter,
                    qos: qos,
                    noLocal: flags & 1 != 0,
                    retainAsPublished: flags & 2 != 0,
                    retainHandling: handling
                )
                if identifier != 0 { s.identifiers[filter] = Int(identifier) }
            }
            for _ in 0..<(try int(&b, as: UInt32.self)) { s.awaitingRelease.insert(try int(&b, as: UInt16.self)) }
            for list in 0..<2 {
                for _ in 0..<(try int(&b, as: UInt32.self)) {
                    let expiresAt = try int(&b, as: UInt64.self)
                    let released = try int(&b, as: UInt8.self) == 1
                    let share = try string(&b)
                    var m = MQTTOutbound(
                        publish: try readPublish(&b),
                        expiresAt: expiresAt == 0 ? nil : expiresAt,
                        shareFilter: share.isEmpty ? nil : share
                    )
                    m.released = released
                    if list == 0 {
                        m.sequence = UInt64(s.inflight.count)
                        s.inflight.append(m)
                    } else {
                        m.publish.packetID = nil
                        s.queued.append(m)
                    }
                }
            }
            contents.sessions.append(s)
        }
        guard b.readableBytes == 0 else { throw .malformed("\(b.readableBytes) bytes left over at the end") }
        return contents
    }

    /// Reads the file; nil when there is none.
    public static func load(path: String) throws -> Contents? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try decode(ByteBuffer(bytes: data))
    }

    /// Writes the file atomically (mode 0600).
    public static func save(_ contents: Contents, path: String) throws {
        let buffer = try encode(contents)
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try AtomicFile.write(Data(buffer.readableBytesView), to: path)
    }

    // MARK: - Fields

    static func writeString(_ s: String, into b: inout ByteBuffer) {
        b.writeInteger(UInt32(s.utf8.count))
        b.writeString(s)
    }

    static func writePublish(_ p: MQTTPacket.Publish, into b: inout ByteBuffer) throws(MQTTWireError) {
        var p = p
        if p.qos != .atMostOnce && p.packetID == nil { p.packetID = 1 }  // the wire needs one; dropped on reading a queued message
        if p.qos == .atMostOnce { p.dup = false }
        var packet = ByteBuffer()
        try MQTTEncoder.encode(.publish(p), version: .v5, into: &packet)
        b.writeInteger(UInt32(packet.readableBytes))
        b.writeImmutableBuffer(packet)
    }

    static func readPublish(_ b: inout ByteBuffer) throws(MQTTWireError) -> MQTTPacket.Publish {
        let length = Int(try int(&b, as: UInt32.self))
        guard var packet = b.readSlice(length: length) else { throw .malformed("a stored message is cut off") }
        var decoder = MQTTDecoder(version: .v5)
        guard case .publish(let p)? = try decoder.decode(&packet) else { throw .malformed("a stored message is not a PUBLISH") }
        return p
    }

    static func int<T: FixedWidthInteger>(_ b: inout ByteBuffer, as: T.Type) throws(MQTTWireError) -> T {
        guard let v = b.readInteger(as: T.self) else { throw .malformed("the file is cut off") }
        return v
    }

    static func string(_ b: inout ByteBuffer) throws(MQTTWireError) -> String {
        let length = Int(try int(&b, as: UInt32.self))
        guard let s = b.readString(length: length) else { throw .malformed("a string is cut off") }
        return s
    }
}
