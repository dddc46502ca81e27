import CRabbitMQ
import RabbitMQShim
import AgentSupport

#if canImport(Glibc)
import Glibc
#endif

/// Why an AMQP operation failed. The text never contains a password.
public struct AMQPError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// A refusal that a few retries may outlast but that is hopeless if it persists (another
    /// agent consuming this host's queue). The worker gives up after several in a row.
    public let isPersistentRefusal: Bool
    public init(_ message: String, persistentRefusal: Bool = false) {
        self.message = message
        self.isPersistentRefusal = persistentRefusal
    }
    public var description: String { message }

    /// A refusal that retrying cannot fix: the broker closed the channel with 406
    /// PRECONDITION_FAILED (a declare that conflicts with an existing exchange or queue,
    /// e.g. `control_exchange = amq.direct` or a durability mismatch), or refused access
    /// (403) or the virtual host (530).
    /// A refused login is not hopeless by itself (a password being rotated): the worker
    /// gives up after several in a row.
    public var isHopeless: Bool {
        if isLoginRefusal { return false }
        return ["server closed channel: 406", "server closed channel: 403", "server closed connection: 403",
         "server closed connection: 530"].contains { message.contains($0) }
    }

    /// Whether quick retries may follow this failure (a refused connect, a lost
    /// connection): not after a refused login or a failed TLS handshake, which would cost
    /// the broker a handshake every few hundred milliseconds and will not pass by itself.
    public var allowsQuickRetry: Bool { !isLoginRefusal && !message.contains("TLS") }

    /// The broker refused the login (wrong user or password, or no access to the vhost).
    public var isLoginRefusal: Bool {
        isPersistentRefusal || message.contains("login refused") || message.contains("login: server closed connection: 403")
    }
}

/// One message taken from a queue.
public struct AMQPDelivery: Sendable {
    public var body: [UInt8]
    public var deliveryTag: UInt64
    public var exchange: String
    public var routingKey: String
    public var consumerTag: String
    public var redelivered: Bool
    /// Which connection (reconnects count up) delivered it: acks for an older generation
    /// are meaningless and dropped.
    public var generation: UInt64
}

/// TLS to the broker, with oslo.messaging's `[oslo_messaging_rabbit] ssl_*` meanings: the
/// broker's certificate chain is always verified (against `caFile`, else the system's CA
/// bundle) and so is its host name unless `verifyHostname` is off; `certFile`/`keyFile`
/// give a client certificate for mutual TLS.
public struct TLSOptions: Sendable, Equatable {
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?
    public var verifyHostname = true
    /// nil = negotiate (TLS 1.2 or newer); otherwise exactly this version.
    public var version: TLSVersion?

    public enum TLSVersion: String, Sendable { case tls1_2 = "TLSv1_2", tls1_3 = "TLSv1_3" }

    public static let systemCABundle = "/etc/ssl/certs/ca-certificates.crt"

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
    }
}

/// A librabbitmq connection with one channel (number 1).
///
/// Not thread-safe, like librabbitmq itself: it is created, used and destroyed by the one
/// thread of its `AMQPWorker`. It is deliberately not `Sendable`.
public final class AMQPConnection {
    let state: amqp_connection_state_t
    let channel: amqp_channel_t = 1
    private var open = false
    private var declaredExchanges: Set<String> = []
    private var declaredQueues: Set<String> = []
    /// The first error this connection hit. In AMQP a failed declare or publish closes the
    /// channel, so after any error the connection is replaced by a new one.
    private(set) var lastError: AMQPError?
    var isHealthy: Bool { lastError == nil }

