import AgentSupport

/// An RPC request as oslo.messaging's rabbit driver sends it, after unpacking the
/// `{"oslo.version": "2.0", "oslo.message": "…"}` envelope.
public struct RPCRequest: Sendable {
    public var method: String
    public var args: [String: JSONValue]
    public var namespace: String?
    /// The requested API version; nil means "1.0", as on an oslo.messaging server.
    public var version: String?
    /// `_msg_id` and `_reply_q`: set on calls, absent on casts.
    public var messageID: String?
    public var replyQueue: String?
    /// `_timeout`: the caller's call-monitor timeout; the server then sends a heartbeat
    /// reply (`ending: false`) every half of it while the method runs.
    public var callMonitorTimeout: Double?
    public var uniqueID: String?
    /// The `_context_*` keys, with the prefix removed.
    public var context: [String: JSONValue]

    public init(method: String, args: [String: JSONValue] = [:], namespace: String? = nil, version: String? = nil,
                messageID: String? = nil, replyQueue: String? = nil, callMonitorTimeout: Double? = nil,
                uniqueID: String? = nil, context: [String: JSONValue] = [:])
    {
        self.method = method
        self.args = args
        self.namespace = namespace
        self.version = version
        self.messageID = messageID
        self.replyQueue = replyQueue
        self.callMonitorTimeout = callMonitorTimeout
        self.uniqueID = uniqueID
        self.context = context
    }

    public var isCall: Bool { messageID != nil && replyQueue != nil }
    public var requestID: String? { context["request_id"]?.stringValue }
    public var isAdmin: Bool { context["is_admin"]?.boolValue ?? false }
}

/// Why a message body could not be understood as an oslo.messaging RPC message.
public struct MalformedMessage: Error, CustomStringConvertible, Sendable {
    public let reason: String
    /// Refused for its size before it was parsed.
    public let tooLarge: Bool
    public init(_ reason: String, tooLarge: Bool = false) {
        self.reason = reason
        self.tooLarge = tooLarge
    }
    public var description: String { reason }
}

/// The oslo.messaging rabbit driver's message format (envelope 2.0).
public enum OsloMessage {
    public static let envelopeVersion = "2.0"

    /// Unwraps a message body into the inner message object, as
    /// `oslo_messaging._drivers.common.deserialize_msg` does: a 2.x envelope is unpacked,
    /// an object without both envelope keys is taken as it is (the 1.0 format).
    public static func unwrap(body: [UInt8]) throws(MalformedMessage) -> [String: JSONValue] {
        let outer: JSONValue
        do {
            outer = try body.withUnsafeBufferPointer { b throws(JSONParseError) in try JSONValue.parse(bytes: b) }
        } catch {
            throw MalformedMessage("body is not JSON (\(error), \(body.count) bytes)")
        }
        guard case .object(let o) = outer else { throw MalformedMessage("body is a JSON \(outer.typeName), not an object") }
        guard let version = o["oslo.version"], let inner = o["oslo.message"] else { return o }
        guard let v = version.stringValue, isCompatible(requested: v, served: envelopeVersion) else {
            throw MalformedMessage("unsupported envelope version \(version.serialized()) (this agent reads \(envelopeVersion))")
        }
        guard let text = inner.stringValue else { throw MalformedMessage("'oslo.message' is a \(inner.typeName), not a string") }
        let parsed: JSONValue
        do { parsed = try JSONValue.parse(text) } catch { throw MalformedMessage("'oslo.message' is not JSON (\(error))") }
        guard case .object(let message) = parsed else { throw MalformedMessage("'oslo.message' is a JSON \(parsed.typeName), not an object") }
        return message
    }

