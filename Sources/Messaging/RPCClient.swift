import AgentSupport
import Synchronization

/// The caller's side of oslo.messaging RPC: casts, fanout casts and calls, published the
/// way oslo.messaging's `RPCClient` publishes them, with replies read from a private
/// `reply_<hex>` queue. `computectl` uses it to drive agents; the agent uses it (without a
/// reply queue) for its heartbeats and capability updates.
public final class RPCClient: Sendable {
    /// A call got no reply in time (oslo.messaging's `MessagingTimeout`).
    public struct Timeout: Error, CustomStringConvertible, Sendable {
        public let method: String
        public let seconds: Double
        public var description: String { "timed out after \(seconds) s waiting for a reply to \(method)" }
    }

    public struct Options: Sendable {
        public var url: TransportURL
        public var exchange: String
        /// Declare a reply queue and accept `call`. Off for publish-only clients.
        public var acceptsReplies: Bool
        /// Heartbeat, TLS and reconnect settings of the connection.
        public var connection = AMQPWorker.ConnectionSettings()
        public var transientQueuesTTL: Int = 1800
        /// oslo's `amqp_durable_queues`: the control exchange and the notification queues
        /// are declared durable. Must match what every other service on the vhost declares.
        public var durableQueues = false
        /// oslo's `rabbit_quorum_queue`: implies durable, and notification queues get
        /// `x-queue-type: quorum`.
        public var quorumQueues = false
        /// Publisher confirms (as oslo's send connections use): every cast, fanout cast and
        /// notification returns only once the broker has taken it, so a return means the
        /// heartbeat really reached the broker.
        public var confirmPublishes = false
        public var confirmTimeout: Double = 10
        public var connectionName: String
        public var threadName: String

        public init(url: TransportURL, exchange: String, acceptsReplies: Bool, connectionName: String,
                    threadName: String = "amqp-client")
        {
            self.url = url
            self.exchange = exchange
            self.acceptsReplies = acceptsReplies
            self.connectionName = connectionName
            self.threadName = threadName
        }

        /// The durability oslo.messaging gives the control exchange and topic queues.
        public var durable: Bool { durableQueues || quorumQueues }
    }

    public let options: Options
    public let replyQueue: String
    private let worker: AMQPWorker
    private let pending: PendingCalls

    /// - Parameters:
    ///   - onUnreadableReply: hears why a message on the reply queue could not be read (on
    ///     the connection thread; keep it short). The call it answers, when its `_msg_id`
    ///     can still be found in the bytes, fails at once with that reason instead of
    ///     waiting out its timeout.
    public init(options: Options, onConnectionEvent: @escaping @Sendable (AMQPWorker.Event) -> Void = { _ in },
                onUnreadableReply: @escaping @Sendable (String) -> Void = { _ in })
    {
        self.options = options
        let replyQueue = "reply_\(randomHex())"
        self.replyQueue = replyQueue
        let pending = PendingCalls()
        self.pending = pending
        var wo = AMQPWorker.Options(url: options.url, connectionName: options.connectionName, threadName: options.threadName)
        wo.settings = options.connection
        let box = WorkerBox()
        let w = AMQPWorker(
            options: wo,
            setup: { conn throws(AMQPError) in
                try conn.declareExchange(options.exchange, type: "topic", durable: options.durable, autoDelete: false)
                if options.confirmPublishes { try conn.enableConfirms() }
                if options.acceptsReplies {
                    try conn.declareQueue(replyQueue, durable: false, autoDelete: false,
                                          expiresMs: Int64(options.transientQueuesTTL) * 1000)
                    try conn.consume(queue: replyQueue, consumerTag: "1")
                }
            },
            onDelivery: { delivery in
                box.worker?.ack(delivery)
                let m: [String: JSONValue]
                do throws(MalformedMessage) { m = try OsloMessage.unwrap(body: delivery.body) } catch {
                    let id = Self.messageID(in: delivery.body)
                    let why = "a reply \(id.map { "to call \($0) " } ?? "")could not be read: \(error.reason)"
                    onUnreadableReply(why)
                    if let id {
                        pending.complete(id, .failure(RemoteFailure(className: "UnreadableReply", module: "compute_agent.messaging",
                                                                    message: why)))
                    }
                    return
                }
                guard let id = m["_msg_id"]?.stringValue else {
                    onUnreadableReply("a reply without a _msg_id was dropped (\(delivery.body.count) bytes)")
                    return
                }
                // oslo's older servers send the result, then an empty `ending` message.
                guard m["ending"]?.boolValue ?? true else { return }
                let outcome: Result<JSONValue, RemoteFailure>
                if let f = m["failure"]?.stringValue {
                    outcome = .failure(RemoteFailure(serialized: f))
                } else {
                    outcome = .success(m["result"] ?? .null)
                }
                pending.complete(id, outcome)
            },
            onEvent: onConnectionEvent)
        box.worker = w
        self.worker = w
    }