    init(broker: TransportURL.Broker, virtualHost: String, heartbeat: Int, connectTimeout: Double,
         connectionName: String, tls: TLSOptions? = nil) throws(AMQPError)
    {
        guard let conn = amqp_new_connection() else { throw AMQPError("out of memory creating an AMQP connection") }
        // From here on every stored property is initialised, so a throw below still runs
        // deinit, which destroys `conn`: destroying it here as well would free it twice.
        state = conn
        let socket: OpaquePointer
        if let tls {
            socket = try Self.tlsSocket(conn, tls)
        } else {
            guard let s = amqp_tcp_socket_new(conn) else { throw AMQPError("cannot create a TCP socket") }
            socket = s
        }
        var tv = timeval(tv_sec: Int(connectTimeout), tv_usec: Int((connectTimeout - Double(Int(connectTimeout))) * 1e6))
        // The handshake (login) is bounded like the TCP connect, so a broker that accepts
        // the socket but never answers cannot hold the connection thread.
        _ = amqp_set_handshake_timeout(conn, &tv)
        let rc = amqp_socket_open_noblock(socket, broker.host, Int32(broker.port), &tv)
        if rc != AMQP_STATUS_OK.rawValue {
            let what = String(cString: amqp_error_string2(rc))
            if let tls {
                let ca = tls.caFile ?? TLSOptions.systemCABundle
                switch rc {
                case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue:
                    throw AMQPError("TLS to \(broker.host):\(broker.port): certificate verify failed: the broker's certificate is not signed by a CA in \(ca)")
                case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
                    throw AMQPError("TLS to \(broker.host):\(broker.port): certificate verify failed: the broker's certificate does not name host '\(broker.host)'")
                case AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue, AMQP_STATUS_SSL_ERROR.rawValue:
                    throw AMQPError("TLS handshake with \(broker.host):\(broker.port) failed (\(what)): is it a TLS port, does it accept our certificate, is it signed by a CA in \(ca)?")
                default: break
                }
            }
            throw AMQPError("cannot connect to \(broker.host):\(broker.port): \(what)")
        }
        var err = [CChar](repeating: 0, count: 512)
        if ca_amqp_login(conn, virtualHost, 2047, 131072, Int32(heartbeat), broker.user, broker.password,
                         connectionName, &err, err.count) != 0
        {
            let why = String(nulTerminated: err)
            if let tls, why.contains("SSL error") {
                // With TLS 1.3 the broker refuses a client certificate after the handshake.
                let cert = tls.certFile.map { "the client certificate \($0)" } ?? "a connection without a client certificate"
                throw AMQPError("\(broker.host):\(broker.port): TLS session ended by the broker during login (\(why)): does it accept \(cert)?")
            }
            throw AMQPError("\(broker.host):\(broker.port): \(why)")
        }
        amqp_channel_open(conn, channel)
        let reply = amqp_get_rpc_reply(conn)
        if reply.reply_type != AMQP_RESPONSE_NORMAL {
            ca_amqp_describe_reply(reply, "channel.open", &err, err.count)
            throw AMQPError(String(nulTerminated: err))
        }
        open = true
    }

    /// A TLS socket set up as `tls` says. File errors name the option and path, never the
    /// contents.
    private static func tlsSocket(_ conn: amqp_connection_state_t, _ tls: TLSOptions) throws(AMQPError) -> OpaquePointer {
        guard let s = amqp_ssl_socket_new(conn) else { throw AMQPError("cannot create a TLS socket") }
        let ca = tls.caFile ?? TLSOptions.systemCABundle
        if amqp_ssl_socket_set_cacert(s, ca) != AMQP_STATUS_OK.rawValue {
            throw AMQPError("ssl_ca_file \(ca): cannot read a PEM CA certificate from it")
        }
        if let cert = tls.certFile {
            guard let key = tls.keyFile else { throw AMQPError("ssl_cert_file is set but ssl_key_file is not") }
            if amqp_ssl_socket_set_key(s, cert, key) != AMQP_STATUS_OK.rawValue {
                throw AMQPError("ssl_cert_file \(cert) / ssl_key_file \(key): cannot load the client certificate and key (PEM, matching)")
            }
        }
        amqp_ssl_socket_set_verify_peer(s, 1)
        amqp_ssl_socket_set_verify_hostname(s, tls.verifyHostname ? 1 : 0)
        switch tls.version {
        case nil: _ = amqp_ssl_socket_set_ssl_versions(s, AMQP_TLSv1_2, AMQP_TLSvLATEST)
        case .tls1_2?: _ = amqp_ssl_socket_set_ssl_versions(s, AMQP_TLSv1_2, AMQP_TLSv1_2)
        case .tls1_3?: _ = amqp_ssl_socket_set_ssl_versions(s, AMQP_TLSvLATEST, AMQP_TLSvLATEST)
        }
        return s
    }

    deinit {
        if open {
            amqp_channel_close(state, channel, AMQP_REPLY_SUCCESS)
            amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        }
        amqp_destroy_connection(state)
    }

