#if canImport(Glibc)
import Glibc
#endif

/// Gives memory freed after a large message back to the system. glibc keeps freed heap
/// in its arenas; after a multi-megabyte message that is the message's size, kept for the
/// life of the process. `malloc_trim` returns it (it is not in Swift's Glibc module, so it
/// is looked up once).
public enum MemoryTrim {
    /// Messages at least this large trigger a trim when their handling ends.
    public static let threshold = 1 << 20

    private typealias Trim = @convention(c) (Int) -> Int32
    private static let trim: Trim? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim")
        .map { unsafeBitCast($0, to: Trim.self) }

    public static func release() { _ = trim?(0) }
}
