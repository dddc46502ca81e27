import AgentMetrics
import AgentSupport
import Logging
import Synchronization

/// What an RPC server dispatches to: the agent's compute manager, or a test endpoint.
public protocol RPCEndpoint: Sendable {
    /// The API version served ("1.0"). A request is accepted when its version has the same
    /// major and a minor not above this one; a request without a version means "1.0".
    var apiVersion: String { get }
    /// Whether `method` is part of the API (else the caller gets `NoSuchMethod`).
    func supports(method: String) -> Bool
    /// Runs a request. A thrown `RemoteFailureConvertible` reaches the caller as that
    /// exception; any other error as a generic agent error with its description.
    ///
    /// `delivery.acknowledge()` lets the endpoint ack a cast as soon as it has durably
    /// recorded it; otherwise the server acks a cast when the handler returns.
    func handle(_ request: RPCRequest, delivery: DeliveryAcknowledger) async throws -> JSONValue
    /// Requests with the same key are handled one at a time, in delivery order (the
    /// instance uuid for actions on an instance); nil means no ordering.
    func orderingKey(for request: RPCRequest) -> String?
    /// Whether `method` only reads. A read that succeeds is logged at debug level, an
    /// action at info: a control plane polling hundreds of reads a second must not push
    /// the lines that matter past journald's rate limit.
    func isReadOnly(method: String) -> Bool
}

extension RPCEndpoint {
    public func orderingKey(for request: RPCRequest) -> String? { nil }
    public func isReadOnly(method: String) -> Bool { false }
}

/// Acks one delivered message at most once (a no-op for calls, already acked on receipt).
public final class DeliveryAcknowledger: Sendable {
    private let action: Mutex<(@Sendable () -> Void)?>

    public init(_ ack: @escaping @Sendable () -> Void) { action = Mutex(ack) }

    /// An acknowledger that does nothing (calls, tests).
    public static var none: DeliveryAcknowledger { DeliveryAcknowledger {} }

    public func acknowledge() {
        let a = action.withLock { a -> (@Sendable () -> Void)? in
            defer { a = nil }
            return a
        }
        a?()
    }
}

/// Serves an oslo.messaging RPC target (`topic`, `server = host`) on the rabbit driver's
/// exact topology:
///
/// - control exchange (topic, e.g. `nova`) with queues `<topic>` and `<topic>.<host>`
///   bound by the same keys,
/// - fanout exchange `<topic>_fanout` (auto-delete) with a per-process queue
///   `<topic>_fanout_<hex>` (`x-expires`), deleted on a clean stop.
///
/// Acknowledgement: a call is acked when its handling starts (oslo's semantics toward the
/// caller); a cast is acked when the endpoint says it has durably recorded it, or else
/// once its handler has finished, so a crash before that leaves it in the broker for
/// redelivery. Requests with the same ordering key run one at a time in delivery order. `basic.qos` bounds how many messages the broker pushes
/// in, and the number of handlers running at once is bounded by the same figure.
public final class RPCServer: Sendable {
    public struct Options: Sendable {
        public var url: TransportURL
        public var exchange: String
        public var topic: String
        public var host: String
        public var prefetch: Int = 64
        /// Heartbeat, TLS and reconnect settings of the connection.
        public var connection = AMQPWorker.ConnectionSettings()
        public var durableQueues = false
        public var quorumQueues = false
        public var transientQueuesTTL: Int = 1800
        /// What to do when `<topic>.<host>` already has a consumer at the first connect:
        /// another agent runs with the same `host`.
        public var hostConflict: HostConflictPolicy = .refuse
        /// Largest message body taken in; a bigger call gets a `MessageTooLarge` reply, a
        /// bigger cast is logged and dropped.
        public var maxMessageBytes = 8 << 20
        /// Largest reply sent; a bigger result becomes a `ReplyTooLarge` failure reply, so
        /// one huge answer cannot make the broker close the connection other replies share.
        public var maxReplyBytes = 8 << 20

        public init(url: TransportURL, exchange: String, topic: String, host: String) {
            self.url = url
            self.exchange = exchange
            self.topic = topic
            self.host = host
        }

        public var fanoutExchange: String { "\(topic)_fanout" }
        public var hostQueue: String { "\(topic).\(host)" }
    }