    /// Reads an RPC request out of an inner message (`amqp.unpack_context` + dispatcher).
    public static func request(from m: [String: JSONValue]) throws(MalformedMessage) -> RPCRequest {
        guard let methodValue = m["method"] else { throw MalformedMessage("message has no 'method'") }
        guard let method = methodValue.stringValue, !method.isEmpty else {
            throw MalformedMessage("'method' is a \(methodValue.typeName), not a method name")
        }
        var r = RPCRequest(method: method)
        switch m["args"] {
        case nil, .null?: break
        case .object(let a)?: r.args = a
        case let other?: throw MalformedMessage("'args' is a \(other.typeName), not an object")
        }
        r.namespace = m["namespace"]?.stringValue
        if let v = m["version"], !v.isNull {
            guard let s = v.stringValue else { throw MalformedMessage("'version' is a \(v.typeName), not \"X.Y\"") }
            r.version = s
        }
        r.messageID = m["_msg_id"]?.stringValue
        r.replyQueue = m["_reply_q"]?.stringValue
        r.callMonitorTimeout = m["_timeout"]?.doubleValue
        r.uniqueID = m["_unique_id"]?.stringValue
        for (k, v) in m where k.hasPrefix("_context_") {
            r.context[String(k.dropFirst(9))] = v
        }
        return r
    }

    /// Wraps an inner message JSON text into the 2.0 envelope.
    public static func envelope(inner: String) -> [UInt8] {
        var out = "{\"oslo.version\": \"2.0\", \"oslo.message\": "
        JSONValue.writeString(inner, to: &out)
        out += "}"
        return Array(out.utf8)
    }

    /// The body of a request (cast or call), keys in oslo.messaging's order.
    public static func requestBody(_ r: RPCRequest) -> [UInt8] {
        var pairs: [(String, JSONValue)] = [("method", .string(r.method)), ("args", .object(r.args))]
        if let ns = r.namespace { pairs.append(("namespace", .string(ns))) }
        if let v = r.version { pairs.append(("version", .string(v))) }
        if let id = r.messageID, let q = r.replyQueue {
            pairs.append(("_msg_id", .string(id)))
            pairs.append(("_reply_q", .string(q)))
            pairs.append(("_timeout", r.callMonitorTimeout.map { .int(Int64($0)) } ?? .null))
        }
        pairs.append(("_unique_id", .string(r.uniqueID ?? randomHex())))
        for k in r.context.keys.sorted() { pairs.append(("_context_" + k, r.context[k]!)) }
        return envelope(inner: JSONValue.orderedObject(pairs))
    }

    /// The body of a reply: `result`, `failure`, `ending`, `_msg_id`, `_unique_id`.
    public static func replyBody(result: JSONValue, failure: RemoteFailure?, ending: Bool, messageID: String) -> [UInt8] {
        let inner = JSONValue.orderedObject([
            ("result", failure == nil ? result : .null),
            ("failure", failure.map { .string($0.serialized()) } ?? .null),
            ("ending", .bool(ending)),
            ("_msg_id", .string(messageID)),
            ("_unique_id", .string(randomHex())),
        ])
        return envelope(inner: inner)
    }

    /// oslo.messaging's `version_is_compatible`: same major, requested minor (and
    /// revision) not above the served one.
    /// Where to answer a call that is too large to parse: `_msg_id` and `_reply_q` found by
    /// a byte scan (in the envelope they sit inside the escaped inner JSON string, as
    /// `\"_reply_q\": \"reply_…\"`). Nil unless both are found and fit a routing key.
    public static func callAddress(scanning body: [UInt8]) -> (messageID: String, replyQueue: String)? {
        func value(after key: String) -> String? {
            let k = Array(key.utf8)
            guard k.count < body.count else { return nil }
            var i = 0
            search: while i + k.count <= body.count {
                for j in 0..<k.count where body[i + j] != k[j] { i += 1; continue search }
                var v = i + k.count
                // Skip the key's closing quote (escaped or not), blanks and the colon.
                while v < body.count, [UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: " "), UInt8(ascii: ":")].contains(body[v]) { v += 1 }
                var end = v
                while end < body.count, body[end] != UInt8(ascii: "\""), body[end] != UInt8(ascii: "\\"), end - v <= 255 { end += 1 }
                guard end > v, end - v <= 255 else { return nil }
                return String(decoding: body[v..<end], as: UTF8.self)
            }
            return nil
        }
        guard let id = value(after: "_msg_id"), let q = value(after: "_reply_q") else { return nil }
        return (id, q)
    }

    public static func isCompatible(requested: String, served: String) -> Bool {
        func parts(_ v: String) -> [Int]? {
            let p = v.split(separator: ".", omittingEmptySubsequences: false).map { Int($0) }
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0 != nil }) else { return nil }
            return p.map { $0! } + Array(repeating: 0, count: 3 - p.count)
        }
        guard let r = parts(requested), let s = parts(served) else { return false }
        if r[0] != s[0] { return false }
        if r[1] != s[1] { return r[1] < s[1] }
        return r[2] <= s[2]
    }
}