    /// Connects; returns once the reply queue (if any) is consumed.
    public func start() async {
        worker.start()
        await worker.waitUntilConnected()
    }

    public func stop() async {
        await worker.stop()
        pending.stop()
    }

    /// Whether the client's connection is up.
    public var isConnected: Bool { worker.isConnected }

    /// Casts `method` (of the target's `namespace`, if any) to `topic` (or
    /// `topic.server`); nothing comes back.
    public func cast(topic: String, server: String? = nil, method: String, args: [String: JSONValue],
                     namespace: String? = nil, version: String? = nil, context: [String: JSONValue] = [:]) async throws(AMQPError)
    {
        let r = RPCRequest(method: method, args: args, namespace: namespace, version: version, context: context)
        try await publish(exchange: options.exchange, type: "topic", routingKey: server.map { "\(topic).\($0)" } ?? topic,
                          body: OsloMessage.requestBody(r), expiration: nil)
    }

    /// Casts `method` to every server of `topic` through the `<topic>_fanout` exchange.
    public func fanoutCast(topic: String, method: String, args: [String: JSONValue], version: String? = nil,
                           context: [String: JSONValue] = [:]) async throws(AMQPError)
    {
        let r = RPCRequest(method: method, args: args, version: version, context: context)
        try await publish(exchange: "\(topic)_fanout", type: "fanout", routingKey: "", body: OsloMessage.requestBody(r),
                          expiration: nil)
    }

    /// Calls `method` and waits for its reply. Throws `RemoteFailure` for a remote
    /// exception, `Timeout` when no reply comes in `timeout` seconds, `AMQPError` when it
    /// cannot be sent.
    public func call(topic: String, server: String? = nil, method: String, args: [String: JSONValue],
                     version: String? = nil, timeout: Double = 60, context: [String: JSONValue] = [:]) async throws -> JSONValue
    {
        precondition(options.acceptsReplies, "this RPCClient was created without a reply queue")
        let id = randomHex()
        let r = RPCRequest(method: method, args: args, version: version, messageID: id, replyQueue: replyQueue,
                           context: context)
        let body = OsloMessage.requestBody(r)
        let key = server.map { "\(topic).\($0)" } ?? topic
        let pending = self.pending
        let exchange = options.exchange, durable = options.durable
        let deadline = monotonicSeconds() + timeout
        let expiration = String(Int(timeout * 1000))
        // A cancelled caller (a shutdown) stops waiting at once; a late reply is dropped.
        let cancelled = RemoteFailure(className: "Cancelled", module: "compute_agent.messaging.cancel", message: "cancelled")
        let outcome: Result<JSONValue, RemoteFailure> = await withTaskCancellationHandler {
            await withCheckedContinuation { c in
                pending.register(id, deadline: deadline, c)
                if Task.isCancelled {
                    pending.complete(id, .failure(cancelled))
                    return
                }
                // Straight to the connection thread: the reply wakes this task, nothing else.
                worker.submit({ conn throws(AMQPError) in
                    try conn.ensureExchange(exchange, type: "topic", durable: durable, autoDelete: false)
                    try conn.publish(exchange: exchange, routingKey: key, body: body, mandatory: false, expiration: expiration)
                }, onFailure: { error in
                    pending.complete(id, .failure(RemoteFailure(className: "AMQPError", module: "compute_agent.messaging",
                                                                message: error.message)))
                })
            }
        } onCancel: {
            pending.complete(id, .failure(cancelled))
        }
        switch outcome {
        case .success(let v): return v
        case .failure(let f) where f == cancelled: throw CancellationError()
        case .failure(let f) where f == PendingCalls.timedOut:
            throw Timeout(method: method, seconds: timeout)
        case .failure(let f) where f.module == "compute_agent.messaging":
            throw AMQPError(f.message)
        case .failure(let f): throw f
        }
    }