    public let options: Options
    /// The per-process fanout queue name, `<topic>_fanout_<uuid4 hex>`.
    public let fanoutQueue: String
    private let endpoint: RPCEndpoint
    private let logger: Logger
    private let worker: AMQPWorker
    private let dispatch = Mutex(DispatchState())
    private let router: DeliveryRouter
    private let recentIDs = Mutex(RecentIDs(capacity: 64))
    private let ordering = KeyedFIFOLock()

    public init(options: Options, endpoint: RPCEndpoint, logger: Logger,
                onConnectionEvent: @escaping @Sendable (AMQPWorker.Event) -> Void = { _ in })
    {
        self.options = options
        self.endpoint = endpoint
        self.logger = logger
        let fanoutQueue = "\(options.topic)_fanout_\(randomHex())"
        self.fanoutQueue = fanoutQueue
        let router = DeliveryRouter()
        self.router = router
        var wo = AMQPWorker.Options(url: options.url, connectionName: "compute-agent:rpc:\(options.host)",
                                    threadName: "amqp-rpc")
        wo.settings = options.connection
        let log = logger
        let everConnected = ConnectedFlag()
        self.worker = AMQPWorker(
            options: wo,
            setup: { conn throws(AMQPError) in
                let durable = options.durableQueues || options.quorumQueues
                // The order and flags of oslo.messaging's RPC server start-up.
                try conn.declareExchange(options.exchange, type: "topic", durable: durable, autoDelete: false)
                try conn.declareQueue(options.topic, durable: durable, autoDelete: false, quorum: options.quorumQueues)
                try conn.bindQueue(options.topic, exchange: options.exchange, routingKey: options.topic)
                let others = try conn.declareQueue(options.hostQueue, durable: durable, autoDelete: false, quorum: options.quorumQueues)
                // Someone already consumes this host's queue: another agent with the same
                // `host` (on a reconnect it may be our own old connection that the broker has
                // not yet timed out, so only the first connect is checked).
                if others > 0 && !everConnected.value.load(ordering: .relaxed) {
                    let what = "queue '\(options.hostQueue)' already has \(others) consumer(s): another agent with host = \(options.host) is running"
                    if options.hostConflict == .refuse {
                        throw AMQPError("\(what); refusing to share its work (host_conflict = refuse)", persistentRefusal: true)
                    }
                    log.critical("\(what); both will take its messages (host_conflict = warn)")
                }
                try conn.bindQueue(options.hostQueue, exchange: options.exchange, routingKey: options.hostQueue)
                try conn.declareExchange(options.fanoutExchange, type: "fanout", durable: false, autoDelete: true)
                try conn.declareQueue(fanoutQueue, durable: false, autoDelete: false,
                                      expiresMs: Int64(options.transientQueuesTTL) * 1000)
                try conn.bindQueue(fanoutQueue, exchange: options.fanoutExchange, routingKey: options.topic)
                try conn.qos(prefetch: options.prefetch)
                try conn.consume(queue: options.topic, consumerTag: "1")
                try conn.consume(queue: options.hostQueue, consumerTag: "2")
                try conn.consume(queue: fanoutQueue, consumerTag: "3")
            },
            onDelivery: { router.server?.admit($0) },
            onEvent: { event in
                if case .connected = event { everConnected.value.store(true, ordering: .relaxed) }
                if case .returned(let key, let text) = event {
                    log.warning("reply undeliverable: the caller's reply queue is gone", metadata: ["reply_q": "\(key)", "reason": "\(text)"])
                }
                onConnectionEvent(event)
            })
        router.server = self
    }

    /// Connects (retrying until it succeeds) and returns once consuming.
    public func start() async {
        worker.start()
        await worker.waitUntilConnected()
    }

    public var isConnected: Bool { worker.isConnected }

    /// Deliveries taken from the broker and not yet acknowledged (calls are acked at
    /// once; casts after their durable record).
    public var unacknowledged: Int { worker.unacknowledged }

    /// Returns once connected and consuming, or when the server stops or the task is cancelled.
    public func waitUntilConnected() async { await worker.waitUntilConnected() }

