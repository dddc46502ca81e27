import JSON

/// The seam between the compute manager and whatever drives it: everything the agent tells
/// the outside about itself goes through one `ControlPlane`, chosen by
/// `[DEFAULT] control_plane` (`native`: this project's own RPC API and casts, module
/// `NativeControlPlane`; `nova`: nova 34's conductor, placement and scheduler, module
/// `NovaControlPlane`). The manager, the state table, the journal and the plugins never
/// speak a dialect. docs/architecture.md, "The control-plane seam".
///
/// Every method may block on the network: callers are periodic tasks and the notifier's
/// own task, never an RPC handler.
public protocol ControlPlane: Sendable {
    /// `native` or `nova` (for logs and STATUS).
    var dialect: String { get }

    /// Connects and registers this host (nova: the Service and ComputeNode records and the
    /// placement provider). Returns once done; retries by itself until cancelled.
    func start() async

    /// Closes the control plane's connection.
    func stop() async

    /// Whether its connection is up (for the metrics' `notify` lane).
    var isConnected: Bool { get }

    /// One heartbeat (`count` starts at 1 and only grows). Returns once the control plane
    /// has it (native: the broker confirmed the cast; nova: the conductor saved the Service).
    func heartbeat(count: Int, uptime: Double) async throws

    /// The host's capabilities and resources after a periodic pass (native: the
    /// scheduler fanout; nova: ComputeNode.save and placement, only when changed).
    func publishCapabilities(_ capabilities: JSONValue) async throws

    /// One instance notification (nova's legacy `compute.instance.*` format).
    func notify(topic: String, priority: String, eventType: String, publisherID: String,
                payload: JSONValue, context: [String: JSONValue]) async throws
}
