import PluginSDK

#if canImport(Glibc)
import Glibc
#endif

/// The few file operations the libvirt plugin needs (no Foundation in plugins: one Swift
/// runtime shared with the agent, nothing more).
enum FileManagerLite {
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// Copies `from` to `to` through `<to>.part`, fsynced and renamed into place; returns
    /// the byte count.
    static func copy(from: String, to: String) throws(PluginFailure) -> Int {
        let inFD = open(from, O_RDONLY | O_CLOEXEC)
        guard inFD >= 0 else { throw PluginFailure(CA_ERR_FAILED, "cannot open \(from): \(String(cString: strerror(errno)))") }
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
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { write(outFD, $0.baseAddress! + off, n - off) }
                if w < 0 { if errno == EINTR { continue }; throw PluginFailure(CA_ERR_FAILED, "writing \(part): \(String(cString: strerror(errno)))") }
                off += w
            }
            total += n
        }
        guard fsync(outFD) == 0, rename(part, to) == 0 else {
            throw PluginFailure(CA_ERR_FAILED, "finishing \(to): \(String(cString: strerror(errno)))")
        }
        ok = true
        return total
    }

    /// The last `maxBytes` of a file as text; empty if it does not exist.
    static func tail(_ path: String, maxBytes: Int) -> String {
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
