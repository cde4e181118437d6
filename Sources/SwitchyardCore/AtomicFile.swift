import Foundation

/// A small file replaced whole: written to `{path}.tmp`, fsynced, renamed over `path`, so a
/// reader (or a restart after a crash) sees the old contents or the new, never a mix.
public enum AtomicFile {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Mode 0600 by default: what goes through here is private to the node.
    public static func write(_ data: Data, to path: String, permissions: Int = 0o600) throws(Failure) {
        let tmp = path + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: permissions]) else {
            throw Failure(description: "cannot write \(tmp)")
        }
        do {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp))
            try handle.synchronize()
            try handle.close()
        } catch {
            throw Failure(description: "cannot sync \(tmp): \(error)")
        }
        guard rename(tmp, path) == 0 else { throw Failure(description: "cannot replace \(path): errno \(errno)") }
    }
}
