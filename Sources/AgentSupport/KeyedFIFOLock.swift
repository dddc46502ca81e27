import Synchronization

/// Mutual exclusion per key (an instance uuid), granted in the order tickets were taken.
///
/// Taking a ticket is synchronous, so whoever takes tickets in a known order (the RPC
/// server, in delivery order) gets the lock in that order even though the holders then
/// run as independent tasks.
public final class KeyedFIFOLock: Sendable {
    public struct Ticket: Sendable {
        public let key: String
        let id: UInt64
    }

    private struct Queue {
        var order: [UInt64] = []
        var waiting: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private struct State {
        var next: UInt64 = 0
        var queues: [String: Queue] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Joins the queue for `key`.
    public func ticket(_ key: String) -> Ticket {
        state.withLock { s in
            s.next += 1
            s.queues[key, default: Queue()].order.append(s.next)
            return Ticket(key: key, id: s.next)
        }
    }

    /// Waits until every earlier ticket for the key has been released.
    public func acquire(_ t: Ticket) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.queues[t.key]?.order.first == t.id { return true }
                s.queues[t.key]?.waiting[t.id] = c
                return false
            }
            if now { c.resume() }
        }
    }

    /// Leaves the queue (whether or not the lock was acquired) and wakes the next holder.
    public func release(_ t: Ticket) {
        let wake = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard var q = s.queues[t.key] else { return nil }
            let wasFirst = q.order.first == t.id
            q.order.removeAll { $0 == t.id }
            q.waiting[t.id] = nil
            var c: CheckedContinuation<Void, Never>?
            if wasFirst, let next = q.order.first { c = q.waiting.removeValue(forKey: next) }
            s.queues[t.key] = q.order.isEmpty ? nil : q
            return c
        }
        wake?.resume()
    }

    /// Takes a ticket, waits for the lock, runs `body`, releases.
    public func withLock<T: Sendable>(_ key: String, _ body: () async throws -> T) async rethrows -> T {
        let t = ticket(key)
        await acquire(t)
        defer { release(t) }
        return try await body()
    }

    /// Number of keys with a holder or waiters (for tests and status).
    public var busyKeys: Int { state.withLock { $0.queues.count } }
}

/// An async counting semaphore: at most `limit` holders at once, the rest wait in order.
/// Bounds concurrent builds (`max_concurrent_builds`) without blocking a thread.
public final class AsyncLimiter: Sendable {
    private struct State {
        var available: Int
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    public init(limit: Int) {
        precondition(limit > 0)
        state = Mutex(State(available: limit))
    }

    public func acquire() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.available > 0 { s.available -= 1; return true }
                s.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    public func release() {
        let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty { s.available += 1; return nil }
            return s.waiters.removeFirst()
        }
        c?.resume()
    }

    /// How many are waiting for a slot.
    public var waiting: Int { state.withLock { $0.waiters.count } }
}
