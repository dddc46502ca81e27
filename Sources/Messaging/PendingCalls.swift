import AgentSupport
import Dispatch
import Synchronization

/// Calls waiting for their reply, by `_msg_id`, each with its deadline.
///
/// One thread per client (`rpc-timeouts`, started at the first call) enforces the
/// deadlines: it sleeps until the earliest one, and a call registered with an earlier
/// deadline than that wakes it. A call therefore needs no timer task of its own; such a
/// task costs the Swift pool two wake-ups per call (its start, then its cancellation when
/// the reply comes first), which was most of a sequential call's time above the broker's
/// floor on the caller's side. With calls of equal timeouts the thread wakes about once
/// per timeout period, not once per call.
final class PendingCalls: Sendable {
    typealias Outcome = Result<JSONValue, RemoteFailure>

    /// What a call that passed its deadline is resumed with.
    static let timedOut = RemoteFailure(className: "MessagingTimeout", module: "oslo_messaging.exceptions", message: "timeout")

    private struct Waiting {
        let continuation: CheckedContinuation<Outcome, Never>
        let deadline: Double
    }

    private struct State {
        var calls: [String: Waiting] = [:]
        /// When the sweeper wakes next; nil: not until a call is registered.
        var sweeperWakesAt: Double?
        var sweeperRunning = false
        /// Set by `stop()`: the sweeper ends once no call waits.
        var stopping = false
        /// Passes the sweeper has made over the calls (for tests).
        var sweeps = 0
    }

    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)

    /// Waits for `id` until `deadline` (`monotonicSeconds()`), then resumes with `timedOut`.
    func register(_ id: String, deadline: Double, _ c: CheckedContinuation<Outcome, Never>) {
        let (start, signal) = state.withLock { s -> (Bool, Bool) in
            s.calls[id] = Waiting(continuation: c, deadline: deadline)
            s.stopping = false
            let start = !s.sweeperRunning
            s.sweeperRunning = true
            if let at = s.sweeperWakesAt, at <= deadline { return (start, false) }
            s.sweeperWakesAt = deadline
            return (start, !start)
        }
        if start {
            startDedicatedThread(name: "rpc-timeouts") { [self] in sweep() }
        } else if signal {
            wake.signal()
        }
    }

    /// Resumes the call waiting for `id`, if it still waits (a late reply after a timeout
    /// finds nobody and is dropped).
    func complete(_ id: String, _ outcome: Outcome) {
        let c = state.withLock { $0.calls.removeValue(forKey: id) }
        c?.continuation.resume(returning: outcome)
    }

    /// How many calls wait.
    var count: Int { state.withLock { $0.calls.count } }

    /// Passes the sweeper has made over the calls since this client started.
    var sweeps: Int { state.withLock { $0.sweeps } }

    /// Lets the sweeper thread end once the calls still waiting have their reply or time
    /// out (a call registered later starts a new one).
    func stop() {
        state.withLock { $0.stopping = true }
        wake.signal()
    }

    private func sweep() {
        while true {
            let now = monotonicSeconds()
            let (expired, next, ends) = state.withLock { s -> ([CheckedContinuation<Outcome, Never>], Double?, Bool) in
                var expired: [CheckedContinuation<Outcome, Never>] = []
                var next: Double?
                for (id, w) in s.calls {
                    if w.deadline <= now {
                        expired.append(w.continuation)
                        s.calls[id] = nil
                    } else {
                        next = min(next ?? w.deadline, w.deadline)
                    }
                }
                s.sweeperWakesAt = next
                s.sweeps += 1
                if s.calls.isEmpty && s.stopping {
                    s.sweeperRunning = false
                    return (expired, nil, true)
                }
                return (expired, next, false)
            }
            for c in expired { c.resume(returning: .failure(Self.timedOut)) }
            if ends { return }
            if let next {
                _ = wake.wait(timeout: .now() + .nanoseconds(Int(min(next - now, 86_400) * 1e9) + 1))
            } else {
                wake.wait()
            }
        }
    }
}
