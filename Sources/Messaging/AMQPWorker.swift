import AgentSupport
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Owns one AMQP connection and the one OS thread that does all of its I/O.
///
/// librabbitmq connections are not thread-safe, and `amqp_consume_message` blocks, so the
/// connection lives on its own thread (never on Swift's cooperative pool). The rest of the
/// agent talks to it through `perform` (async, runs a closure on the connection's thread)
/// and `ack`; deliveries come out through `onDelivery`, called on the connection thread,
/// which must only hand them on (e.g. into an `AsyncStream`).
///
/// The worker reconnects by itself: on any connection error it fails the commands queued
/// for that connection, waits with capped exponential backoff and jitter, tries the next
/// broker of the transport URL, and runs `setup` again (declares, consumes).
public final class AMQPWorker: Sendable {
    public enum Event: Sendable {
        case connected(broker: String, generation: UInt64)
        case connectionFailed(reason: String, attempt: Int, retryIn: Double, quick: Bool)
        case returned(routingKey: String, replyText: String)
        /// The broker refused something no retry can fix (a declare that conflicts with an
        /// existing entity, access refused, the login refused again and again). The worker
        /// has stopped; the owner should report it and exit.
        case gaveUp(reason: String)
    }

    /// How a connection to the broker is made and kept: the same for every lane of an
    /// agent, so it is set once (from `[oslo_messaging_rabbit]`) and handed to each.
    public struct ConnectionSettings: Sendable {
        public var heartbeat: Int = 60
        /// TLS to every broker of the URL, or plain TCP when nil.
        public var tls: TLSOptions?
        /// oslo's reconnect options: the n-th retry in a row waits
        /// `min(retryInterval + (n - 1) × retryBackoff, maxInterval)` seconds, jittered to
        /// 50–100 % of that; the first retry after a lost connection waits a random 0 …
        /// `retryInterval`, so a rack of agents does not reconnect in the same instant.
        public var retryInterval: Double = 1
        public var retryBackoff: Double = 2
        public var maxInterval: Double = 30
        /// For this many seconds after a connection is lost, retries come every
        /// 0.1–0.5 s (random): a broker restart usually lasts a few seconds, a refused
        /// connect costs nothing, and the jitter spreads a rack's reconnections over
        /// 0.4 s instead of one instant. oslo's schedule (above) starts after it, and at
        /// once after a refused login. 0 = oslo's schedule only.
        public var quickRetryWindow: Double = 10
        /// Seconds the connection thread stays awake after a round that delivered messages,
        /// for what the handlers hand back (see `HandBackSpin`); 0 = always sleep in poll.
        public var handBackWait: Double = 0.000_2

        public init() {}

        /// The settings `[oslo_messaging_rabbit]` of a configuration asks for.
        public init(configuration c: AgentConfiguration) {
            heartbeat = c.heartbeatTimeoutThreshold
            if c.ssl {
                var t = TLSOptions(caFile: c.sslCAFile, certFile: c.sslCertFile, keyFile: c.sslKeyFile)
                t.verifyHostname = c.sslVerifyHostname
                t.version = TLSOptions.TLSVersion(rawValue: c.sslVersion)
                tls = t
            }
            retryInterval = c.retryInterval
            retryBackoff = c.retryBackoff
            maxInterval = c.intervalMax
            quickRetryWindow = c.quickRetryWindow
            handBackWait = Double(c.handBackWaitMicroseconds) / 1_000_000
        }
    }

    public struct Options: Sendable {
        public var url: TransportURL
        public var settings = ConnectionSettings()
        public var connectTimeout: Double = 5
        public var connectionName: String
        public var threadName: String
        /// Consecutive refused logins after which the worker gives up (`.gaveUp`).
        public var loginRefusalsBeforeGivingUp = 5
        /// How long `stop()` waits for a connection thread caught in a blocking connect or
        /// handshake before returning without it (the thread ends on its own soon after).
        public var stopGrace: Double = 0.2

        public init(url: TransportURL, connectionName: String, threadName: String) {
            self.url = url
            self.connectionName = connectionName
            self.threadName = threadName
        }
    }