    /// How long messages have been waiting for a handler slot without any handler
    /// finishing: 0 when nothing waits. A message loop wedged by handlers that never end
    /// shows here (the watchdog stops answering for it). Also reports a connection thread
    /// that stopped going round its loop while connected.
    public var wedgedSeconds: Double {
        let now = monotonicSeconds()
        let (waiting, lastFinish) = dispatch.withLock { ($0.pending.count, $0.lastFinish) }
        var wedged = waiting > 0 ? now - lastFinish : 0
        if worker.isConnected { wedged = max(wedged, worker.secondsSinceLoop - 1) }
        return wedged
    }

    /// Handlers running and messages waiting for a slot.
    public var load: (running: Int, waiting: Int) { dispatch.withLock { ($0.running, $0.pending.count) } }

    /// Handles deliveries until the task is cancelled. Then stops taking new messages,
    /// lets running handlers finish, deletes the fanout queue and closes the connection;
    /// messages not yet started go back to the broker.
    public func run() async {
        worker.start()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let stopNow = dispatch.withLock { d -> Bool in
                    if !d.accepting { return true }
                    d.cancelled = c
                    return false
                }
                if stopNow { c.resume() }
            }
        } onCancel: {
            let c = dispatch.withLock { d -> CheckedContinuation<Void, Never>? in
                d.accepting = false
                defer { d.cancelled = nil }
                return d.cancelled
            }
            c?.resume()
        }
        // Not accepting any more: what waits for a slot goes back to the broker.
        let (waiting, idle) = dispatch.withLock { d -> ([Admitted], Bool) in
            defer { d.pending = [] }
            return (d.pending, d.running == 0)
        }
        for w in waiting {
            if let t = w.ticket { ordering.release(t) }
            worker.reject(w.delivery, requeue: true)
        }
        if !idle {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = dispatch.withLock { d -> Bool in
                    if d.running == 0 { return true }
                    d.drained = c
                    return false
                }
                if done { c.resume() }
            }
        }
        // oslo deletes its fanout queue on a clean stop; with no connection there is nothing
        // to wait for (the queue expires by its x-expires).
        if worker.isConnected {
            let q = fanoutQueue
            _ = try? await worker.perform { conn throws(AMQPError) in try conn.deleteQueue(q) }
        }
        await worker.stop()
    }

    /// Called on the connection thread for each delivery, in delivery order: parses it,
    /// takes its ordering ticket (so messages for one instance keep their order), and
    /// starts its handler at once, or queues it while `prefetch` handlers run.
    fileprivate func admit(_ delivery: AMQPDelivery) {
        let parsed = parse(delivery)
        let ticket = (try? parsed.get()).flatMap { endpoint.orderingKey(for: $0) }.map { ordering.ticket($0) }
        let item = Admitted(delivery: delivery, parsed: parsed, ticket: ticket)
        enum Decision { case start, queued, refuse }
        let decision = dispatch.withLock { d -> Decision in
            if !d.accepting { return .refuse }
            if d.running < options.prefetch {
                d.running += 1
                return .start
            }
            if d.pending.isEmpty { d.lastFinish = monotonicSeconds() }
            d.pending.append(item)
            return .queued
        }
        switch decision {
        case .start: launch(item)
        case .queued: break
        case .refuse:
            if let ticket { ordering.release(ticket) }
            worker.reject(delivery, requeue: true)
        }
    }

    private func launch(_ item: Admitted) {
        let ticket = item.ticket
        let large = item.delivery.body.count >= MemoryTrim.threshold
        // The message is handed over in a box the task empties, so that once it is handled
        // nothing holds its body and a trim can give a large one's memory back.
        let box = AdmittedBox(item)
        Task {
            if let t = ticket { await self.ordering.acquire(t) }
            if let item = box.take() { await self.process(item.delivery, item.parsed) }
            if large { MemoryTrim.release() }
            if let t = ticket { self.ordering.release(t) }
            self.handlerFinished()
        }
    }

    /// A handler ended: start the next queued message, or give its slot back.
    private func handlerFinished() {
        let (next, drained) = dispatch.withLock { d -> (Admitted?, CheckedContinuation<Void, Never>?) in
            d.lastFinish = monotonicSeconds()
            if d.accepting, !d.pending.isEmpty { return (d.pending.removeFirst(), nil) }
            d.running -= 1
            if d.running == 0, let c = d.drained {
                d.drained = nil
                return (nil, c)
            }
            return (nil, nil)
        }
        if let next { launch(next) }
        drained?.resume()
    }

    /// Stops the connection without the polite clean-up (tests, fatal errors).
    public func stop() async { await worker.stop() }

    // MARK: - One message

    private func parse(_ delivery: AMQPDelivery) -> Result<RPCRequest, MalformedMessage> {
        if delivery.body.count > options.maxMessageBytes {
            return .failure(MalformedMessage("message of \(delivery.body.count) bytes is over max_message_bytes (\(options.maxMessageBytes))",
                                             tooLarge: true))
        }
        do throws(MalformedMessage) {
            return .success(try OsloMessage.request(from: OsloMessage.unwrap(body: delivery.body)))
        } catch { return .failure(error) }
    }

    private func process(_ delivery: AMQPDelivery, _ parsed: Result<RPCRequest, MalformedMessage>) async {
        let started = monotonicSeconds()
        let metrics = AgentMetrics.shared
        if delivery.redelivered { metrics.rpcRedelivered() }
        let request: RPCRequest
        switch parsed {
        case .success(let r): request = r
        case .failure(let error):
            if let address = OsloMessage.callAddress(scanning: delivery.body),
               Self.replyQueueProblem(address.replyQueue) == nil
            {
                // Not a request we can run, but a call whose caller can still hear why
                // (too large to parse, or not valid JSON/UTF-8 around a readable address).
                logger.error("refused \(error.tooLarge ? "oversized" : "malformed") call: \(error.reason)",
                             metadata: ["routing_key": "\(delivery.routingKey)", "bytes": "\(delivery.body.count)"])
                worker.ack(delivery)
                metrics.rpcMessage(method: "unknown", kind: "call", outcome: .malformed, seconds: nil)
                let failure = RemoteFailure(className: error.tooLarge ? "MessageTooLarge" : "MalformedMessage",
                                            module: "compute_agent.exception", message: error.reason)
                sendReply(OsloMessage.replyBody(result: .null, failure: failure, ending: true, messageID: address.messageID),
                          to: address.replyQueue, uniqueID: nil, meta: [:])
                return
            }
            // Nobody can be answered: log why and drop the message so it cannot loop.
            logger.error("dropped malformed message: \(error.reason)",
                         metadata: ["routing_key": "\(delivery.routingKey)", "bytes": "\(delivery.body.count)"])
            worker.ack(delivery)
            metrics.rpcMessage(method: "unknown", kind: "cast", outcome: .malformed, seconds: nil)
            return
        }
        if let q = request.replyQueue, let problem = Self.replyQueueProblem(q) {
            // A reply to it would make the broker close the channel and take every other
            // caller's reply on this connection with it.
            logger.error("dropped call: its _reply_q \(problem)",
                         metadata: ["method": "\(LogEscaping.escaped(request.method))", "routing_key": "\(delivery.routingKey)"])
            worker.ack(delivery)
            metrics.rpcMessage(method: metricsMethod(request.method), kind: "call", outcome: .malformed, seconds: nil)
            return
        }
        if let id = request.uniqueID, !recentIDs.withLock({ $0.insert(id) }) {
            logger.warning("dropped duplicate message", metadata: ["unique_id": "\(id)", "method": "\(request.method)"])
            worker.ack(delivery)
            metrics.rpcDuplicate()
            return
        }
        var meta: Logger.Metadata = ["method": "\(request.method)"]
        if let rid = request.requestID { meta["request_id"] = "\(rid)" }
        if let uuid = Self.instanceUUID(request.args) { meta["instance_uuid"] = "\(uuid)" }

        if request.isCall { worker.ack(delivery) }
        let worker = self.worker
        let acknowledger = request.isCall ? DeliveryAcknowledger.none : DeliveryAcknowledger { worker.ack(delivery) }
        let monitor = startCallMonitor(request)
        let outcome: Result<JSONValue, RemoteFailure>
        var requeueAfter: Double?
        let version = request.version ?? "1.0"
        if request.namespace != nil || !OsloMessage.isCompatible(requested: version, served: endpoint.apiVersion) {
            outcome = .failure(.unsupportedVersion(version, method: request.method))
        } else if !endpoint.supports(method: request.method) {
            outcome = .failure(.noSuchMethod(request.method))
        } else {
            do {
                let endpoint = self.endpoint
                outcome = .success(try await RPCRequestContext.$metadata.withValue(meta) {
                    try await endpoint.handle(request, delivery: acknowledger)
                })
            } catch let e as RemoteFailureConvertible {
                outcome = .failure(e.remoteFailure)
                requeueAfter = e.requeueAfter
            } catch {
                outcome = .failure(RemoteFailure(className: "ComputeAgentError", module: "compute_agent.exception",
                                                 message: "\(error)"))
            }
        }
        monitor?.cancel()
        if request.isCall, let id = request.messageID, let q = request.replyQueue {
            var body: [UInt8]
            switch outcome {
            case .success(let v): body = OsloMessage.replyBody(result: v, failure: nil, ending: true, messageID: id)
            case .failure(let f): body = OsloMessage.replyBody(result: .null, failure: f, ending: true, messageID: id)
            }
            if body.count > options.maxReplyBytes {
                let f = RemoteFailure(className: "ReplyTooLarge", module: "compute_agent.exception",
                                      message: "the reply to \(request.method) is \(body.count) bytes, over max_reply_bytes (\(options.maxReplyBytes))")
                logger.error("\(f.message): sent an error reply instead", metadata: meta)
                body = OsloMessage.replyBody(result: .null, failure: f, ending: true, messageID: id)
            }
            sendReply(body, to: q, uniqueID: request.uniqueID, meta: meta)
        } else if let delay = requeueAfter {
            // Not recorded, so not accepted: the cast stays unacknowledged and goes back to
            // the broker after `delay`; its redelivery must run, so its id is forgotten.
            if let id = request.uniqueID { forgetUniqueID(id) }
            logger.warning("cast not recorded: handed back to the broker in \(delay) s", metadata: meta)
            let worker = self.worker
            Task {
                try? await Task.sleep(for: .milliseconds(Int(delay * 1000)))
                worker.reject(delivery, requeue: true)
            }
        } else {
            acknowledger.acknowledge()
        }
        let seconds = monotonicSeconds() - started
        meta["duration_ms"] = "\(Self.millis(seconds))"
        meta["kind"] = request.isCall ? "call" : "cast"
        if metrics.isEnabled {
            let result: AgentMetrics.RPCOutcome
            switch outcome {
            case .success: result = .ok
            case .failure(let f): result = Self.refusalClasses.contains(f.className) ? .refused : .error
            }
            metrics.rpcMessage(method: metricsMethod(request.method), kind: request.isCall ? "call" : "cast",
                               outcome: result, seconds: seconds)
        }
        switch outcome {
        case .success:
            logger.log(level: endpoint.isReadOnly(method: request.method) ? .debug : .info, "rpc handled", metadata: meta)
        case .failure(let f):
            meta["error"] = "\(f.className)"
            logger.warning("rpc failed: \(f.message)", metadata: meta)
        }
    }

    /// Failures that mean "not in this state", not "went wrong" (the metrics' `refused`).
    static let refusalClasses: Set<String> = ["InstanceInvalidState", "InstanceIsLocked"]

    /// The method as a metrics label: only the API's own names, so a caller cannot grow
    /// the label set.
    private func metricsMethod(_ method: String) -> String { endpoint.supports(method: method) ? method : "unknown" }

    /// Hands a reply to the connection thread without waiting for it (this task does not pay
    /// for the hop back). If it cannot be sent (the connection broke), the call's unique id
    /// is forgotten: the broker redelivers the call, and the redelivery must be answered,
    /// not dropped as a duplicate.
    private func sendReply(_ body: [UInt8], to queue: String, uniqueID: String?, meta: Logger.Metadata) {
        let log = logger
        let recent = RecentIDsBox(self)
        worker.submit({ conn throws(AMQPError) in
            try conn.publish(exchange: "", routingKey: queue, body: body, mandatory: true, expiration: nil)
        }, onFailure: { error in
            log.error("could not send the reply: \(error)", metadata: meta)
            if let uniqueID { recent.forget(uniqueID) }
        })
    }

    fileprivate func forgetUniqueID(_ id: String) { recentIDs.withLock { $0.remove(id) } }

    /// Why `queue` cannot be replied to (the broker takes routing keys up to 255 bytes),
    /// or nil.
    static func replyQueueProblem(_ queue: String) -> String? {
        if queue.isEmpty { return "is empty" }
        if queue.utf8.count > 255 { return "is \(queue.utf8.count) bytes, over AMQP's 255" }
        return nil
    }

    /// Sends `ending: false` replies every half of the caller's `_timeout` while a call
    /// runs, as oslo.messaging's server does for call-monitor clients.
    private func startCallMonitor(_ request: RPCRequest) -> Task<Void, Never>? {
        guard request.isCall, let t = request.callMonitorTimeout, t >= 2,
              let id = request.messageID, let q = request.replyQueue else { return nil }
        let worker = self.worker
        return Task {
            while true {
                do { try await Task.sleep(for: .milliseconds(Int(t * 500))) } catch { return }
                let body = OsloMessage.replyBody(result: .null, failure: nil, ending: false, messageID: id)
                _ = try? await worker.perform { conn throws(AMQPError) in
                    try conn.publish(exchange: "", routingKey: q, body: body, mandatory: true, expiration: nil)
                }
            }
        }
    }

    static func instanceUUID(_ args: [String: JSONValue]) -> String? {
        args["instance_uuid"]?.stringValue ?? args["instance"]?["uuid"]?.stringValue ?? args["uuid"]?.stringValue
    }

    static func millis(_ seconds: Double) -> String {
        let ms = (seconds * 10_000).rounded() / 10
        return "\(ms)"
    }
}

