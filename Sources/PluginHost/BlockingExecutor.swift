import AgentSupport
import Dispatch
import Synchronization

/// A pool of dedicated OS threads for calls that block: plugin calls (libvirt), file and
/// network I/O. Swift's cooperative pool has one thread per core (two here); one blocked
/// libvirt call there would stall heartbeats and message handling, so nothing blocking
/// runs there.
///
/// Every call has a deadline. When it passes, the caller gets `BlockingExecutor.Timeout`
/// at once; the thread stays with the stuck call until it returns, and the pool starts a
/// replacement thread (up to four times its size) so a hung hypervisor cannot starve the
/// rest of the agent.
public final class BlockingExecutor: Sendable {
    public struct Timeout: Error, CustomStringConvertible, Sendable {
        public let seconds: Double
        public var description: String { "no answer within \(seconds) s" }
    }

    private struct State {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var threads = 0
        var stuck = 0
    }

    private let state = Mutex(State())
    private let available = DispatchSemaphore(value: 0)
    private let size: Int
    private let name: String

    public init(threads: Int, name: String = "plugin-call") {
        precondition(threads > 0)
        self.size = threads
        self.name = name
        for _ in 0..<threads { spawn() }
    }

    /// Number of threads right now (grows while calls are stuck past their deadline).
    public var threadCount: Int { state.withLock { $0.threads } }

    /// Runs `body` on a pool thread and returns its result, or throws `Timeout` after
    /// `timeout` seconds.
    public func run<T: Sendable>(timeout: Double, _ body: @escaping @Sendable () -> T) async throws(Timeout) -> T {
        let result: T? = await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
            let once = ResumeOnce(c)
            let timer = Task {
                try? await Task.sleep(for: .milliseconds(Int(timeout * 1000)))
                if Task.isCancelled { return }
                if once.resume(nil) { self.callTimedOut() }
            }
            enqueue {
                let value = body()
                timer.cancel()
                if !once.resume(value) { self.stuckCallReturned() }
            }
        }
        guard let result else { throw Timeout(seconds: timeout) }
        return result
    }

    private func enqueue(_ job: @escaping @Sendable () -> Void) {
        state.withLock { $0.jobs.append(job) }
        available.signal()
    }

    private func callTimedOut() {
        let grow = state.withLock { s -> Bool in
            s.stuck += 1
            return s.threads - s.stuck < size && s.threads < size * 4
        }
        if grow { spawn() }
    }

    private func stuckCallReturned() {
        state.withLock { $0.stuck -= 1 }
    }

    private func spawn() {
        let n = state.withLock { s -> Int in
            s.threads += 1
            return s.threads
        }
        startDedicatedThread(name: "\(name)-\(n)") { [self] in workerLoop() }
    }

    private func workerLoop() {
        while true {
            available.wait()
            let job = state.withLock { s -> (@Sendable () -> Void)? in
                guard s.head < s.jobs.count else { return nil }
                let j = s.jobs[s.head]
                s.head += 1
                if s.head > 64 && s.head * 2 > s.jobs.count {
                    s.jobs.removeFirst(s.head)
                    s.head = 0
                }
                return j
            }
            job?()
            // A pool that grew while calls were stuck shrinks back once they return.
            let exit = state.withLock { s -> Bool in
                if s.threads - s.stuck > size {
                    s.threads -= 1
                    return true
                }
                return false
            }
            if exit { return }
        }
    }
}
