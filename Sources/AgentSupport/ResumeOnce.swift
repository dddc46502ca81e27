import Synchronization

/// Resumes a continuation exactly once, whichever of several paths (a result, a timeout,
/// a failed connection) gets there first; later attempts report false.
public final class ResumeOnce<T: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T, Never>?>

    public init(_ c: CheckedContinuation<T, Never>) { continuation = Mutex(c) }

    @discardableResult
    public func resume(_ value: T) -> Bool {
        let c = continuation.withLock { c -> CheckedContinuation<T, Never>? in
            defer { c = nil }
            return c
        }
        c?.resume(returning: value)
        return c != nil
    }
}