    /// Work for the connection thread. Acks and rejects are data, not closures, so the
    /// thread can coalesce the acks of one round (see `AckCoalescer`).
    private enum Command: Sendable {
        case run(@Sendable (AMQPConnection) -> Void, fail: @Sendable (AMQPError) -> Void)
        case ack(tag: UInt64, generation: UInt64)
        case reject(tag: UInt64, generation: UInt64, requeue: Bool)

        func fail(_ error: AMQPError) {
            if case .run(_, let fail) = self { fail(error) }
        }
    }

    private struct State {
        var commands: [Command] = []
        var stopping = false
        var wakePending = false
        /// The connection thread is awake and looking at `commands` (HandBackSpin): no wake-up needed.
        var spinning = false
        var started = false
        var stopped: [(UInt64, CheckedContinuation<Void, Never>)] = []
        var finished = false
        var connected = false
        var connectWaiters: [(UInt64, CheckedContinuation<Void, Never>)] = []
    }

    private let options: Options
    private let setup: @Sendable (AMQPConnection) throws(AMQPError) -> Void
    private let onDelivery: @Sendable (AMQPDelivery) -> Void
    private let onEvent: @Sendable (Event) -> Void
    private let state = Mutex(State())
    private let unsettled = Atomic<Int>(0)
    /// The connection thread's `pthread_self()` (0 before it starts): what it queues for
    /// itself (an ack from `onDelivery`) needs no wake-up, it goes round its loop anyway.
    private let connectionThread = Atomic<UInt>(0)

    /// Deliveries of the current connection not yet acknowledged or rejected.
    public var unacknowledged: Int { unsettled.load(ordering: .relaxed) }
    private let wakeRead: Int32
    private let wakeWrite: Int32

    /// - Parameters:
    ///   - setup: runs on the connection thread after every (re)connect: declare the
    ///     topology and start consumers. A thrown error counts as a failed connection.
    ///   - onDelivery: called on the connection thread for every delivered message.
    ///   - onEvent: connection state changes and returned messages, on the connection thread.
    public init(options: Options,
                setup: @escaping @Sendable (AMQPConnection) throws(AMQPError) -> Void = { _ throws(AMQPError) in },
                onDelivery: @escaping @Sendable (AMQPDelivery) -> Void = { _ in },
                onEvent: @escaping @Sendable (Event) -> Void = { _ in })
    {
        self.options = options
        self.setup = setup
        self.onDelivery = onDelivery
        self.onEvent = onEvent
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0, "pipe() failed")
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    /// Starts the connection thread. It connects at once and keeps reconnecting until `stop`.
    public func start() {
        let first = state.withLock { s -> Bool in
            if s.started { return false }
            s.started = true
            return true
        }
        guard first else { return }
        startDedicatedThread(name: options.threadName) { [self] in threadMain() }
    }

