import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Child processes for the tests, started with `posix_spawn`. (Not Foundation's `Process`: on
/// Linux its `run()` scans `/proc/self/fd` and has crashed reading past the last entry once the
/// test process had ~1,350 descriptors open, which a full parallel suite comes near.)
enum Spawn {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Where a child's standard output or error goes.
    enum Sink {
        /// Discarded.
        case null
        /// Appended to a file (created if missing).
        case file(String)
        /// A pipe the test reads with `Child.readOutput()` (standard output only).
        case pipe
        /// Wherever standard output goes (standard error only).
        case output
    }

    /// A running (or ended) child process.
    final class Child: @unchecked Sendable {
        // @unchecked: `ended` is guarded by `lock`; the rest is set once in `init`.
        let pid: pid_t
        private let output: FileHandle?
        private let lock = NSLock()
        private var ended: Int32?

        fileprivate init(pid: pid_t, output: FileHandle?) {
            self.pid = pid
            self.output = output
        }

        deinit {
            // A child the test forgot is not left running.
            if isRunning { kill(pid, SIGKILL) }
            if ended == nil { wait() }
        }

        /// Whether it has not ended yet (reaps it when it has).
        var isRunning: Bool { reap(blocking: false) == nil }

        /// Sends a signal while it runs.
        func signal(_ signal: Int32) {
            if isRunning { kill(pid, signal) }
        }

        /// SIGTERM while it runs.
        func terminate() { signal(SIGTERM) }

        /// Waits for its end (blocking the calling thread); returns the exit status, or 128 +
        /// the signal that ended it.
        @discardableResult func wait() -> Int32 { reap(blocking: true)! }

        /// Everything it wrote to a `.pipe` standard output, read to its end (blocking).
        func readOutput() -> String { String(decoding: readOutputData(), as: UTF8.self) }

        /// The same as bytes.
        func readOutputData() -> Data { output?.readDataToEndOfFile() ?? Data() }

        private func reap(blocking: Bool) -> Int32? {
            if let code = lock.withLock({ ended }) { return code }
            var status: Int32 = 0
            while true {
                let r = waitpid(pid, &status, blocking ? 0 : WNOHANG)
                if r == pid { break }
                if r == 0 { return nil }
                if errno == EINTR { continue }
                // ECHILD: another thread reaped it; its result is stored in a moment.
                while lock.withLock({ ended }) == nil { usleep(1000) }
                return lock.withLock { ended }
            }
            let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            lock.withLock { ended = code }
            return code
        }
    }

    /// Starts `path` with `args` (in `dir` when given); the child keeps none of the test
    /// process's descriptors but its standard input (/dev/null), output and error.
    static func start(_ path: String, _ args: [String], in dir: String? = nil, output: Sink = .null, errors: Sink = .null) throws -> Child {
        // (`env -C` changes the directory: posix_spawn has no portable chdir action.)
        let argv = dir.map { ["/usr/bin/env", "-C", $0, path] + args } ?? [path] + args
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var pipeEnds: [Int32] = [-1, -1]
        func direct(_ sink: Sink, to fd: Int32) throws {
            switch sink {
            case .null: posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_WRONLY, 0)
            case .file(let path): posix_spawn_file_actions_addopen(&actions, fd, path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
            case .output: posix_spawn_file_actions_adddup2(&actions, 1, fd)
            case .pipe:
                guard pipe(&pipeEnds) == 0 else { throw Failure(description: "pipe: errno \(errno)") }
                // (Not inherited by other children spawned meanwhile: their copy would hold the pipe open.)
                _ = fcntl(pipeEnds[0], F_SETFD, FD_CLOEXEC)
                _ = fcntl(pipeEnds[1], F_SETFD, FD_CLOEXEC)
                posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], fd)
            }
        }
        if case .output = output { throw Failure(description: "standard output cannot go to itself") }
        if case .pipe = errors { throw Failure(description: "only standard output goes to a pipe") }
        try direct(output, to: 1)
        try direct(errors, to: 2)
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
        if pipeEnds[1] >= 0 { close(pipeEnds[1]) }
        guard spawned == 0 else {
            if pipeEnds[0] >= 0 { close(pipeEnds[0]) }
            throw Failure(description: "posix_spawn \(argv[0]): errno \(spawned)")
        }
        return Child(pid: pid, output: pipeEnds[0] >= 0 ? FileHandle(fileDescriptor: pipeEnds[0], closeOnDealloc: true) : nil)
    }

    /// Runs a program to its end; returns its status, standard output and standard error.
    static func run(_ path: String, _ args: [String], in dir: String? = nil, mergeErrors: Bool = false) throws -> (Int32, Data, Data) {
        let errorFile = FileManager.default.temporaryDirectory.appendingPathComponent("spawn-\(UUID().uuidString).err").path
        defer { unlink(errorFile) }
        let child = try start(path, args, in: dir, output: .pipe, errors: mergeErrors ? .output : .file(errorFile))
        let output = child.readOutputData()
        let code = child.wait()
        let errors = (try? Data(contentsOf: URL(fileURLWithPath: errorFile))) ?? Data()
        return (code, output, errors)
    }
}
