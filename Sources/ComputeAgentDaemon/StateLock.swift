import AgentSupport
import Messaging

#if canImport(Glibc)
import Glibc
#endif

/// The lock that makes one agent the only user of its `state_path`: an exclusive `flock`
/// on `<state_path>/compute-agent.lock`, held (the descriptor never closed) until the
/// process ends, however it ends. The file holds the holder's PID for the message a
/// second agent prints.
enum StateLock {
    struct Held: Error, CustomStringConvertible {
        let description: String
    }

    static func acquire(statePath: String) throws(Held) {
        let path = statePath + "/compute-agent.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw Held(description: "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let why = errno
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, buf.count, 0)
            close(fd)
            let pid = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: " \n") : ""
            if why == EWOULDBLOCK {
                let holder = pid.isEmpty ? "another process" : "another compute-agent (PID \(pid))"
                throw Held(description: "state_path \(statePath) is in use by \(holder): one agent per state_path (lock \(path))")
            }
            throw Held(description: "cannot lock \(path): \(String(cString: strerror(why)))")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, text, text.count, 0)
        // `fd` stays open on purpose: the lock lives as long as the process.
    }
}

private extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}

/// A configuration file that holds a broker password and that other users can read.
enum ConfigFilePermissions {
    /// `passwordFrom`: the file that set `transport_url` (several files may be read; only
    /// that one holds the password).
    static func warning(path: String, transportURL: TransportURL, passwordFrom: String? = nil) -> String? {
        guard transportURL.brokers.contains(where: { !$0.password.isEmpty }) else { return nil }
        if let passwordFrom, passwordFrom != path { return nil }
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        guard st.st_mode & 0o004 != 0 else { return nil }
        let mode = String(st.st_mode & 0o777, radix: 8)
        return "\(path) holds the broker password and is readable by every user (mode \(mode)): chmod 640 it (root:compute-agent)"
    }
}
