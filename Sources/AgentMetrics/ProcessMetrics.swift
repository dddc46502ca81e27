import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The standard `process_` family (as Prometheus client libraries export it), read from
/// /proc/self at scrape time: resident and virtual memory, CPU seconds, open and maximum
/// file descriptors, threads and start time.
public enum ProcessMetrics {
    public struct Sample: Sendable, Equatable {
        public var residentBytes: Double = 0
        public var virtualBytes: Double = 0
        public var cpuSeconds: Double = 0
        public var openFDs: Double = 0
        public var maxFDs: Double = 0
        public var threads: Double = 0
        public var startTimeSeconds: Double = 0
    }

    /// Reads /proc/self; fields it cannot read stay 0.
    public static func sample() -> Sample {
        var s = Sample()
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let page = Double(sysconf(Int32(_SC_PAGESIZE)))
        if let stat = read("/proc/self/stat"), let close = stat.lastIndex(of: UInt8(ascii: ")")) {
            // Fields after the command name, numbered from 3 (state) as in proc(5).
            let fields = stat[(close + 2)...].split(separator: UInt8(ascii: " ")).map { Double(String(decoding: $0, as: UTF8.self)) ?? 0 }
            func field(_ n: Int) -> Double { n - 3 < fields.count ? fields[n - 3] : 0 }
            s.cpuSeconds = (field(14) + field(15)) / ticks
            s.threads = field(20)
            s.virtualBytes = field(23)
            s.residentBytes = field(24) * page
            s.startTimeSeconds = bootTime() + field(22) / ticks
        }
        if let dir = opendir("/proc/self/fd") {
            var n = 0.0
            while let e = readdir(dir) {
                if e.pointee.d_name.0 != UInt8(ascii: ".") { n += 1 }
            }
            closedir(dir)
            s.openFDs = max(0, n - 1)  // the directory's own descriptor
        }
        var lim = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &lim) == 0 { s.maxFDs = Double(lim.rlim_cur) }
        return s
    }

    /// Seconds since the epoch at boot (`btime` in /proc/stat).
    static func bootTime() -> Double {
        guard let text = read("/proc/stat") else { return 0 }
        for line in text.split(separator: UInt8(ascii: "\n")) where line.starts(with: Array("btime ".utf8)) {
            return Double(String(decoding: line.dropFirst(6), as: UTF8.self).trimmingSpaces) ?? 0
        }
        return 0
    }

    static func read(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return out
    }

    /// Registers the collector that refreshes the `process_` gauges before each scrape.
    public static func register(with metrics: AgentMetrics) {
        let resident = metrics.gauge("process_resident_memory_bytes", help: "Resident memory size in bytes")
        let virt = metrics.gauge("process_virtual_memory_bytes", help: "Virtual memory size in bytes")
        let cpu = metrics.counter("process_cpu_seconds_total", help: "Total user and system CPU time spent in seconds")
        let cpuSeen = Mutex(0.0)
        let fds = metrics.gauge("process_open_fds", help: "Number of open file descriptors")
        let maxFDs = metrics.gauge("process_max_fds", help: "Maximum number of open file descriptors")
        let threads = metrics.gauge("process_threads", help: "Number of OS threads in the process")
        let start = metrics.gauge("process_start_time_seconds", help: "Start time of the process since unix epoch in seconds")
        metrics.addCollector {
            let s = sample()
            resident.set(s.residentBytes)
            virt.set(s.virtualBytes)
            // A counter: add what was spent since the last scrape.
            let delta = cpuSeen.withLock { seen -> Double in
                defer { seen = max(seen, s.cpuSeconds) }
                return max(0, s.cpuSeconds - seen)
            }
            if delta > 0 { cpu.increment(by: delta) }
            fds.set(s.openFDs)
            maxFDs.set(s.maxFDs)
            threads.set(s.threads)
            start.set(s.startTimeSeconds)
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " || s.last == "\n" { s = s.dropLast() }
        return String(s)
    }
}
