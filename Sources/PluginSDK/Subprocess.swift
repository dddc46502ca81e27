
#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program (qemu-img, ovs-vsctl) without a shell and collects its output.
/// For plugin calls, which run on the agent's plugin-call threads and may block.
public enum Subprocess {
    public struct Result: Sendable {
        public var status: Int32
        public var output: String
        public var errorOutput: String
    }

    public static func run(_ argv: [String]) throws(PluginFailure) -> Result {
        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else {
            throw PluginFailure(CA_ERR_FAILED, "pipe: \(String(cString: strerror(errno)))")
        }
        // Only the child's copies (dup2'ed to 1 and 2) stay open across exec.
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, &cargs, environ)
        close(outPipe[1])
        close(errPipe[1])
        defer { close(outPipe[0]); close(errPipe[0]) }
        guard rc == 0 else { throw PluginFailure(CA_ERR_FAILED, "cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        let out = readAll(outPipe[0]), err = readAll(errPipe[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return Result(status: code, output: out, errorOutput: err)
    }

    /// Both pipes are small (qemu-img's JSON, an error line): read them one after the other.
    private static func readAll(_ fd: Int32) -> String {
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
            if data.count > 16 << 20 { break }
        }
        return String(decoding: data, as: UTF8.self)
    }
}


extension String {
    /// The text on one line (for error messages quoting a tool's output).
    public func trimmingLines() -> String {
        split(whereSeparator: { $0 == "\n" || $0 == "\r" }).joined(separator: " ")
    }
}
