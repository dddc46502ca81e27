#if canImport(Glibc)
import Glibc
#endif

/// Named points where the crash tests kill the agent (SIGKILL, no clean-up), to prove
/// that what was recorded before each point survives. Enabled only through the
/// environment variable `COMPUTE_AGENT_FAILPOINTS` (a comma-separated list of names);
/// with it unset every check is one load of a constant empty set.
///
/// Points: `rpc.before_record`, `rpc.after_record` (before the ack), `build.after_fetch`,
/// `build.after_plug`, `build.after_spawn`, `terminate.after_destroy`, `action.after_plugin`.
public enum Failpoints {
    static let enabled: Set<String> = {
        guard let raw = getenv("COMPUTE_AGENT_FAILPOINTS") else { return [] }
        return Set(String(cString: raw).split(separator: ",").map { $0.trimmingCharacters() })
    }()

    /// Kills the process with SIGKILL if `name` is enabled.
    public static func hit(_ name: String) {
        guard !enabled.isEmpty, enabled.contains(name) else { return }
        let line = "compute-agent: failpoint \(name) reached: killing the process (SIGKILL)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        raise(SIGKILL)
    }
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
