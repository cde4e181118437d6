import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Runs a program to its end with `posix_spawn` and returns its status, standard output and
/// standard error. (Not Foundation's `Process` for these short runs: on Linux its `run()`
/// scans `/proc/self/fd` and has crashed reading past the last entry once the test process
/// had ~1,350 descriptors open, which a full parallel suite comes near.)
enum Spawn {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func run(_ path: String, _ args: [String], in dir: String? = nil, mergeErrors: Bool = false) throws -> (Int32, Data, Data) {
        // (`env -C` changes the directory: posix_spawn has no portable chdir action.)
        let argv = dir.map { ["/usr/bin/env", "-C", $0, path] + args } ?? [path] + args
        var out: [Int32] = [0, 0]
        guard pipe(&out) == 0 else { throw Failure(description: "pipe: errno \(errno)") }
        // (Not inherited by other children spawned meanwhile: their copy would hold the pipe open.)
        _ = fcntl(out[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(out[1], F_SETFD, FD_CLOEXEC)
        let errorFile = FileManager.default.temporaryDirectory.appendingPathComponent("spawn-\(UUID().uuidString).err").path
        defer { unlink(errorFile) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        if mergeErrors {
            posix_spawn_file_actions_adddup2(&actions, out[1], 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, errorFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        }
        posix_spawn_file_actions_addclose(&actions, out[0])
        posix_spawn_file_actions_addclose(&actions, out[1])
        // The child keeps none of the test process's other descriptors (a listening socket or
        // a connection held by a child would outlive its test's close).
        // (glibc 2.34+; looked up at run time: Swift's Glibc module leaves the GNU extension out.)
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
            throw Failure(description: "posix_spawn_file_actions_addclosefrom_np is missing (glibc older than 2.34)")
        }
        _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for arg in cArgs { free(arg) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, argv[0], &actions, nil, &cArgs, environ)
        close(out[1])
        guard spawned == 0 else {
            close(out[0])
            throw Failure(description: "posix_spawn \(argv[0]): errno \(spawned)")
        }
        let reader = FileHandle(fileDescriptor: out[0], closeOnDealloc: true)
        let output = reader.readDataToEndOfFile()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let errors = (try? Data(contentsOf: URL(fileURLWithPath: errorFile))) ?? Data()
        // (The exit status when it exited; 128 + the signal when a signal ended it.)
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, output, errors)
    }
}