/// What an agent does when another already consumes its host queue.
public enum HostConflictPolicy: String, Sendable {
    /// Retry a few times (the other may be our own predecessor the broker has not yet let
    /// go), then give up: the agent exits non-zero.
    case refuse
    /// Log it loudly and consume anyway.
    case warn
}

/// Whether a server has connected once (read on its connection thread).
private final class ConnectedFlag: Sendable {
    let value = Atomic<Bool>(false)
}

/// The last N message ids seen, for duplicate detection.
struct RecentIDs {
    private var ring: [String]
    private var set: Set<String> = []
    private var next = 0

    init(capacity: Int) { ring = Array(repeating: "", count: capacity) }

    /// Records `id`; false if it was already among the last N.
    mutating func insert(_ id: String) -> Bool {
        if set.contains(id) { return false }
        let old = ring[next]
        if !old.isEmpty { set.remove(old) }
        ring[next] = id
        set.insert(id)
        next = (next + 1) % ring.count
        return true
    }

    /// Forgets `id` (its ring slot is reused in turn).
    mutating func remove(_ id: String) { set.remove(id) }
}

/// Lets a reply's failure callback (on the connection thread) reach the server weakly.
private struct RecentIDsBox: Sendable {
    weak var server: RPCServer?
    init(_ server: RPCServer) { self.server = server }
    func forget(_ id: String) { server?.forgetUniqueID(id) }
}

