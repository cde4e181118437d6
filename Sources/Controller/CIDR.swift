public import NIOCore
import SwitchyardCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
public struct CIDR: Sendable, Equatable, CustomStringConvertible {
    let bytes: [UInt8]
    let prefix: Int
    public let description: String

    public init(_ text: String) throws(ControllerConfigError) {
        description = text
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let address = String(parts[0])
        guard let bytes = CIDR.parseAddress(address) else {
            throw ControllerConfigError("\"\(text)\" is not an IPv4 or IPv6 address or network")
        }
        self.bytes = bytes
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= bytes.count * 8 else {
                throw ControllerConfigError("\"\(text)\": prefix length must be 0...\(bytes.count * 8)")
            }
            prefix = p
        } else {
            prefix = bytes.count * 8
        }
    }

    /// True when the address lies in this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    /// (Checked on every message and request: reads the socket address in place.)
    public func contains(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let a):
            return withUnsafeBytes(of: a.address) { contains(networkOrder: IPBytes.v4($0)) }
        case .v6(let a):
            return withUnsafeBytes(of: a.address) { socketAddress in
                let raw = IPBytes.v6(socketAddress)
                if bytes.count == 4 && raw.prefix(10).allSatisfy({ $0 == 0 }) && raw[10] == 0xFF && raw[11] == 0xFF {
                    return contains(networkOrder: UnsafeRawBufferPointer(rebasing: raw[12...]))
                }
                return contains(networkOrder: raw)
            }
        case .unixDomainSocket:
            return false
        }
    }

    /// `other`: an address's bytes as they travel (4 or 16).
    private func contains(networkOrder other: UnsafeRawBufferPointer) -> Bool {
        guard other.count == bytes.count else { return false }
        var remaining = prefix
        for i in 0..<bytes.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask: UInt8 = bits == 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            if bytes[i] & mask != other[i] & mask { return false }
            remaining -= bits
        }
        return true
    }

    static func parseAddress(_ text: String) -> [UInt8]? {
        var v4 = [UInt8](repeating: 0, count: 4)
        if inet_pton(AF_INET, text, &v4) == 1 { return v4 }
        var v6 = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET6, text, &v6) == 1 { return v6 }
        return nil
    }
}