    private func failed(_ e: AMQPError) -> AMQPError {
        if lastError == nil { lastError = e }
        return e
    }

    /// Marks the connection dead so deinit does not try a polite close on a broken socket.
    func markBroken() { open = false }

    private func run(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws(AMQPError) {
        var err = [CChar](repeating: 0, count: 512)
        let rc = err.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
        if rc != 0 { throw failed(AMQPError(String(nulTerminated: err))) }
    }

    public func declareExchange(_ name: String, type: String, durable: Bool, autoDelete: Bool) throws(AMQPError) {
        try run { ca_amqp_exchange_declare(state, channel, name, type, durable ? 1 : 0, autoDelete ? 1 : 0, $0, $1) }
        declaredExchanges.insert(name)
    }

    /// Declares a queue; returns how many consumers the broker already has on it.
    @discardableResult
    public func declareQueue(_ name: String, durable: Bool, exclusive: Bool = false, autoDelete: Bool,
                             expiresMs: Int64 = 0, quorum: Bool = false) throws(AMQPError) -> Int
    {
        var consumers: UInt32 = 0
        try run { ca_amqp_queue_declare(state, channel, name, durable ? 1 : 0, exclusive ? 1 : 0, autoDelete ? 1 : 0, expiresMs, quorum ? 1 : 0, &consumers, $0, $1) }
        return Int(consumers)
    }

    public func bindQueue(_ queue: String, exchange: String, routingKey: String) throws(AMQPError) {
        try run { ca_amqp_queue_bind(state, channel, queue, exchange, routingKey, $0, $1) }
    }

    public func deleteQueue(_ queue: String) throws(AMQPError) {
        try run { ca_amqp_queue_delete(state, channel, queue, $0, $1) }
    }

    public func qos(prefetch: Int) throws(AMQPError) {
        try run { ca_amqp_basic_qos(state, channel, UInt16(clamping: prefetch), $0, $1) }
    }

    public func consume(queue: String, consumerTag: String) throws(AMQPError) {
        try run { ca_amqp_basic_consume(state, channel, queue, consumerTag, $0, $1) }
    }

    /// Publishes a JSON body with oslo.messaging's properties.
    public func publish(exchange: String, routingKey: String, body: [UInt8], mandatory: Bool,
                        expiration: String?) throws(AMQPError)
    {
        if confirming { publishSeq += 1 }
        try run { err, len in
            body.withUnsafeBytes { b in
                if let expiration {
                    return ca_amqp_publish_json(state, channel, exchange, routingKey, mandatory ? 1 : 0, b.baseAddress, b.count, expiration, err, len)
                }
                return ca_amqp_publish_json(state, channel, exchange, routingKey, mandatory ? 1 : 0, b.baseAddress, b.count, nil, err, len)
            }
        }
    }

    /// Publishes counted since `enableConfirms()` (the broker numbers its confirms so).
    private var publishSeq: UInt64 = 0
    private var confirming = false

    /// Puts the channel in publisher-confirm mode: from now on every publish is numbered
    /// and `publishConfirmed` can wait for the broker's ack of its own.
    public func enableConfirms() throws(AMQPError) {
        try run { ca_amqp_confirm_select(state, channel, $0, $1) }
        confirming = true
        publishSeq = 0
    }

    /// Publishes and waits (on this connection's thread) until the broker confirms that it
    /// has taken the message (routed it to its queues), at most `timeout` seconds.
    public func publishConfirmed(exchange: String, routingKey: String, body: [UInt8], timeout: Double) throws(AMQPError) {
        precondition(confirming, "publishConfirmed needs enableConfirms() first")
        try publish(exchange: exchange, routingKey: routingKey, body: body, mandatory: false, expiration: nil)
        let seq = publishSeq
        let deadline = monotonicSeconds() + timeout
        // Waits for the broker's basic.ack of publish number `seq` (1-based, counted per
        // channel since confirm.select), skipping confirms of earlier publishes. Deliveries
        // that arrive meanwhile (a call's reply on a connection that also publishes with
        // confirms) are kept for `readNonBlocking`, never dropped: a dropped reply would leave
        // its caller waiting out its timeout.
        while true {
            let left = deadline - monotonicSeconds()
            // A missing confirm leaves the channel's numbering unknown: reconnect.
            guard left > 0 else { throw failed(AMQPError("the broker did not confirm the publish within \(Int(timeout * 1000)) ms")) }
            var envelope = amqp_envelope_t()
            var tv = timeval(tv_sec: Int(left), tv_usec: Int((left - left.rounded(.down)) * 1_000_000))
            let reply = amqp_consume_message(state, &envelope, &tv, 0)
            if reply.reply_type == AMQP_RESPONSE_NORMAL {
                stashed.append(Self.delivery(envelope, generation: 0))
                amqp_destroy_envelope(&envelope)
                continue
            }
            if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_TIMEOUT.rawValue { continue }
            guard reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_UNEXPECTED_STATE.rawValue else {
                var err = [CChar](repeating: 0, count: 512)
                ca_amqp_describe_reply(reply, "waiting for the publish confirm", &err, err.count)
                markBroken()
                throw failed(AMQPError(String(nulTerminated: err)))
            }
            var frame = amqp_frame_t()
            let rc = amqp_simple_wait_frame(state, &frame)
            if rc != AMQP_STATUS_OK.rawValue {
                markBroken()
                throw failed(AMQPError("waiting for the publish confirm: \(String(cString: amqp_error_string2(rc)))"))
            }
            guard frame.frame_type == ca_amqp_frame_method(), frame.channel == channel else { continue }
            let id = frame.payload.method.id
            if id == ca_amqp_method_basic_ack() {
                let m = frame.payload.method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
                if m.delivery_tag == seq || (m.multiple != 0 && m.delivery_tag >= seq) { return }
            } else if id == ca_amqp_method_basic_nack() {
                let m = frame.payload.method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
                if m.delivery_tag == seq || (m.multiple != 0 && m.delivery_tag >= seq) {
                    throw failed(AMQPError("the broker refused (nacked) the publish"))
                }
            } else if id == ca_amqp_method_basic_return() {
                var message = amqp_message_t()
                let r = amqp_read_message(state, frame.channel, &message, 0)
                if r.reply_type == AMQP_RESPONSE_NORMAL { amqp_destroy_message(&message) }
            } else if id == ca_amqp_method_channel_close() {
                let m = frame.payload.method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                markBroken()
                throw failed(AMQPError("waiting for the publish confirm: server closed channel: \(m.reply_code) \(Self.string(m.reply_text))"))
            } else if id == ca_amqp_method_connection_close() {
                let m = frame.payload.method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                markBroken()
                throw failed(AMQPError("waiting for the publish confirm: server closed connection: \(m.reply_code) \(Self.string(m.reply_text))"))
            }
        }
    }

    /// Deliveries read while `publishConfirmed` waited, oldest first; `readNonBlocking`
    /// hands them out before anything newer. (Their tags are above every delivery handed
    /// out before, so no multiple ack of earlier ones can cover them.)
    private var stashed: [AMQPDelivery] = []

    /// Declares `name` with the given flags unless this connection already did.
    public func ensureExchange(_ name: String, type: String, durable: Bool, autoDelete: Bool) throws(AMQPError) {
        if name.isEmpty || declaredExchanges.contains(name) { return }
        try declareExchange(name, type: type, durable: durable, autoDelete: autoDelete)
    }

    /// Declares `queue` and binds it to `exchange` by its own name unless this connection
    /// already did (oslo's notifier creates its default queue this way, so notifications
    /// wait for a listener that starts later). Its durability is the exchange's, and with
    /// quorum queues it is a quorum queue, as oslo declares it.
    public func ensureBoundQueue(_ queue: String, exchange: String, durable: Bool = false, quorum: Bool = false) throws(AMQPError) {
        if declaredQueues.contains(queue) { return }
        try declareQueue(queue, durable: durable, autoDelete: false, quorum: quorum)
        try bindQueue(queue, exchange: exchange, routingKey: queue)
        declaredQueues.insert(queue)
    }

    /// `multiple` also acks every earlier unacked delivery of the channel.
    func ack(_ tag: UInt64, multiple: Bool = false) throws(AMQPError) {
        let rc = amqp_basic_ack(state, channel, tag, multiple ? 1 : 0)
        if rc != 0 { throw failed(AMQPError("basic.ack: \(String(cString: amqp_error_string2(rc)))")) }
    }

    func reject(_ tag: UInt64, requeue: Bool) throws(AMQPError) {
        let rc = amqp_basic_reject(state, channel, tag, requeue ? 1 : 0)
        if rc != 0 { throw failed(AMQPError("basic.reject: \(String(cString: amqp_error_string2(rc)))")) }
    }

    var socketFD: Int32 { amqp_get_sockfd(state) }
    var hasBufferedInput: Bool {
        !stashed.isEmpty || amqp_data_in_buffer(state) != 0 || amqp_frames_enqueued(state) != 0
    }

    enum ReadResult {
        case delivery(AMQPDelivery)
        case returned(routingKey: String, replyText: String)
        case nothing
    }

    /// Reads one message without waiting (beyond finishing a frame already under way).
    /// Also lets librabbitmq send and check heartbeats.
    func readNonBlocking(generation: UInt64) throws(AMQPError) -> ReadResult {
        if !stashed.isEmpty {
            var d = stashed.removeFirst()
            d.generation = generation
            return .delivery(d)
        }
        amqp_maybe_release_buffers(state)
        var envelope = amqp_envelope_t()
        var tv = timeval(tv_sec: 0, tv_usec: 0)
        let reply = amqp_consume_message(state, &envelope, &tv, 0)
        if reply.reply_type == AMQP_RESPONSE_NORMAL {
            defer { amqp_destroy_envelope(&envelope) }
            return .delivery(Self.delivery(envelope, generation: generation))
        }
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            if reply.library_error == AMQP_STATUS_TIMEOUT.rawValue { return .nothing }
            if reply.library_error == AMQP_STATUS_UNEXPECTED_STATE.rawValue {
                return try readOtherFrame()
            }
        }
        var err = [CChar](repeating: 0, count: 512)
        ca_amqp_describe_reply(reply, "consume", &err, err.count)
        throw AMQPError(String(nulTerminated: err))
    }

