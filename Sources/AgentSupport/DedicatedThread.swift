#if canImport(Glibc)
import Glibc
#endif

/// Starts an OS thread that runs `body` and exits. Used for work that must own a thread:
/// an AMQP connection's I/O loop, the blocking plugin-call pool, libvirt's event loop.
/// The thread is detached; `body` decides when it ends.
public func startDedicatedThread(name: String, _ body: @escaping @Sendable () -> Void) {
    final class Box: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }
    let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    var tid = pthread_t()
    let rc = pthread_create(&tid, &attr, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        nameCurrentThread(box.name)
        box.body()
        return nil
    }, box)
    pthread_attr_destroy(&attr)
    precondition(rc == 0, "pthread_create failed: \(rc)")
}

/// Names the calling thread (as `top -H` and `ps -L` show it; Linux keeps 15 bytes).
func nameCurrentThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

/// Monotonic time in seconds, for deadlines and durations.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A random lower-case hex string of `bytes` bytes (uuid4().hex is 16 bytes).
public func randomHex(bytes: Int = 16) -> String {
    var g = SystemRandomNumberGenerator()
    var s = ""
    s.reserveCapacity(bytes * 2)
    let digits = Array("0123456789abcdef")
    for _ in 0..<bytes {
        let b = UInt8.random(in: 0...255, using: &g)
        s.append(digits[Int(b >> 4)])
        s.append(digits[Int(b & 0xF)])
    }
    return s
}

/// A random RFC 4122 version-4 UUID in its canonical text form.
public func randomUUID() -> String {
    var h = Array(randomHex(bytes: 16))
    h[12] = "4"
    let variant = Array("89ab")
    h[16] = variant[Int.random(in: 0..<4)]
    let s = String(h)
    let i = s.startIndex
    func part(_ a: Int, _ b: Int) -> Substring { s[s.index(i, offsetBy: a)..<s.index(i, offsetBy: b)] }
    return "\(part(0, 8))-\(part(8, 12))-\(part(12, 16))-\(part(16, 20))-\(part(20, 32))"
}

extension String {
    /// Text from a NUL-terminated C character buffer (e.g. an error-message buffer).
    public init(nulTerminated buffer: [CChar]) {
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        self = String(decoding: bytes, as: UTF8.self)
    }
}

/// The current UTC time as Python's `str(datetime.utcnow())` prints it
/// ("2026-11-23 09:15:02.123456"), the form oslo.messaging puts in notifications and nova
/// in its timestamps.
public func utcTimestamp() -> String {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    var t = tm()
    var secs = ts.tv_sec
    gmtime_r(&secs, &t)
    func pad(_ v: Int, _ w: Int) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, w - s.count)) + s
    }
    return "\(t.tm_year + 1900)-\(pad(Int(t.tm_mon) + 1, 2))-\(pad(Int(t.tm_mday), 2)) \(pad(Int(t.tm_hour), 2)):\(pad(Int(t.tm_min), 2)):\(pad(Int(t.tm_sec), 2)).\(pad(ts.tv_nsec / 1000, 6))"
}

/// Wall-clock time in seconds since the Unix epoch (for timestamps others compare).
public func wallClockSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
