import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A swift-log backend that writes one readable line per entry to standard error:
///
///     2026-11-23T10:15:02.123Z INFO  [compute-agent] rpc handled method=ping duration_ms=0.4 request_id=req-…
///
/// Metadata is printed as `key=value` pairs sorted by key, so lines grep well. Writes are
/// a single `write(2)` per line, so lines from different threads never interleave.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    /// Shared by every handler (`LiveLogLevel`), so a reload changes it everywhere.
    public var logLevel: Logger.Level {
        get { LiveLogLevel.current }
        set { LiveLogLevel.current = newValue }
    }
    private let label: String

    /// Adds metadata from the current task (the RPC request being handled) to each entry.
    public var metadataProvider: Logger.MetadataProvider?

    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let level = event.level, message = event.message
        var all = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty { all.merge(provided) { _, new in new } }
        if let explicit = event.metadata { all.merge(explicit) { _, new in new } }
        if let error = event.error { all["error"] = "\(error)" }
        var out = StderrLogHandler.timestamp()
        out += " "
        out += StderrLogHandler.levelName(level)
        out += " ["
        out += label
        out += "] "
        // One entry is one line: a value that carries a newline and a fake timestamp (an
        // instance name from a caller, a plugin's error text) must not forge a second entry.
        out += LogEscaping.escaped(message.description)
        for key in all.keys.sorted() {
            out += " \(LogEscaping.escaped(key))=\(LogEscaping.escaped("\(all[key]!)"))"
        }
        out += "\n"
        var bytes = Array(out.utf8)
        bytes.withUnsafeMutableBytes { buf in
            var off = 0
            while off < buf.count {
                let n = write(2, buf.baseAddress! + off, buf.count - off)
                if n <= 0 { break }
                off += n
            }
        }
    }

    static func levelName(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "TRACE"
        case .debug: return "DEBUG"
        case .info: return "INFO "
        case .notice: return "NOTE "
        case .warning: return "WARN "
        case .error: return "ERROR"
        case .critical: return "CRIT "
        }
    }

    /// ISO 8601 UTC with milliseconds: "2026-11-23T09:15:02.123Z".
    static func timestamp() -> String {
        let t = Array(utcTimestamp())  // "2026-11-23 09:15:02.123456"
        return String(t[0..<10]) + "T" + String(t[11..<23]) + "Z"
    }
}

/// Escapes what would let logged text break out of its line or fake terminal output.
public enum LogEscaping {
    /// `text` with control characters (C0, DEL, C1) and the Unicode line and paragraph
    /// separators written as `\n`, `\r`, `\t` or `\u{XX}`. Text without any comes
    /// back unchanged (no copy on the common path).
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var out = String.UnicodeScalarView()
        for u in text.unicodeScalars {
            guard needsEscape(u) else { out.append(u); continue }
            let rep: String
            switch u {
            case "\n": rep = "\\n"
            case "\r": rep = "\\r"
            case "\t": rep = "\\t"
            default: rep = "\\u{\(String(u.value, radix: 16, uppercase: true))}"
            }
            out.append(contentsOf: rep.unicodeScalars)
        }
        return String(out)
    }

    private static func needsEscape(_ u: Unicode.Scalar) -> Bool {
        u.value < 0x20 || u.value == 0x7F || (0x80...0x9F).contains(u.value) || u.value == 0x2028 || u.value == 0x2029
    }
}
