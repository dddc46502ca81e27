import AgentSupport
import Logging
import Synchronization

/// Sends nova's legacy instance notifications (`compute.instance.<event>.start|end|error`)
/// in oslo.messaging's `messagingv2` format, in the order they were emitted, from its own
/// task: an action never waits for the broker. With `notification_driver = noop` nothing
/// is sent. If the broker is away the notifications wait in a bounded queue (the oldest
/// are dropped past `capacity`, with a log line).
public final class InstanceNotifier: Sendable {
    public enum Driver: String, Sendable { case messagingv2, noop }

    struct Pending: Sendable {
        var priority: String
        var eventType: String
        var payload: JSONValue
        var context: [String: JSONValue]
    }

    public let driver: Driver
    let publisherID: String
    let topic: String
    let logger: Logger
    private let stream: AsyncStream<Pending>
    private let continuation: AsyncStream<Pending>.Continuation
    private let dropped = Mutex(0)

    public init(driver: Driver, host: String, topic: String = "notifications", capacity: Int = 10_000, logger: Logger) {
        self.driver = driver
        self.publisherID = "compute.\(host)"
        self.topic = topic
        self.logger = logger
        (stream, continuation) = AsyncStream<Pending>.makeStream(bufferingPolicy: .bufferingNewest(capacity))
    }

    /// Queues one notification.
    func emit(priority: String, eventType: String, payload: JSONValue, context: [String: JSONValue] = [:]) {
        guard driver == .messagingv2 else { return }
        if case .dropped = continuation.yield(Pending(priority: priority, eventType: eventType, payload: payload, context: context)) {
            let n = dropped.withLock { d -> Int in d += 1; return d }
            if n == 1 || n % 1000 == 0 { logger.warning("notification queue full: dropped the oldest (\(n) so far)") }
        }
    }

    /// Publishes queued notifications through `plane` until cancelled; a failed publish
    /// is logged and the next one tried (the connection reconnects by itself).
    public func run(plane: ControlPlane) async {
        guard driver == .messagingv2 else { return }
        for await n in stream {
            if Task.isCancelled { break }
            do {
                try await plane.notify(topic: topic, priority: n.priority, eventType: n.eventType,
                                        publisherID: publisherID, payload: n.payload, context: n.context)
            } catch {
                logger.warning("notification \(n.eventType) not sent: \(error)")
            }
        }
    }

    /// Stops accepting notifications; `run` returns once the queue is drained.
    public func finish() { continuation.finish() }
}

extension InstanceRecord {
    /// nova's legacy notification payload (`info_from_instance`), for the fields this
    /// agent has.
    func notificationPayload(host: String, message: String? = nil, extra: [String: JSONValue] = [:]) -> JSONValue {
        var p: [String: JSONValue] = [
            "tenant_id": projectID.map { .string($0) } ?? .null, "user_id": userID.map { .string($0) } ?? .null,
            "instance_id": .string(uuid), "display_name": .string(name), "host": .string(host), "node": .string(host),
            "instance_type": .string(flavor.name), "memory_mb": .int(Int64(memoryMB)), "vcpus": .int(Int64(vcpus)),
            "root_gb": .int(Int64(rootGB)), "disk_gb": .int(Int64(rootGB)),
            "state": .string(vmState.rawValue), "state_description": .string(taskState?.rawValue ?? ""),
            "power_state": .int(Int64(powerState.rawValue)),
            "image_ref_url": imageRef.map { .string($0) } ?? .null,
            "created_at": .string(createdAt), "launched_at": launchedAt.map { .string($0) } ?? .string(""),
            "locked": .bool(locked),
        ]
        if let message { p["message"] = .string(message) }
        if let fault, vmState == .error { p["fault"] = .string(fault) }
        for (k, v) in extra { p[k] = v }
        return .object(p)
    }
}
