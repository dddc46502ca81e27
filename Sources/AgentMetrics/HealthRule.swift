/// When the agent is healthy: it consumes its queues and the broker confirmed a heartbeat
/// within `service_down_time / 2` (so the control plane, which calls a service down after
/// `service_down_time`, still sees it up with a margin). `/healthz` and `computectl health`
/// answer with this rule.
public enum HealthRule {
    public static func evaluate(consuming: Bool, secondsSinceConfirmedHeartbeat: Double?,
                                serviceDownTime: Double) -> (healthy: Bool, reason: String)
    {
        let limit = serviceDownTime / 2
        guard consuming else { return (false, "not consuming: no RPC connection to the broker") }
        guard let age = secondsSinceConfirmedHeartbeat else {
            return (false, "no heartbeat confirmed by the broker yet")
        }
        let shown = (age * 10).rounded() / 10
        if age > limit {
            return (false, "last heartbeat confirmed \(shown) s ago, more than service_down_time / 2 (\(limit) s)")
        }
        return (true, "ok: consuming, last heartbeat confirmed \(shown) s ago")
    }
}
