import Prometheus
import Synchronization

/// The agent's Prometheus metrics (names, types and labels: docs/metrics.md).
///
/// Every metric lives in one `PrometheusCollectorRegistry` (swift-prometheus). Recording
/// is off until `enable()` — `[metrics] listen` unset — so an agent without the endpoint
/// pays one relaxed atomic load per event. Label values always come from closed sets
/// (the API's method names, plugin function names, task names, lanes); callers map
/// anything else to "unknown" before it gets here.
public final class AgentMetrics: Sendable {
    public static let shared = AgentMetrics()

    public init() {}

    public let registry = PrometheusCollectorRegistry()
    private let on = Atomic<Bool>(false)
    /// Run before each scrape to refresh the gauges that are read, not counted.
    private let collectors = Mutex<[@Sendable () -> Void]>([])

    /// Seconds: from a fast call to the longest plugin call the agent allows.
    public static let secondsBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                  1, 2.5, 5, 10, 30, 60, 120, 300]

    public var isEnabled: Bool { on.load(ordering: .relaxed) }

    /// Starts recording. Called once at start-up when the endpoint is configured.
    public func enable() { on.store(true, ordering: .relaxed) }

    /// Adds a closure that refreshes read-at-scrape gauges; it runs on the scraping thread.
    public func addCollector(_ c: @escaping @Sendable () -> Void) { collectors.withLock { $0.append(c) } }

    /// The text exposition (format 0.0.4) after running the collectors.
    public func exposition() -> [UInt8] {
        for c in collectors.withLock({ $0 }) { c() }
        var out: [UInt8] = []
        out.reserveCapacity(16 * 1024)
        registry.emit(into: &out)
        return out
    }

    // MARK: - Helpers over the registry (it returns the same instance for a name and labels)

    static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// The gauge with this name and labels (made on first use), recording or not.
    public func gauge(_ name: String, _ labels: [(String, String)] = [], help: String) -> Gauge {
        registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
    }

    /// The counter with this name and labels (made on first use), recording or not.
    public func counter(_ name: String, _ labels: [(String, String)] = [], help: String) -> Counter {
        registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
    }

    public func count(_ name: String, _ labels: [(String, String)] = [], by n: Int64 = 1, help: String) {
        guard isEnabled else { return }
        counter(name, labels, help: help).increment(by: n)
    }

    public func set(_ name: String, _ labels: [(String, String)] = [], _ value: Double, help: String) {
        guard isEnabled else { return }
        gauge(name, labels, help: help).set(value)
    }

    public func observe(_ name: String, _ labels: [(String, String)] = [], seconds: Double, help: String) {
        guard isEnabled else { return }
        registry.makeValueHistogram(descriptor: Self.descriptor(name, help), labels: labels, buckets: Self.secondsBuckets).record(seconds)
    }

    /// Makes a series exist at 0 before its first event, so rates and alerts see it.
    public func declareCounter(_ name: String, _ labels: [(String, String)] = [], help: String) {
        guard isEnabled else { return }
        _ = counter(name, labels, help: help)
    }

    // MARK: - RPC

    /// How a message ended. `refused`: the instance's state (or lock) does not allow the
    /// action; `malformed`: not a request the agent could read or answer safely.
    public enum RPCOutcome: String, Sendable { case ok, refused, error, malformed }

    /// The series of one method, looked up once and kept: the registry's own lookup
    /// validates names and labels on every call, which costs more per message than the
    /// rest of the bookkeeping together. Its counters are made together (call and cast ×
    /// the four outcomes), so one dictionary lookup serves a message.
    private struct MethodSeries {
        let counters: [Counter]  // index: kind (0 call, 1 cast) × 4 + outcome
        let histogram: ValueHistogram
    }

    private struct HotSeries {
        var methods: [String: MethodSeries] = [:]
        var pluginHistograms: [PluginKey: ValueHistogram] = [:]
    }

    private struct PluginKey: Hashable {
        let kind: String
        let function: String
    }

    private let hot = Mutex(HotSeries())
    private static let outcomes: [RPCOutcome] = [.ok, .refused, .error, .malformed]

    private func series(method: String) -> MethodSeries {
        if let s = hot.withLock({ $0.methods[method] }) { return s }
        let counterName = Self.descriptor("compute_agent_rpc_messages_total", "RPC messages handled, by method, call or cast, and outcome")
        var counters: [Counter] = []
        for kind in ["call", "cast"] {
            for outcome in Self.outcomes {
                counters.append(registry.makeCounter(descriptor: counterName,
                                                     labels: [("method", method), ("kind", kind), ("outcome", outcome.rawValue)]))
            }
        }
        let histogram = registry.makeValueHistogram(
            descriptor: Self.descriptor("compute_agent_rpc_handling_seconds", "Time from taking an RPC message to its reply or acknowledgement"),
            labels: [("method", method)], buckets: Self.secondsBuckets)
        let made = MethodSeries(counters: counters, histogram: histogram)
        hot.withLock { $0.methods[method] = made }
        return made
    }

    public func rpcMessage(method: String, kind: String, outcome: RPCOutcome, seconds: Double?) {
        guard isEnabled else { return }
        let s = series(method: method)
        let index = (kind == "cast" ? 4 : 0) + Self.outcomes.firstIndex(of: outcome)!
        s.counters[index].increment()
        if let seconds { s.histogram.record(seconds) }
    }

    public func rpcRedelivered() {
        count("compute_agent_rpc_redeliveries_total", help: "Messages the broker delivered again (redelivered flag)")
    }

    public func rpcDuplicate() {
        count("compute_agent_rpc_duplicates_dropped_total",
              help: "Messages dropped because their _unique_id was already handled")
    }

    // MARK: - Broker

    public func brokerConnected(lane: String, reconnect: Bool) {
        if reconnect {
            count("compute_agent_broker_reconnects_total", [("lane", lane)],
                  help: "Connections made again after a connection was lost, by lane")
        }
    }

    public func brokerConnectionFailed(lane: String) {
        count("compute_agent_broker_connection_failures_total", [("lane", lane)],
              help: "Attempts to connect to the broker that failed, by lane")
    }

    public func heartbeatConfirmed(sendSeconds: Double) {
        observe("compute_agent_heartbeat_send_seconds", seconds: sendSeconds,
                help: "Time from publishing a report_state heartbeat to the broker's confirm")
    }

    // MARK: - Periodic tasks

    public func periodicRun(task: String, seconds: Double, endedAtUnix: Double) {
        guard isEnabled else { return }
        observe("compute_agent_periodic_task_duration_seconds", [("task", task)], seconds: seconds,
                help: "Duration of periodic task runs, by task")
        set("compute_agent_periodic_task_last_run_timestamp_seconds", [("task", task)], endedAtUnix,
            help: "When each periodic task last finished (Unix time)")
    }

    public func periodicFailed(task: String) {
        count("compute_agent_periodic_task_failures_total", [("task", task)],
              help: "Periodic task runs that failed, by task")
    }

    // MARK: - Plugins

    public func pluginCall(kind: String, function: String, seconds: Double, timedOut: Bool, failed: Bool) {
        guard isEnabled else { return }
        let labels = [("kind", kind), ("function", function)]
        let key = PluginKey(kind: kind, function: function)
        if let h = hot.withLock({ $0.pluginHistograms[key] }) { h.record(seconds) } else {
            let h = registry.makeValueHistogram(
                descriptor: Self.descriptor("compute_agent_plugin_call_duration_seconds", "Duration of plugin calls, by plugin kind and function"),
                labels: labels, buckets: Self.secondsBuckets)
            // The function's failure counters exist (at 0) from its first call, so rate()
            // and increase() alerts see them before the first timeout.
            declareCounter("compute_agent_plugin_call_timeouts_total", labels, help: "Plugin calls that did not answer within plugin_call_timeout")
            declareCounter("compute_agent_plugin_call_errors_total", labels, help: "Plugin calls that returned an error")
            hot.withLock { $0.pluginHistograms[key] = h }
            h.record(seconds)
        }
        if timedOut {
            count("compute_agent_plugin_call_timeouts_total", labels,
                  help: "Plugin calls that did not answer within plugin_call_timeout")
        } else if failed {
            count("compute_agent_plugin_call_errors_total", labels, help: "Plugin calls that returned an error")
        }
    }
}