/// An exception in oslo.messaging's serialized form (`serialize_remote_exception`), so a
/// Python caller re-raises it: `class` and `module` pick the exception type, `message` is
/// its text, `kwargs` the keyword arguments nova exceptions carry.
public struct RemoteFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var className: String
    public var module: String
    public var message: String
    public var traceback: [String]
    public var args: [JSONValue]
    public var kwargs: [String: JSONValue]

    public init(className: String, module: String, message: String, kwargs: [String: JSONValue] = [:],
                traceback: [String]? = nil)
    {
        self.className = className
        self.module = module
        self.message = message
        self.args = [.string(message)]
        self.kwargs = kwargs
        self.traceback = traceback ?? ["\(module).\(className): \(message)\n"]
    }

    public var description: String { "\(className): \(message)" }

    /// The JSON text that goes into a reply's `failure` field.
    public func serialized() -> String {
        JSONValue.orderedObject([
            ("class", .string(className)), ("module", .string(module)), ("message", .string(message)),
            ("tb", .array(traceback.map { .string($0) })), ("args", .array(args)), ("kwargs", .object(kwargs)),
        ])
    }

    /// Reads a `failure` field. Unknown shapes still give a usable failure.
    public init(serialized text: String) {
        guard let v = try? JSONValue.parse(text), case .object(let o) = v else {
            self.init(className: "RemoteError", module: "oslo_messaging.rpc.client", message: text)
            return
        }
        self.init(className: o["class"]?.stringValue ?? "RemoteError",
                  module: o["module"]?.stringValue ?? "",
                  message: o["message"]?.stringValue ?? "",
                  kwargs: o["kwargs"]?.objectValue ?? [:],
                  traceback: o["tb"]?.arrayValue?.compactMap(\.stringValue))
        if let a = o["args"]?.arrayValue { args = a }
    }

    /// oslo.messaging's dispatcher errors, with its exact class, module and message.
    public static func noSuchMethod(_ method: String) -> RemoteFailure {
        RemoteFailure(className: "NoSuchMethod", module: "oslo_messaging.rpc.dispatcher",
                      message: "Endpoint does not support RPC method \(method)")
    }

    public static func unsupportedVersion(_ version: String, method: String) -> RemoteFailure {
        RemoteFailure(className: "UnsupportedVersion", module: "oslo_messaging.rpc.dispatcher",
                      message: "Endpoint does not support RPC version \(version). Attempted method: \(method)")
    }
}

/// An error that knows how to present itself to an RPC caller.
public protocol RemoteFailureConvertible: Error {
    var remoteFailure: RemoteFailure { get }
    /// Non-nil when the request could not even be recorded (the agent's journal cannot be
    /// written): a cast is then not acknowledged but handed back to the broker after this
    /// many seconds, to run once the condition clears. Calls get the failure.
    var requeueAfter: Double? { get }
}

extension RemoteFailureConvertible {
    public var requeueAfter: Double? { nil }
}

extension RemoteFailure: RemoteFailureConvertible {
    public var remoteFailure: RemoteFailure { self }
}