    /// Sends a notification the way oslo.messaging's `messagingv2` driver does: the 2.0
    /// envelope around {message_id, publisher_id, event_type, priority, payload,
    /// timestamp}, to `<topic>.<priority>` on the control exchange, whose queue of the
    /// same name it declares first.
    public func notify(topic: String = "notifications", priority: String, eventType: String, publisherID: String,
                       payload: JSONValue, context: [String: JSONValue] = [:]) async throws(AMQPError)
    {
        var pairs: [(String, JSONValue)] = [
            ("message_id", .string(randomUUID())), ("publisher_id", .string(publisherID)),
            ("event_type", .string(eventType)), ("priority", .string(priority.uppercased())),
            ("payload", payload), ("timestamp", .string(utcTimestamp())),
            ("_unique_id", .string(randomHex())),
        ]
        for k in context.keys.sorted() { pairs.append(("_context_" + k, context[k]!)) }
        let body = OsloMessage.envelope(inner: JSONValue.orderedObject(pairs))
        let exchange = options.exchange, key = "\(topic).\(priority.lowercased())"
        let durable = options.durable, quorum = options.quorumQueues
        let confirm = options.confirmPublishes ? options.confirmTimeout : nil
        try await worker.perform { conn throws(AMQPError) in
            try conn.ensureExchange(exchange, type: "topic", durable: durable, autoDelete: false)
            try conn.ensureBoundQueue(key, exchange: exchange, durable: durable, quorum: quorum)
            try Self.send(conn, exchange: exchange, routingKey: key, body: body, expiration: nil, confirm: confirm)
        }
    }

    private func publish(exchange: String, type: String, routingKey: String, body: [UInt8], expiration: String?) async throws(AMQPError) {
        // oslo: the control exchange follows amqp_durable_queues / rabbit_quorum_queue; a
        // fanout exchange is never durable and always auto-delete.
        let durable = type == "fanout" ? false : options.durable
        let confirm = options.confirmPublishes ? options.confirmTimeout : nil
        try await worker.perform { conn throws(AMQPError) in
            try conn.ensureExchange(exchange, type: type, durable: durable, autoDelete: type == "fanout")
            try Self.send(conn, exchange: exchange, routingKey: routingKey, body: body, expiration: expiration, confirm: confirm)
        }
    }

    /// A publish, confirmed by the broker within `confirm` seconds when that is set.
    private static func send(_ conn: AMQPConnection, exchange: String, routingKey: String, body: [UInt8],
                             expiration: String?, confirm: Double?) throws(AMQPError)
    {
        if let confirm, expiration == nil {
            try conn.publishConfirmed(exchange: exchange, routingKey: routingKey, body: body, timeout: confirm)
        } else {
            try conn.publish(exchange: exchange, routingKey: routingKey, body: body, mandatory: false, expiration: expiration)
        }
    }
}

extension RPCClient {
    /// The `_msg_id` of a reply whose JSON could not be parsed, found in its raw bytes
    /// (plain, or inside the envelope's escaped `oslo.message` string); nil if absent.
    static func messageID(in body: [UInt8]) -> String? {
        let key = Array("_msg_id".utf8)
        guard body.count > key.count else { return nil }
        var i = 0
        while i + key.count <= body.count {
            if body[i..<(i + key.count)].elementsEqual(key) {
                var j = i + key.count
                // The closing quote (maybe escaped), the colon, spaces, the opening quote.
                while j < body.count, [UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: ":"), UInt8(ascii: " ")].contains(body[j]) {
                    j += 1
                }
                var id: [UInt8] = []
                while j < body.count, id.count < 64, body[j].isHexOrDash { id.append(body[j]); j += 1 }
                if !id.isEmpty { return String(decoding: id, as: UTF8.self) }
            }
            i += 1
        }
        return nil
    }
}

private extension UInt8 {
    var isHexOrDash: Bool {
        (self >= 0x30 && self <= 0x39) || (self >= 0x61 && self <= 0x66) || (self >= 0x41 && self <= 0x46) || self == 0x2D
    }
}

/// Lets the worker's delivery callback reach the worker it belongs to (set once, right
/// after creation, before the worker starts).
private final class WorkerBox: @unchecked Sendable {
    // Safe: written once in RPCClient.init before `start()` launches the thread that reads it.
    var worker: AMQPWorker?
}
