import AgentMetrics
import AgentSupport
import Logging
import Synchronization

/// The agent's periodic tasks:
///
/// - `report_state` every `report_interval`: a heartbeat through the control plane
///   (native: a `report_state` cast to `conductor`; nova: `Service.save`);
/// - `update_capabilities` right after start-up and every `periodic_interval`: the host's
///   capabilities through the control plane (native: the scheduler fanout).
///
/// - `update_available_resource` every `update_resources_interval`: the resource audit;
/// - `sync_power_states` every `sync_power_state_interval`: one hypervisor list call and
///   nova's power-state rules;
/// - `reclaim_queued_deletes` every `periodic_interval` when `reclaim_instance_interval`
///   is set: terminates instances soft-deleted longer ago than that.
///
/// They publish through the control plane's own AMQP connection, so they never queue
/// behind RPC traffic, and each runs on its own deadline schedule.
public final class PeriodicTasks: Sendable {
    public struct Intervals: Sendable {
        public var report: Double
        public var capabilities: Double
        public var resources: Double
        public var powerSync: Double
        /// 0: no reclaim.
        public var reclaim: Double
        /// The image cache manager; 0: off.
        public var imageCache: Double
        public init(report: Double, capabilities: Double, resources: Double = 60, powerSync: Double = 600, reclaim: Double = 0,
                    imageCache: Double = 0)
        {
            self.report = report
            self.capabilities = capabilities
            self.resources = resources
            self.powerSync = powerSync
            self.reclaim = reclaim
            self.imageCache = imageCache
        }
    }

    let manager: ComputeManager
    let controlPlane: ControlPlane
    let host: String
    let logger: Logger
    let intervals: Mutex<Intervals>
    let reportCount = Mutex(0)

    public init(manager: ComputeManager, controlPlane: ControlPlane, host: String, intervals: Intervals, logger: Logger) {
        self.manager = manager
        self.controlPlane = controlPlane
        self.host = host
        self.intervals = Mutex(intervals)
        self.logger = logger
    }

    /// Changes the intervals; the next deadline of each task uses the new value.
    public func setIntervals(_ i: Intervals) { intervals.withLock { $0 = i } }

    public var heartbeatsSent: Int { reportCount.withLock { $0 } }

    private let lastReport = Mutex(monotonicSeconds())

    private let lastConfirmed = Mutex<Double?>(nil)

    /// Seconds since the broker last confirmed a heartbeat (publisher confirms), nil before
    /// the first. This is what STATUS and health report: a heartbeat the broker refused or
    /// never took does not count.
    public var secondsSinceConfirmedHeartbeat: Double? {
        lastConfirmed.withLock { $0 }.map { monotonicSeconds() - $0 }
    }

    /// Seconds since the heartbeat task last ran (sent or tried to send `report_state`).
    public var secondsSinceHeartbeat: Double { monotonicSeconds() - lastReport.withLock { $0 } }

    /// The current intervals.
    public var currentIntervals: Intervals { intervals.withLock { $0 } }

    /// Runs both tasks until cancelled.
    public func run() async {
        let reportSchedule = PeriodicSchedule(interval: intervals.withLock { $0.report })
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await runPeriodically(
                    schedule: { PeriodicSchedule(interval: self.intervals.withLock { $0.report }) },
                    initialDelay: reportSchedule.initialDelay(cap: 1.0),
                    record: { d in self.finished("report_state", d, level: .trace) }
                ) { await self.reportState() }
            }
            group.addTask {
                await runPeriodically(
                    schedule: { PeriodicSchedule(interval: self.intervals.withLock { $0.capabilities }) },
                    initialDelay: 0,
                    record: { d in self.finished("update_capabilities", d) }
                ) { await self.updateCapabilities() }
            }
            let resources = PeriodicSchedule(interval: intervals.withLock { $0.resources })
            group.addTask {
                await runPeriodically(
                    schedule: { PeriodicSchedule(interval: self.intervals.withLock { $0.resources }) },
                    initialDelay: resources.initialDelay(cap: 60),
                    record: { d in self.finished("update_available_resource", d) }
                ) { await self.manager.updateAvailableResource() }
            }
            let sync = PeriodicSchedule(interval: intervals.withLock { $0.powerSync })
            group.addTask {
                await runPeriodically(
                    schedule: { PeriodicSchedule(interval: self.intervals.withLock { $0.powerSync }) },
                    initialDelay: sync.initialDelay(cap: 60),
                    record: { d in self.finished("sync_power_states", d) }
                ) { await self.manager.syncPowerStates() }
            }
            group.addTask {
                await runPeriodically(
                    schedule: { PeriodicSchedule(interval: self.intervals.withLock { $0.capabilities }) },
                    initialDelay: 1,
                    record: { d in if self.intervals.withLock({ $0.reclaim }) > 0 { self.finished("reclaim_queued_deletes", d) } }
                ) {
                    let after = self.intervals.withLock { $0.reclaim }
                    if after > 0 { await self.manager.reclaimQueuedDeletes(olderThan: after) }
                }
            }
            // nova's _run_image_cache_manager_pass; an interval of 0 checks again every
            // periodic_interval whether it was switched on by a reload.
            let cache = PeriodicSchedule(interval: max(1, intervals.withLock { $0.imageCache }))
            group.addTask {
                await runPeriodically(
                    schedule: {
                        let i = self.intervals.withLock { $0 }
                        return PeriodicSchedule(interval: i.imageCache > 0 ? i.imageCache : i.capabilities)
                    },
                    initialDelay: cache.initialDelay(cap: 60),
                    record: { d in self.finished("image_cache_manager", d) }
                ) {
                    if self.intervals.withLock({ $0.imageCache }) > 0 { await self.manager.runImageCacheManager() }
                }
            }
        }
    }

    /// One line per periodic run with its duration (debug), which the benchmarks read, and
    /// the run in the metrics (unless `metric` is false: a step, not a task).
    func finished(_ task: String, _ seconds: Double, level: Logger.Level = .debug, metric: Bool = true) {
        if metric { AgentMetrics.shared.periodicRun(task: task, seconds: seconds, endedAtUnix: wallClockSeconds()) }
        logger.log(level: level, "periodic task done", metadata: [
            "task": "\(task)", "duration_ms": "\((seconds * 10_000).rounded() / 10)",
        ])
    }

    func reportState() async {
        lastReport.withLock { $0 = monotonicSeconds() }
        let count = reportCount.withLock { c -> Int in
            c += 1
            return c
        }
        let sending = monotonicSeconds()
        do {
            // Returning means the control plane has it (the broker confirmed it, or the
            // conductor saved it).
            try await controlPlane.heartbeat(count: count, uptime: manager.uptime)
            let now = monotonicSeconds()
            lastConfirmed.withLock { $0 = now }
            AgentMetrics.shared.heartbeatConfirmed(sendSeconds: now - sending)
        } catch {
            AgentMetrics.shared.periodicFailed(task: "report_state")
            logger.warning("report_state heartbeat not sent: \(error)")
        }
    }

    func updateCapabilities() async {
        do {
            let started = monotonicSeconds()
            let caps = try await manager.capabilities()
            finished("build_capabilities", monotonicSeconds() - started, metric: false)
            try await controlPlane.publishCapabilities(caps)
            logger.debug("capabilities published", metadata: ["num_instances": "\(caps["num_instances"]?.intValue ?? 0)"])
        } catch {
            AgentMetrics.shared.periodicFailed(task: "update_capabilities")
            logger.warning("capabilities not published: \(error)")
        }
    }
}
