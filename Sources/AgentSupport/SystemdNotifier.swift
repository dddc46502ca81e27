import SystemdProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The service manager's notification protocol (sd_notify(3), spoken by
/// `Sources/SystemdProtocol`), for `Type=notify` and
/// `Type=notify-reload` units and the watchdog. Without `NOTIFY_SOCKET` (not started by
/// systemd) every call is a no-op.
public enum SystemdNotifier {
    /// Sends one or more `KEY=value` lines.
    public static func notify(_ lines: String...) {
        _ = ca_sd_notify(lines.joined(separator: "\n"))
    }

    public static func ready(status: String? = nil) {
        if let status { notify("READY=1", "STATUS=\(status)") } else { notify("READY=1") }
    }

    public static func status(_ text: String) { notify("STATUS=\(text)") }

    public static func stopping() { notify("STOPPING=1", "STATUS=stopping") }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that systemd 253's `Type=notify-reload` expects.
    public static func reloading() {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let usec = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
        notify("RELOADING=1", "MONOTONIC_USEC=\(usec)", "STATUS=reloading the configuration")
    }

    public static func watchdog() { notify("WATCHDOG=1") }

    /// The watchdog period systemd asked for (`WatchdogSec=`), in seconds, or nil.
    public static var watchdogPeriod: Double? {
        var usec: UInt64 = 0
        guard ca_sd_watchdog_enabled(&usec) > 0, usec > 0 else { return nil }
        return Double(usec) / 1_000_000
    }
}
