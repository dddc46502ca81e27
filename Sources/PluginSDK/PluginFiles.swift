#if canImport(Glibc)
import Glibc
#endif

/// File operations plugins share (no Foundation in plugins: one Swift runtime shared with
/// the agent, nothing more).
public enum PluginFiles {
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// Creates `path` and its missing parents (mode 0755), as `mkdir -p`.
    public static func makeDirectories(_ path: String) throws(PluginFailure) {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw PluginFailure(CA_ERR_FAILED, "cannot create directory \(prefix): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Copies `from` to `to` through `<to>.part`, then fsyncs and renames it into place, so
    /// a failed copy never leaves a half-written `to`. `inspect` sees every chunk and
    /// `verify` runs before the rename; either may throw to abandon the copy. Returns the
    /// byte count.
    public static func atomicCopy(from: String, to: String,
                                  inspect: (UnsafeRawBufferPointer, Int) throws(PluginFailure) -> Void = { _, _ in },
                                  verify: () throws(PluginFailure) -> Void = {}) throws(PluginFailure) -> Int
    {
        let inFD = open(from, O_RDONLY | O_CLOEXEC)
        guard inFD >= 0 else {
            let code = errno
            throw PluginFailure(code == ENOENT ? CA_ERR_NOT_FOUND : CA_ERR_FAILED, "cannot open \(from): \(String(cString: strerror(code)))")
        }
        defer { close(inFD) }
        let part = to + ".part"
        let outFD = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard outFD >= 0 else { throw PluginFailure(CA_ERR_FAILED, "cannot create \(part): \(String(cString: strerror(errno)))") }
        var ok = false
        defer {
            close(outFD)
            if !ok { unlink(part) }
        }
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var total = 0
        while true {
            let n = buf.withUnsafeMutableBytes { read(inFD, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw PluginFailure(CA_ERR_FAILED, "reading \(from): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            total += n
            let rejected = buf.withUnsafeBytes { raw -> PluginFailure? in
                do throws(PluginFailure) { try inspect(UnsafeRawBufferPointer(rebasing: raw[0..<n]), total) } catch { return error }
                return nil
            }
            if let rejected { throw rejected }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { write(outFD, $0.baseAddress! + off, n - off) }
                if w < 0 { if errno == EINTR { continue }; throw PluginFailure(CA_ERR_FAILED, "writing \(part): \(String(cString: strerror(errno)))") }
                off += w
            }
        }
        try verify()
        guard fsync(outFD) == 0, rename(part, to) == 0 else {
            throw PluginFailure(CA_ERR_FAILED, "finishing \(to): \(String(cString: strerror(errno)))")
        }
        ok = true
        return total
    }

    /// The last `maxBytes` of a file as text; empty if it does not exist.
    public static func tail(_ path: String, maxBytes: Int) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        let start = max(0, Int(size) - maxBytes)
        lseek(fd, off_t(start), SEEK_SET)
        var buf = [UInt8](repeating: 0, count: Int(size) - start)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
    }
}
