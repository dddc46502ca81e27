import PluginSDK

#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program (qemu-img) without a shell and collects its standard output.
/// Called on the agent's plugin-call threads, which may block.
enum Subprocess {
    struct Result {
        var status: Int32
        var output: String
        var errorOutput: String
    }

    static func run(_ argv: [String]) throws(PluginFailure) -> Result {
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

/// What `qemu-img info --output=json` says of a file.
struct QemuImageInfo {
    var format: String
    var virtualSize: Int
    var backingFile: String?
    var dataFile: String?

    static func of(_ path: String) throws(PluginFailure) -> QemuImageInfo {
        // -U (force-share): a base a running domain holds must still be readable.
        let r = try Subprocess.run(["qemu-img", "info", "-U", "--output=json", path])
        guard r.status == 0 else {
            throw PluginFailure(CA_ERR_INVALID_ARGUMENT, "qemu-img info \(path) failed: \(r.errorOutput.trimmingLines())")
        }
        guard let j = try? JSONValue.parse(r.output), let format = j["format"]?.stringValue,
              let size = j["virtual-size"]?.intValue else {
            throw PluginFailure(CA_ERR_FAILED, "qemu-img info \(path): unexpected output")
        }
        return QemuImageInfo(format: format, virtualSize: size, backingFile: j["backing-filename"]?.stringValue,
                             dataFile: j["format-specific"]?["data"]?["data-file"]?.stringValue)
    }

    static func run(_ argv: [String], what: String) throws(PluginFailure) {
        let r = try Subprocess.run(argv)
        guard r.status == 0 else { throw PluginFailure(CA_ERR_FAILED, "\(what) failed: \(r.errorOutput.trimmingLines())") }
    }
}

extension String {
    func trimmingLines() -> String {
        split(whereSeparator: { $0 == "\n" || $0 == "\r" }).joined(separator: " ")
    }
}
