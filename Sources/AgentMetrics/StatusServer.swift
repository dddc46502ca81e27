import AgentSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 responder for `/metrics` and `/healthz` on its own thread.
///
/// It listens on a TCP address (`[metrics] listen`, optional) and on a Unix socket in the
/// state path (always: `computectl health` asks it). One request per connection
/// (`Connection: close`), read with a 2 s timeout and at most 8 KiB, answered and closed;
/// connections are served one at a time, which is what a scraper and a health probe need,
/// and a client that stalls costs at most the timeout. Nothing here touches Swift's
/// cooperative pool: the thread blocks in `poll`/`accept`/`read`.
public final class StatusServer: Sendable {
    /// The health answer: `healthy`, and one line that says why (or why not).
    public typealias HealthCheck = @Sendable () -> (healthy: Bool, reason: String)

    public struct ListenError: Error, CustomStringConvertible {
        public let description: String
    }

    private let fds: [Int32]
    private let health: HealthCheck
    private let metrics: AgentMetrics
    private let metricsEnabled: Bool
    private let stopped = Atomic<Bool>(false)

    /// Binds the listeners and starts the thread. `tcp` is `host:port` (`[::1]:9178` for
    /// IPv6); nil serves only the Unix socket.
    public init(tcp: String?, unixPath: String, metrics: AgentMetrics, health: @escaping HealthCheck) throws(ListenError) {
        var fds: [Int32] = []
        if let tcp {
            fds.append(try Self.listenTCP(tcp))
        }
        do {
            fds.append(try Self.listenUnix(unixPath))
        } catch {
            for fd in fds { close(fd) }
            throw error
        }
        self.fds = fds
        self.health = health
        self.metrics = metrics
        self.metricsEnabled = tcp != nil
        startDedicatedThread(name: "status-http") { [self] in serve() }
    }

    static func listenTCP(_ address: String) throws(ListenError) -> Int32 {
        guard let a = ListenAddress(address) else {
            throw ListenError(description: "'\(address)' is not host:port, [ipv6]:port or :port")
        }
        let (host, port, v6) = (a.host, a.port, a.isIPv6)
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ListenError(description: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var rc: Int32
        if v6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = port.bigEndian
            guard inet_pton(AF_INET6, host, &a.sin6_addr) == 1 else {
                close(fd)
                throw ListenError(description: "'\(host)' is not an IPv6 address")
            }
            rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        } else {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host, &a.sin_addr) == 1 else {
                close(fd)
                throw ListenError(description: "'\(host)' is not an IPv4 address (write IPv6 as [addr]:port)")
            }
            rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        if rc != 0 || listen(fd, 16) != 0 {
            let why = String(cString: strerror(errno))
            close(fd)
            throw ListenError(description: "cannot listen on \(address): \(why)")
        }
        return fd
    }

    static func listenUnix(_ path: String) throws(ListenError) -> Int32 {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: a.sun_path) else {
            throw ListenError(description: "the socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ListenError(description: "socket: \(String(cString: strerror(errno)))") }
        // A socket left by an agent that died is replaced (the state lock says none runs).
        unlink(path)
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 || chmod(path, 0o660) != 0 || listen(fd, 16) != 0 {
            let why = String(cString: strerror(errno))
            close(fd)
            throw ListenError(description: "cannot listen on \(path): \(why)")
        }
        return fd
    }

    /// Stops serving (the thread ends at its next wake-up; the listeners close).
    public func stop() {
        stopped.store(true, ordering: .relaxed)
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    private func serve() {
        var polls = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while !stopped.load(ordering: .relaxed) {
            let n = poll(&polls, nfds_t(polls.count), 1000)
            if n <= 0 { continue }
            for i in polls.indices where polls[i].revents != 0 {
                polls[i].revents = 0
                let c = accept(polls[i].fd, nil, nil)
                if c < 0 { continue }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                answer(c)
                close(c)
            }
        }
        for fd in fds { close(fd) }
    }

    private func answer(_ fd: Int32) {
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 2048)
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        while request.count < 8192 {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return }
            request.append(contentsOf: buf[0..<n])
            if request.count >= 4, Self.contains(request, end) { break }
        }
        let (status, type, body, head) = route(request)
        var out = Array("HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8)
        if !head { out.append(contentsOf: body) }
        var sent = 0
        while sent < out.count {
            let n = out.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }

    static func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
        guard hay.count >= needle.count else { return false }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle {
            return true
        }
        return false
    }

    /// The answer to one request: status line, content type, body, and whether it is HEAD.
    func route(_ request: [UInt8]) -> (String, String, [UInt8], Bool) {
        let line = request.split(separator: UInt8(ascii: "\n"), maxSplits: 1).first.map { String(decoding: $0, as: UTF8.self) } ?? ""
        let parts = line.split(separator: " ")
        let text = "text/plain; charset=utf-8"
        guard parts.count >= 3, parts[2].hasPrefix("HTTP/1.") else {
            return ("400 Bad Request", text, Array("bad request\n".utf8), false)
        }
        let method = parts[0], path = parts[1].split(separator: "?", maxSplits: 1).first ?? ""
        guard method == "GET" || method == "HEAD" else {
            return ("405 Method Not Allowed", text, Array("only GET and HEAD\n".utf8), false)
        }
        let head = method == "HEAD"
        switch path {
        case "/healthz":
            let h = health()
            return (h.healthy ? "200 OK" : "503 Service Unavailable", text, Array("\(h.reason)\n".utf8), head)
        case "/metrics" where metricsEnabled:
            return ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.exposition(), head)
        default:
            return ("404 Not Found", text, Array("not found: /metrics, /healthz\n".utf8), head)
        }
    }
}
