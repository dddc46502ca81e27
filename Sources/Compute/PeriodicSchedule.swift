import AgentSupport

/// Deadline arithmetic for periodic tasks: each run is due `interval` after the previous
/// deadline (not after the previous run ended), so the schedule does not drift; runs that
/// would have been due while a slow run was still going are skipped, not stacked up.
public struct PeriodicSchedule: Sendable, Equatable {
    public var interval: Double

    public init(interval: Double) {
        precondition(interval > 0)
        self.interval = interval
    }

    /// The first deadline after `previous` that is still in the future at `now`.
    public func nextDeadline(after previous: Double, now: Double) -> Double {
        let next = previous + interval
        if next > now { return next }
        let missed = ((now - next) / interval).rounded(.down) + 1
        return next + missed * interval
    }

    /// A random initial delay in [0, min(interval, cap)), so a rack of hosts started
    /// together does not beat in step.
    public func initialDelay(cap: Double) -> Double {
        Double.random(in: 0..<max(min(interval, cap), 0.001))
    }
}

/// Runs `body` on a `PeriodicSchedule` until the task is cancelled. Runs never overlap
/// (the next one waits for the previous one), and each run's duration is passed to
/// `record`.
public func runPeriodically(schedule: @escaping @Sendable () -> PeriodicSchedule, initialDelay: Double,
                            record: @escaping @Sendable (Double) -> Void = { _ in },
                            _ body: @escaping @Sendable () async -> Void) async
{
    var deadline = monotonicSeconds() + initialDelay
    while !Task.isCancelled {
        let wait = deadline - monotonicSeconds()
        if wait > 0 {
            do { try await Task.sleep(for: .milliseconds(Int((wait * 1000).rounded(.up)))) } catch { return }
        }
        let start = monotonicSeconds()
        await body()
        record(monotonicSeconds() - start)
        deadline = schedule().nextDeadline(after: deadline, now: monotonicSeconds())
    }
}
