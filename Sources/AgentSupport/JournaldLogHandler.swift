import SystemdProtocol
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The log level every handler of the process reads, so that a SIGHUP reload can change
/// it for loggers that already exist.
public enum LiveLogLevel {
    private static let level = Mutex(Logger.Level.info)
    public static var current: Logger.Level {
        get { level.withLock { $0 } }
        set { level.withLock { $0 = newValue } }
    }
}

/// A swift-log backend that writes to journald natively (the native journal protocol,
/// `ca_journal_sendv` in `Sources/SystemdProtocol`, one field per iovec, so multi-line messages and any bytes stay
/// intact). Each entry carries `PRIORITY`, `MESSAGE`, `SYSLOG_IDENTIFIER=compute-agent`,
/// `CODE_FILE`/`CODE_LINE`/`CODE_FUNC`, and the metadata as fields: `instance_uuid` →
/// `INSTANCE_UUID`, `request_id` → `REQUEST_ID`, `method` → `RPC_METHOD`, `plugin` →
/// `PLUGIN`, `host` → `HOST`, any other key upper-cased with `_` for anything outside
/// `[A-Z0-9_]`. So `journalctl -u compute-agent INSTANCE_UUID=…` tells one instance's story.
public struct JournaldLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level {
        get { LiveLogLevel.current }
        set { LiveLogLevel.current = newValue }
    }

    /// Adds metadata from the current task (the RPC request being handled) to each entry.
    public var metadataProvider: Logger.MetadataProvider?

    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil) {
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// True when the agent should log to journald by default: started by systemd with its
    /// standard error connected to the journal (`JOURNAL_STREAM` set).
    public static var journalIsStandardError: Bool { getenv("JOURNAL_STREAM") != nil }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty { all.merge(provided) { _, new in new } }
        if let explicit = event.metadata { all.merge(explicit) { _, new in new } }
        if let error = event.error { all["error"] = "\(error)" }
        var fields: [String] = [
            "PRIORITY=\(Self.priority(event.level))",
            "MESSAGE=\(event.message)",
            "SYSLOG_IDENTIFIER=compute-agent",
            "CODE_FILE=\(event.file)",
            "CODE_LINE=\(event.line)",
            "CODE_FUNC=\(event.function)",
        ]
        for (key, value) in all { fields.append("\(Self.fieldName(key))=\(value)") }
        Self.send(fields)
    }

    /// Sends one entry; each field is one iovec of `NAME=value`, all pointing into one
    /// buffer that stays pinned for the call.
    static func send(_ fields: [String]) {
        var bytes: [UInt8] = []
        var spans: [(start: Int, count: Int)] = []
        for f in fields {
            let start = bytes.count
            bytes.append(contentsOf: f.utf8)
            spans.append((start, bytes.count - start))
        }
        bytes.withUnsafeMutableBytes { raw in
            guard let base = raw.baseAddress else { return }
            var iovecs = spans.map { iovec(iov_base: base + $0.start, iov_len: $0.count) }
            _ = ca_journal_sendv(&iovecs, Int32(iovecs.count))
        }
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// A journal field name for a metadata key.
    public static func fieldName(_ key: String) -> String {
        switch key {
        case "method": return "RPC_METHOD"
        default:
            var name = String(key.uppercased().unicodeScalars.map { s -> Character in
                (s >= "A" && s <= "Z") || (s >= "0" && s <= "9") || s == "_" ? Character(s) : "_"
            })
            while name.hasPrefix("_") { name.removeFirst() }
            if name.isEmpty || name.first!.isNumber { name = "F" + name }
            // Names the journal reserves for itself or for the entry's own fields.
            if ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"].contains(name) {
                name = "META_" + name
            }
            return name
        }
    }
}
