import AgentSupport
import Compute
import Dispatch
import Logging
import Messaging
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The agent's side of systemd's notify protocol, as a service: `STATUS=` every few
/// seconds once ready, `WATCHDOG=1` at half of `WATCHDOG_USEC` — sent only while the
/// heartbeat task and the message loop are alive — and `STOPPING=1` when shutdown begins.
/// (`READY=1` is sent by the RPC service once it consumes.)
struct SystemdService: Service {
    /// How many times in a row the RPC connection has failed to (re)connect; 0 once connected.
    final class BrokerAttempts: Sendable {
        let failed = Atomic<Int>(0)
    }

    let server: RPCServer
    let attempts: BrokerAttempts
    let periodic: PeriodicTasks
    let manager: ComputeManager
    let url: TransportURL
    let logger: Logger

    func run() async throws {
        await withGracefulShutdownHandler {
            await cancelWhenGracefulShutdown { await loop() }
        } onGracefulShutdown: {
            SystemdNotifier.stopping()
        }
    }

    private func loop() async {
        let watchdog = SystemdNotifier.watchdogPeriod
        let tick = min(5.0, (watchdog ?? 10) / 2)
        var lastStatus = ""
        var withheld = false
        var statusDue = 0.0
        while !Task.isCancelled {
            let now = monotonicSeconds()
            if now >= statusDue {
                let status = await statusLine()
                if status != lastStatus { SystemdNotifier.status(status); lastStatus = status }
                statusDue = now + 5
            }
            if let watchdog {
                if let reason = wedged(limit: watchdog) {
                    if !withheld { logger.error("withholding WATCHDOG=1: \(reason)") }
                    withheld = true
                } else {
                    if withheld { logger.notice("alive again: sending WATCHDOG=1 again") }
                    withheld = false
                    SystemdNotifier.watchdog()
                }
            }
            do { try await Task.sleep(for: .milliseconds(Int(tick * 1000))) } catch { return }
        }
    }

    /// Why the agent should not tell systemd it is alive, or nil when it is.
    private func wedged(limit: Double) -> String? {
        let stuck = server.wedgedSeconds
        if stuck > limit {
            let load = server.load
            return "the message loop is wedged: \(load.waiting) message(s) waited \(Int(stuck)) s with \(load.running) handler(s) never finishing"
        }
        let report = periodic.currentIntervals.report
        let beat = periodic.secondsSinceHeartbeat
        if beat > max(2 * report + 1, limit) {
            return "the heartbeat task has not run for \(Int(beat)) s (report_interval \(report) s)"
        }
        return nil
    }

    private func statusLine() async -> String {
        let n = await manager.instanceCount
        var line: String
        if server.isConnected {
            let beat = periodic.secondsSinceConfirmedHeartbeat.map { "last heartbeat confirmed \(Int($0)) s ago" }
                ?? "no heartbeat confirmed yet"
            line = "connected to \(url), \(n) instances, \(beat)"
        } else {
            let failed = attempts.failed.load(ordering: .relaxed)
            line = failed > 0 ? "reconnecting to broker \(url) (attempt \(failed + 1)); \(n) instances"
                : "connecting to the broker at \(url); \(n) instances"
        }
        if let problem = await manager.journalProblem {
            line = "JOURNAL NOT WRITABLE (casts stay with the broker): \(LogEscaping.escaped(problem)); " + line
        }
        return line
    }
}

// Keeps the signal sources alive for the life of the process. Safe: appended only by
// `SignalHandling.install()`, called once from the main code before any task runs, and
// never read.
nonisolated(unsafe) private var installedSignalSources: [DispatchSourceSignal] = []

/// SIGHUP reloads the configuration; a second SIGTERM/SIGINT exits at once; a graceful
/// shutdown that outlasts `graceful_shutdown_timeout` ends the process.
final class SignalHandling: Sendable {
    private let terminations = Mutex(0)
    private let configPaths: [String]
    private let current: Mutex<AgentConfiguration>
    private let forceDebug: Bool
    private let periodic: PeriodicTasks
    private let logger: Logger

    init(configPaths: [String], config: AgentConfiguration, forceDebug: Bool, periodic: PeriodicTasks, logger: Logger) {
        self.configPaths = configPaths
        self.current = Mutex(config)
        self.forceDebug = forceDebug
        self.periodic = periodic
        self.logger = logger
    }

    func install() {
        // swift-service-lifecycle also watches SIGTERM/SIGINT (for the graceful shutdown);
        // these sources only count them.
        for sig in [SIGHUP, SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                if sig == SIGHUP { reload() } else { terminationRequested(sig) }
            }
            source.resume()
            installedSignalSources.append(source)
        }
    }

    private func terminationRequested(_ sig: Int32) {
        let n = terminations.withLock { t -> Int in
            t += 1
            return t
        }
        let name = sig == SIGTERM ? "SIGTERM" : "SIGINT"
        if n == 1 {
            let timeout = current.withLock { $0.gracefulShutdownTimeout }
            logger.notice("\(name): stopping; running actions may take up to \(Int(timeout)) s (graceful_shutdown_timeout), a second \(name) stops at once")
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { [logger] in
                logger.error("graceful shutdown did not finish within \(Int(timeout)) s; exiting (interrupted actions resume at the next start)")
                exit(0)
            }
        } else {
            logger.warning("second \(name): exiting at once (interrupted actions resume at the next start)")
            SystemdNotifier.stopping()
            exit(0)
        }
    }

    /// Re-reads the configuration file and applies what can change live: the log level
    /// (`debug`) and the periodic intervals. Other changes are named in the log as needing
    /// a restart. A file that does not parse changes nothing.
    private func reload() {
        SystemdNotifier.reloading()
        logger.notice("SIGHUP: reloading \(configPaths.joined(separator: ", "))")
        let new: AgentConfiguration
        do { new = try AgentConfiguration.load(paths: configPaths) } catch {
            logger.error("reload refused, the running configuration stays: \(error)")
            SystemdNotifier.ready(status: "reload refused: \(error)")
            return
        }
        let old = current.withLock { $0 }
        let changed = new.changedOptions(comparedTo: old)
        let live = changed.filter { AgentConfiguration.liveOptions.contains($0) }
        let restart = changed.filter { !AgentConfiguration.liveOptions.contains($0) }
        LiveLogLevel.current = (new.debug || forceDebug) ? .debug : .info
        periodic.setIntervals(.init(report: new.reportInterval, capabilities: new.periodicInterval,
                                    resources: new.updateResourcesInterval, powerSync: new.syncPowerStateInterval,
                                    reclaim: new.reclaimInstanceInterval, imageCache: imageCacheInterval(new)))
        var kept = new
        // What needs a restart keeps its running value until then (a later reload compares
        // against what runs).
        if !restart.isEmpty { kept = old.applyingLiveOptions(from: new) }
        current.withLock { $0 = kept }
        logger.notice("configuration reloaded", metadata: [
            "applied": "\(live.isEmpty ? "-" : live.joined(separator: ","))",
            "needs_restart": "\(restart.isEmpty ? "-" : restart.joined(separator: ","))",
        ])
        if !restart.isEmpty {
            logger.warning("changed options that need a restart to take effect: \(restart.joined(separator: ", "))")
        }
        SystemdNotifier.ready(status: "configuration reloaded")
    }
}
