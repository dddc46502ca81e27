import AgentSupport
import Messaging

/// The agent's RPC API, version 1.0 (docs/rpc-api.md). Casts: build_and_run_instance,
/// terminate_instance, stop_instance, start_instance, reboot_instance, pause_instance,
/// unpause_instance, suspend_instance, resume_instance. Calls: get_instance_info,
/// list_instances, get_host_capabilities, ping. (Any method may be called or cast; a call
/// to an action returns the instance as it ends up.)
extension ComputeManager: RPCEndpoint {
    public static let methods: Set<String> = [
        "build_and_run_instance", "terminate_instance", "stop_instance", "start_instance", "reboot_instance",
        "pause_instance", "unpause_instance", "suspend_instance", "resume_instance",
        "get_instance_info", "list_instances", "get_host_capabilities", "ping",
    ]

    public nonisolated var apiVersion: String { Self.apiVersion }

    public nonisolated func supports(method: String) -> Bool { Self.methods.contains(method) }

    public nonisolated func handle(_ request: RPCRequest) async throws -> JSONValue {
        let a = request.args
        switch request.method {
        case "ping":
            return .object(["pong": true, "host": .string(host), "version": .string(Self.agentVersion),
                            "api_version": .string(Self.apiVersion), "echo": a["arg"] ?? .object(a)])
        case "build_and_run_instance": return try await build(a)
        case "terminate_instance": return try await perform(.terminate, uuid: Self.instanceUUID(a))
        case "stop_instance": return try await perform(.stop, uuid: Self.instanceUUID(a))
        case "start_instance": return try await perform(.start, uuid: Self.instanceUUID(a))
        case "pause_instance": return try await perform(.pause, uuid: Self.instanceUUID(a))
        case "unpause_instance": return try await perform(.unpause, uuid: Self.instanceUUID(a))
        case "suspend_instance": return try await perform(.suspend, uuid: Self.instanceUUID(a))
        case "resume_instance": return try await perform(.resume, uuid: Self.instanceUUID(a))
        case "reboot_instance":
            let type = a["reboot_type"]
            switch type?.stringValue?.uppercased() {
            case nil where type == nil || type == .null, "SOFT"?: return try await perform(.softReboot, uuid: Self.instanceUUID(a))
            case "HARD"?: return try await perform(.hardReboot, uuid: Self.instanceUUID(a))
            default: throw ComputeError.invalidInput("'reboot_type' must be \"SOFT\" or \"HARD\", got \(type!.serialized())")
            }
        case "get_instance_info": return try await instanceInfo(Self.instanceUUID(a))
        case "list_instances": return await listInstances()
        case "get_host_capabilities": return try await capabilities()
        default: throw RemoteFailure.noSuchMethod(request.method)
        }
    }

    /// The target instance: `instance_uuid`, or `instance` as a uuid string or an object
    /// with a `uuid` (nova passes the whole instance object).
    static func instanceUUID(_ a: [String: JSONValue]) throws(ComputeError) -> String {
        if let v = a["instance_uuid"] {
            guard let s = v.stringValue else { throw .invalidInput("'instance_uuid' must be a string, got \(v.typeName)") }
            return s.lowercased()
        }
        switch a["instance"] {
        case .string(let s)?: return s.lowercased()
        case .object(let o)?:
            guard let s = o["uuid"]?.stringValue else { throw .invalidInput("'instance' has no string 'uuid'") }
            return s.lowercased()
        case let other?: throw .invalidInput("'instance' must be an object or a uuid string, got \(other.typeName)")
        case nil: throw .invalidInput("missing 'instance_uuid' (or 'instance')")
        }
    }
}