/// One delivery on its way to a handler.
private struct Admitted: Sendable {
    let delivery: AMQPDelivery
    let parsed: Result<RPCRequest, MalformedMessage>
    let ticket: KeyedFIFOLock.Ticket?
}

/// Hands one delivery to its handler task exactly once.
private final class AdmittedBox: Sendable {
    private let item: Mutex<Admitted?>
    init(_ item: Admitted) { self.item = Mutex(item) }
    func take() -> Admitted? {
        item.withLock { i in
            defer { i = nil }
            return i
        }
    }
}

/// How many handlers run, which deliveries wait for a slot, and who waits for the end.
private struct DispatchState {
    var accepting = true
    var running = 0
    /// When a handler last finished (or the first message started waiting).
    var lastFinish = monotonicSeconds()
    var pending: [Admitted] = []
    var cancelled: CheckedContinuation<Void, Never>?
    var drained: CheckedContinuation<Void, Never>?
}

/// Lets the connection thread's delivery callback reach the server, which does not exist
/// yet when the callback is made.
private final class DeliveryRouter: @unchecked Sendable {
    // Safe: written once at the end of RPCServer.init, before `start()` starts the thread
    // that reads it.
    weak var server: RPCServer?
}

/// What the RPC request being handled adds to every log entry made on its behalf: the
/// server sets it around each handler, so a log line deep in the compute manager still
/// carries `request_id` and `method` (journald: `REQUEST_ID`, `RPC_METHOD`).
public enum RPCRequestContext {
    @TaskLocal public static var metadata: Logger.Metadata = [:]

    /// For `LoggingSystem.bootstrap(_:metadataProvider:)`.
    public static let metadataProvider = Logger.MetadataProvider { metadata }
}
