import Dispatch
import Synchronization

/// One dedicated OS thread that runs jobs one at a time, in submission order. For a
/// resource that must be used from a single thread and whose calls block (the SQLite
/// connection of the instance store): async callers wait without holding a thread of
/// Swift's cooperative pool.
public final class SerialThread: Sendable {
    private let jobs = Mutex<[@Sendable () -> Void]>([])
    private let available = DispatchSemaphore(value: 0)

    public init(name: String) {
        // The thread keeps the object alive: a SerialThread lives as long as the process.
        startDedicatedThread(name: name) { self.loop() }
    }

    private func loop() -> Never {
        while true {
            available.wait()
            let job = jobs.withLock { $0.removeFirst() }
            job()
        }
    }

    /// Runs `body` on the thread and returns what it returns or throws.
    public func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { c in
            jobs.withLock {
                $0.append {
                    do throws(E) { c.resume(returning: .success(try body())) } catch { c.resume(returning: .failure(error)) }
                }
            }
            available.signal()
        }
        return try result.get()
    }

    /// Runs `body` on the thread and waits for it from a thread that is not part of the
    /// cooperative pool (start-up code in `main`, before any task runs).
    public func runBlocking<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) throws(E) -> T {
        let done = DispatchSemaphore(value: 0)
        let box = Mutex<Result<T, E>?>(nil)
        jobs.withLock {
            $0.append {
                let r: Result<T, E>
                do throws(E) { r = .success(try body()) } catch { r = .failure(error) }
                box.withLock { $0 = r }
                done.signal()
            }
        }
        available.signal()
        done.wait()
        return try box.withLock { $0! }.get()
    }
}
