import Compute
import JSON
import Messaging

/// The agent's own dialect (docs/rpc-api.md): the heartbeat is a `report_state` cast to
/// `conductor`, capabilities a fanout cast `update_service_capabilities` to the scheduler,
/// notifications oslo's `messagingv2`, all on one connection with publisher confirms.
/// Registration is implicit: consuming `compute.<host>` is all a native control plane needs.
public final class NativeControlPlane: ControlPlane {
    public let dialect = "native"
    let client: RPCClient
    let host: String

    /// `client` must run with publisher confirms (a returned heartbeat is a confirmed one).
    public init(client: RPCClient, host: String) {
        self.client = client
        self.host = host
    }

    public func start() async { await client.start() }
    public func stop() async { await client.stop() }
    public var isConnected: Bool { client.isConnected }

    public func heartbeat(count: Int, uptime: Double) async throws {
        let service: JSONValue = .object([
            "host": .string(host), "binary": "compute-agent", "topic": "compute",
            "report_count": .int(Int64(count)), "uptime": .int(Int64(uptime)),
            "disabled": false, "version": .string(ComputeManager.agentVersion),
        ])
        try await client.cast(topic: "conductor", method: "report_state", args: ["service": service])
    }

    public func publishCapabilities(_ capabilities: JSONValue) async throws {
        try await client.fanoutCast(topic: "scheduler", method: "update_service_capabilities",
                                    args: ["service_name": "compute", "host": .string(host), "capabilities": capabilities])
    }

    public func notify(topic: String, priority: String, eventType: String, publisherID: String,
                       payload: JSONValue, context: [String: JSONValue]) async throws
    {
        try await client.notify(topic: topic, priority: priority, eventType: eventType, publisherID: publisherID,
                                payload: payload, context: context)
    }
}