    /// Closes the connection politely and waits for the thread to end, but no longer than
    /// `stopGrace` when the thread is caught in a blocking connect or handshake (it sees the
    /// stop flag as soon as that returns). Commands still queued fail with "worker stopped".
    public func stop() async {
        let id = UInt64.random(in: 0...UInt64.max)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.finished || !s.started { return true }
                s.stopping = true
                s.stopped.append((id, c))
                return false
            }
            if done { c.resume(); return }
            wake()
            let grace = options.stopGrace
            DispatchQueue.global().asyncAfter(deadline: .now() + grace) { [self] in
                let late = state.withLock { s -> CheckedContinuation<Void, Never>? in
                    guard let i = s.stopped.firstIndex(where: { $0.0 == id }) else { return nil }
                    return s.stopped.remove(at: i).1
                }
                late?.resume()
            }
        }
    }

    /// Waits until the worker is connected (immediately if it is). Returns early if the
    /// worker stops or the waiting task is cancelled.
    public func waitUntilConnected() async {
        let id = UInt64.random(in: 0...UInt64.max)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.connected || s.finished || Task.isCancelled { return true }
                    s.connectWaiters.append((id, c))
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
                guard let i = s.connectWaiters.firstIndex(where: { $0.0 == id }) else { return nil }
                return s.connectWaiters.remove(at: i).1
            }
            c?.resume()
        }
    }

    public var isConnected: Bool { state.withLock { $0.connected } }

    private let loopTick = Mutex(monotonicSeconds())

    /// Seconds since the connection thread last went round its loop (it does at least
    /// once a second while connected: its poll times out after one). The watchdog reads it.
    public var secondsSinceLoop: Double { monotonicSeconds() - loopTick.withLock { $0 } }

    /// Runs `body` on the connection thread with the live connection and returns its result.
    /// Fails if the connection breaks before or while it runs (the command is not retried:
    /// the caller decides whether a publish is worth retrying).
    public func perform<T: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws(AMQPError) -> T) async throws(AMQPError) -> T {
        let result: Result<T, AMQPError> = await withCheckedContinuation { c in
            let once = ResumeOnce(c)
            enqueue(.run({ conn in
                do throws(AMQPError) { once.resume(.success(try body(conn))) } catch { once.resume(.failure(error)); }
            }, fail: { once.resume(.failure($0)) }))
        }
        return try result.get()
    }

    /// Runs `body` on the connection thread without waiting for it (a reply, a cast on the
    /// hot path: the caller saves a thread hop). `onFailure` hears why it did not happen,
    /// on the connection thread; keep it short.
    public func submit(_ body: @escaping @Sendable (AMQPConnection) throws(AMQPError) -> Void,
                       onFailure: @escaping @Sendable (AMQPError) -> Void)
    {
        enqueue(.run({ conn in
            do throws(AMQPError) { try body(conn) } catch { onFailure(error) }
        }, fail: onFailure))
    }

    /// Acknowledges a delivery (fire and forget; acks handed in together go out as one
    /// frame where they can). Ignored if the delivering connection is gone: the broker has
    /// already requeued the message.
    public func ack(_ delivery: AMQPDelivery) {
        enqueue(.ack(tag: delivery.deliveryTag, generation: delivery.generation))
    }

    /// Rejects a delivery; `requeue` puts it back for another consumer.
    public func reject(_ delivery: AMQPDelivery, requeue: Bool) {
        enqueue(.reject(tag: delivery.deliveryTag, generation: delivery.generation, requeue: requeue))
    }

    private func enqueue(_ command: Command) {
        let (needWake, rejected) = state.withLock { s -> (Bool, Bool) in
            if s.finished || s.stopping { return (false, true) }
            s.commands.append(command)
            if s.wakePending || s.spinning { return (false, false) }
            if pthread_self() == connectionThread.load(ordering: .relaxed) { return (false, false) }
            s.wakePending = true
            return (true, false)
        }
        if rejected { command.fail(AMQPError("the AMQP connection worker is stopped")); return }
        if needWake { wake() }
    }

    private func wake() {
        var b: UInt8 = 1
        _ = write(wakeWrite, &b, 1)
    }

    private func drainWakePipe() {
        var buf = [UInt8](repeating: 0, count: 64)
        while read(wakeRead, &buf, buf.count) > 0 {}
    }

    // MARK: - The connection thread

    private func threadMain() {
        connectionThread.store(pthread_self(), ordering: .relaxed)
        var attempt = 0
        var brokerIndex = 0
        var generation: UInt64 = 0
        var loginRefusals = 0
        /// When the current run of failures began (the connection was lost or never made).
        var outageSince: Double?
        /// Retries on oslo's schedule in the current run (after the quick window).
        var scheduledAttempt = 0
        let brokers = options.url.brokers
        while !state.withLock({ $0.stopping }) {
            let broker = brokers[brokerIndex % brokers.count]
            var conn: AMQPConnection?
            do throws(AMQPError) {
                let c = try AMQPConnection(broker: broker, virtualHost: options.url.virtualHost,
                                           heartbeat: options.settings.heartbeat, connectTimeout: options.connectTimeout,
                                           connectionName: options.connectionName, tls: options.settings.tls)
                conn = c
                try setup(c)
                generation += 1
                attempt = 0
                outageSince = nil
                scheduledAttempt = 0
                let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
                    s.connected = true
                    defer { s.connectWaiters = [] }
                    return s.connectWaiters.map(\.1)
                }
                onEvent(.connected(broker: "\(broker.host):\(broker.port)", generation: generation))
                for w in waiters { w.resume() }
                loginRefusals = 0
                try serve(c, generation: generation)
                break  // stopping: `c` closes politely when released
            } catch {
                conn?.markBroken()
                conn = nil
                state.withLock { $0.connected = false }
                failQueued(error)
                loginRefusals = error.isLoginRefusal ? loginRefusals + 1 : 0
                if error.isHopeless || loginRefusals >= options.loginRefusalsBeforeGivingUp {
                    let why = error.isHopeless ? error.message
                        : "\(error.message) (\(loginRefusals) times in a row)"
                    onEvent(.gaveUp(reason: why))
                    break
                }
                attempt += 1
                brokerIndex += 1
                let since = outageSince ?? monotonicSeconds()
                outageSince = since
                let quick = error.allowsQuickRetry && monotonicSeconds() - since < options.settings.quickRetryWindow
                if !quick { scheduledAttempt += 1 }
                let delay = Self.retryDelay(attempt: scheduledAttempt, quick: quick, options.settings)
                onEvent(.connectionFailed(reason: error.message, attempt: attempt, retryIn: delay, quick: quick))
                sleepInterruptibly(delay)
            }
            _ = conn
        }
        let (stopped, waiters) = state.withLock { s -> ([CheckedContinuation<Void, Never>], [CheckedContinuation<Void, Never>]) in
            s.finished = true
            s.connected = false
            defer { s.stopped = []; s.connectWaiters = [] }
            return (s.stopped.map(\.1), s.connectWaiters.map(\.1))
        }
        failQueued(AMQPError("the AMQP connection worker is stopped"))
        for w in waiters { w.resume() }
        for c in stopped { c.resume() }
    }

    /// The wait before the next retry: 0.1–0.5 s while `quick` (within the quick window
    /// of an outage, and the broker did not refuse the login: no hammering with bad
    /// credentials), else retry number `attempt` (1-based) on oslo's schedule, which
    /// counts from the window's end.
    static func retryDelay(attempt: Int, quick: Bool = false, _ o: ConnectionSettings) -> Double {
        if quick { return Double.random(in: 0.1...0.5) }
        if attempt <= 1 { return Double.random(in: 0...o.retryInterval) }
        let base = min(o.maxInterval, o.retryInterval + Double(attempt - 1) * o.retryBackoff)
        return base * Double.random(in: 0.5...1.0)
    }

    private func failQueued(_ error: AMQPError) {
        let cmds = state.withLock { s -> [Command] in
            defer { s.commands = [] }
            return s.commands
        }
        for c in cmds { c.fail(error) }
    }

    private func sleepInterruptibly(_ seconds: Double) {
        let deadline = monotonicSeconds() + seconds
        while !state.withLock({ $0.stopping }) {
            let left = deadline - monotonicSeconds()
            if left <= 0 { return }
            var p = pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(min(left, 1.0) * 1000) + 1)
            drainWakePipe()
            state.withLock { $0.wakePending = false }
        }
    }

    /// Serves a live connection until stop (returns) or an error (throws).
    private func serve(_ conn: AMQPConnection, generation: UInt64) throws(AMQPError) {
        var acks = AckCoalescer()
        var acked: [UInt64] = []
        var spin = HandBackSpin()
        spin.budget = options.settings.handBackWait
        var delivered = 0
        unsettled.store(0, ordering: .relaxed)
        while true {
            loopTick.withLock { $0 = monotonicSeconds() }
            drainWakePipe()
            let (commands, stopping) = state.withLock { s -> ([Command], Bool) in
                s.wakePending = false
                defer { s.commands = [] }
                return (s.commands, s.stopping)
            }
            for (i, c) in commands.enumerated() {
                switch c {
                case .run(let body, _): body(conn)
                case .ack(let tag, let gen): if gen == generation { acked.append(tag) }
                case .reject(let tag, let gen, let requeue):
                    if gen == generation {
                        acks.rejected(tag)
                        try? conn.reject(tag, requeue: requeue)
                    }
                }
                if !conn.isHealthy {
                    for rest in commands[(i + 1)...] { rest.fail(AMQPError("connection lost")) }
                    throw conn.lastError ?? AMQPError("connection lost")
                }
            }
            // Rejects went out above, before any multiple ack that spans their tags. A failed
            // ack or reject is not lost: the connection keeps it as `lastError`, and the
            // health check turns it into a reconnect (the broker then requeues).
            if !acked.isEmpty {
                let frames = acks.flush(acked)
                acked.removeAll(keepingCapacity: true)
                if let upTo = frames.multipleUpTo { try? conn.ack(upTo, multiple: true) }
                for tag in frames.singles { try? conn.ack(tag) }
                if !conn.isHealthy { throw conn.lastError ?? AMQPError("connection lost") }
            }
            unsettled.store(acks.outstanding.count, ordering: .relaxed)
            if stopping { return }
            if !conn.hasBufferedInput && spin.shouldWait(delivered: delivered) {
                let found = waitAwake(conn.socketFD, for: spin.budget)
                spin.waited(found: found != .nothing)
                // Commands: back to the top for them. Input: the poll below returns at once.
                if found == .commands { delivered = 0; continue }
            }
            delivered = 0
            // What this thread queued for itself (and what came in since the round's
            // commands were taken) goes out before it sleeps.
            if state.withLock({ !$0.commands.isEmpty }) { continue }
            if !conn.hasBufferedInput {
                var fds = [pollfd(fd: conn.socketFD, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
                let n = poll(&fds, 2, 1000)
                if n < 0 && errno != EINTR { throw AMQPError("poll: \(String(cString: strerror(errno)))") }
                if fds[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 && fds[0].revents & Int16(POLLIN) == 0 {
                    throw AMQPError("the broker connection was closed")
                }
            }
            // Read what is there (also lets librabbitmq answer and send heartbeats), but
            // come back to queued commands (acks, replies) regularly.
            for _ in 0..<256 {
                switch try conn.readNonBlocking(generation: generation) {
                case .delivery(let d):
                    acks.delivered(d.deliveryTag)
                    unsettled.store(acks.outstanding.count, ordering: .relaxed)
                    delivered += 1
                    onDelivery(d)
                case .returned(let key, let text): onEvent(.returned(routingKey: key, replyText: text))
                case .nothing: break
                }
                if !conn.hasBufferedInput && !Self.socketReadable(conn.socketFD) { break }
            }
        }
    }

    /// What a wait awake found.
    private enum Awake { case commands, input, nothing }

    /// Stays awake up to `seconds` for a command (a reply, an ack, a request handed back
    /// from the pool) or for input on the socket, yielding the CPU on every turn. While it
    /// waits, `enqueue` skips the pipe: the lock makes the hand-over safe (a command queued
    /// after the wait ends sees `spinning` false and wakes the poll).
    private func waitAwake(_ fd: Int32, for seconds: Double) -> Awake {
        if state.withLock({ s -> Bool in s.spinning = true; return !s.commands.isEmpty || s.stopping }) {
            state.withLock { $0.spinning = false }
            return .commands
        }
        let deadline = monotonicSeconds() + seconds
        var found = Awake.nothing
        while found == .nothing && monotonicSeconds() < deadline {
            sched_yield()
            if state.withLock({ !$0.commands.isEmpty || $0.stopping }) {
                found = .commands
            } else if Self.socketReadable(fd) {
                found = .input
            }
        }
        let late = state.withLock { s -> Bool in
            s.spinning = false
            return !s.commands.isEmpty
        }
        return late ? .commands : found
    }

    private static func socketReadable(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) > 0
    }
}