    /// A frame other than basic.deliver arrived: a returned (unroutable mandatory) message,
    /// a publisher ack, or the broker closing the channel or connection.
    private func readOtherFrame() throws(AMQPError) -> ReadResult {
        var frame = amqp_frame_t()
        let rc = amqp_simple_wait_frame(state, &frame)
        if rc != AMQP_STATUS_OK.rawValue { throw AMQPError("reading frame: \(String(cString: amqp_error_string2(rc)))") }
        guard frame.frame_type == ca_amqp_frame_method() else { return .nothing }
        let id = frame.payload.method.id
        if id == ca_amqp_method_basic_return() {
            let ret = frame.payload.method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let key = Self.string(ret.routing_key)
            let text = Self.string(ret.reply_text)
            var message = amqp_message_t()
            let r = amqp_read_message(state, frame.channel, &message, 0)
            if r.reply_type == AMQP_RESPONSE_NORMAL { amqp_destroy_message(&message) }
            return .returned(routingKey: key, replyText: text)
        }
        if id == ca_amqp_method_basic_ack() { return .nothing }
        if id == ca_amqp_method_channel_close() {
            let m = frame.payload.method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            markBroken()
            throw AMQPError("broker closed the channel: \(m.reply_code) \(Self.string(m.reply_text))")
        }
        if id == ca_amqp_method_connection_close() {
            let m = frame.payload.method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            markBroken()
            throw AMQPError("broker closed the connection: \(m.reply_code) \(Self.string(m.reply_text))")
        }
        return .nothing
    }

    /// A delivery copied out of librabbitmq's envelope (whose memory the next read reuses).
    private static func delivery(_ envelope: amqp_envelope_t, generation: UInt64) -> AMQPDelivery {
        let body: [UInt8]
        if envelope.message.body.len > 0, let p = envelope.message.body.bytes {
            body = Array(UnsafeRawBufferPointer(start: p, count: envelope.message.body.len))
        } else {
            body = []
        }
        return AMQPDelivery(
            body: body, deliveryTag: envelope.delivery_tag,
            exchange: Self.string(envelope.exchange), routingKey: Self.string(envelope.routing_key),
            consumerTag: Self.string(envelope.consumer_tag), redelivered: envelope.redelivered != 0,
            generation: generation)
    }

    static func string(_ b: amqp_bytes_t) -> String {
        guard b.len > 0, let p = b.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: p, count: b.len), as: UTF8.self)
    }
}
