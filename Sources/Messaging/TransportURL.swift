import AgentSupport

/// A parsed oslo.messaging `transport_url`:
/// `rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost`.
///
/// Several hosts name the members of one RabbitMQ cluster; the connection tries them in
/// order. `description` never shows a password.
public struct TransportURL: Sendable, CustomStringConvertible, Equatable {
    public struct Broker: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var user: String
        public var password: String
    }

    public var brokers: [Broker]
    public var virtualHost: String

    public init(brokers: [Broker], virtualHost: String) {
        self.brokers = brokers
        self.virtualHost = virtualHost
    }

    /// Why a transport URL was refused. The message never contains the password.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let message: String
        public var description: String { message }
    }

    public init(parsing text: String) throws(ParseError) {
        guard let colon = text.firstIndex(of: ":"), text[colon...].hasPrefix("://") else {
            throw ParseError(message: "expected rabbit://user:password@host:port/vhost")
        }
        let scheme = text[..<colon]
        guard scheme == "rabbit" || scheme == "amqp" else {
            throw ParseError(message: "unsupported transport '\(scheme)' (only rabbit:// is supported)")
        }
        var rest = text[text.index(colon, offsetBy: 3)...]
        var vhost = "/"
        if let slash = rest.firstIndex(of: "/") {
            let v = String(rest[rest.index(after: slash)...])
            if v.contains("@") || (v.contains("/") && v != "/") {
                throw ParseError(message: "the virtual host part contains '@' or '/': a user or password containing '/' must be percent-encoded (%2F)")
            }
            if v.contains("?") {
                throw ParseError(message: "query options in transport_url are not supported")
            }
            vhost = v.isEmpty ? "/" : TransportURL.percentDecode(v)
            rest = rest[..<slash]
        }
        var brokers: [Broker] = []
        // Error texts name a broker by its position, never by its text: a password with an
        // unencoded '/', ',' or '@' would otherwise end up quoted in the error.
        let encodingHint = "(a user or password containing '/', ',', '@', ':' or '%' must be percent-encoded, e.g. %2F for '/')"
        let parts = rest.split(separator: ",", omittingEmptySubsequences: false)
        for (n, part) in parts.enumerated() {
            let which = parts.count > 1 ? "broker \(n + 1) of \(parts.count)" : "the broker address"
            if part.isEmpty {
                throw ParseError(message: "\(which) is empty (a stray ',' in transport_url?)")
            }
            var user = "guest", password = "guest"
            var hostPort = Substring(part)
            if let at = part.lastIndex(of: "@") {
                let cred = part[..<at]
                hostPort = part[part.index(after: at)...]
                if let colon = cred.firstIndex(of: ":") {
                    user = TransportURL.percentDecode(String(cred[..<colon]))
                    password = TransportURL.percentDecode(String(cred[cred.index(after: colon)...]))
                } else {
                    user = TransportURL.percentDecode(String(cred))
                    password = ""
                }
            }
            var host = String(hostPort)
            var port = 5672
            if hostPort.hasPrefix("[") {  // [v6]:port
                guard let close = hostPort.firstIndex(of: "]") else { throw ParseError(message: "unterminated IPv6 address in \(which)") }
                host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
                let after = hostPort[hostPort.index(after: close)...]
                if after.hasPrefix(":") {
                    guard let p = Int(after.dropFirst()), (1...65535).contains(p) else {
                        throw ParseError(message: "invalid port in \(which) \(encodingHint)")
                    }
                    port = p
                }
            } else if let colon = hostPort.lastIndex(of: ":") {
                host = String(hostPort[..<colon])
                guard let p = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(p) else {
                    throw ParseError(message: "invalid port in \(which) \(encodingHint)")
                }
                port = p
            }
            if host.isEmpty { host = "localhost" }
            brokers.append(Broker(host: host, port: port, user: user, password: password))
        }
        guard !brokers.isEmpty else { throw ParseError(message: "no broker host in transport_url") }
        self.brokers = brokers
        self.virtualHost = vhost
    }

    /// `rabbit://user:***@host:port,…/vhost` — safe to log.
    public var description: String {
        let hosts = brokers.map { "\($0.user):***@\($0.host.contains(":") ? "[\($0.host)]" : $0.host):\($0.port)" }
        return "rabbit://" + hosts.joined(separator: ",") + "/" + (virtualHost == "/" ? "" : virtualHost)
    }

    static func percentDecode(_ s: String) -> String {
        guard s.contains("%") else { return s }
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%"), bytes.count >= 2,
               let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
            {
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
