/// Decides whether the connection thread waits awake, for a moment, for work it has just
/// handed to the pool to come back, instead of going to sleep in `poll`.
///
/// A call costs a thread wake-up at every hop, and on a virtual machine a wake-up
/// (pipe write, scheduler, inter-processor interrupt) is much of what an RPC costs above
/// the broker. After the connection thread hands deliveries to the pool, what comes back
/// is usually quick: a server's handler acks, then replies, within tens of microseconds; a
/// client's caller, woken by its reply, publishes its next request as fast. If the
/// connection thread is still awake when that arrives, nobody pays a wake-up for it —
/// neither the pipe write on the pool thread nor the wake of this one.
///
/// Waiting awake costs a core, so it is bounded (`budget` per wait), it yields the CPU on
/// every turn (`sched_yield`: a runnable handler or the broker on the same core goes
/// first), and it happens only right after a round that delivered something, or whose
/// wait caught something (a call's handler hands back its ack, then its reply: up to
/// `streakLimit` waits in a row). It stops when it stops paying: after `missesToRest`
/// waits in a row that ended empty (slow handlers, a client that has stopped calling) the
/// thread sleeps at once for the next `restRounds` rounds that delivered something, then
/// tries again.
///
/// Pure bookkeeping on the connection thread; the waiting itself is `AMQPWorker`'s.
struct HandBackSpin {
    /// Longest wait, in seconds (`ConnectionSettings.handBackWait`); 0 = never wait.
    var budget: Double = 0.000_2
    /// Empty waits in a row after which the thread stops waiting for a while.
    var missesToRest = 4
    /// Rounds that delivered something during which the thread does not wait after a rest starts.
    var restRounds = 64
    /// Waits in a row, each after the last one caught something, before the thread polls.
    var streakLimit = 8

    private(set) var misses = 0
    private(set) var resting = 0
    private(set) var streak = 0

    /// Whether to wait after a round that delivered `delivered` messages.
    mutating func shouldWait(delivered: Int) -> Bool {
        guard budget > 0 else { return false }
        if delivered == 0 {
            // Only right after a wait that caught something: the rest of what the
            // handlers hand back is likely on its way.
            guard streak > 0 && streak < streakLimit else {
                streak = 0
                return false
            }
            return true
        }
        streak = 0
        if resting > 0 {
            resting -= 1
            return false
        }
        return true
    }

    /// What the wait found: work to do (`true`) or nothing within the budget.
    mutating func waited(found: Bool) {
        if found {
            misses = 0
            streak += 1
            return
        }
        streak = 0
        misses += 1
        if misses >= missesToRest {
            misses = 0
            resting = restRounds
        }
    }
}
