/// The address bytes inside a `sockaddr_in` / `sockaddr_in6`, in network order, read in place
/// (no text round trip). The offsets are the POSIX layout on Linux and Darwin alike: family
/// and port come first (4 bytes), then the IPv4 address; IPv6 has a 4-byte flow label before
/// its address.
public enum IPBytes {
    public static func v4(_ sockaddrIn: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: sockaddrIn[4..<8])
    }

    public static func v6(_ sockaddrIn6: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: sockaddrIn6[8..<24])
    }
}
