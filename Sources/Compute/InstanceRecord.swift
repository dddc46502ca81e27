import AgentSupport

/// What the agent knows about one instance it manages.
public struct InstanceRecord: Sendable, Equatable {
    public var uuid: String
    public var name: String
    public var vcpus: Int
    public var memoryMB: Int
    public var rootGB: Int
    public var imageRef: String?
    public var vifs: [JSONValue]
    public var vmState: VMState
    public var taskState: TaskState?
    public var powerState: PowerState
    public var fault: String?
    public var diskPath: String

    /// The instance as plugins receive it (spawn, plug, unplug).
    public var pluginJSON: JSONValue {
        .object([
            "uuid": .string(uuid), "name": .string(name), "vcpus": .int(Int64(vcpus)),
            "memory_mb": .int(Int64(memoryMB)), "root_gb": .int(Int64(rootGB)),
            "disk_path": .string(diskPath), "vifs": .array(vifs),
        ])
    }

    /// The instance as RPC callers see it.
    public var rpcJSON: JSONValue {
        .object([
            "uuid": .string(uuid), "name": .string(name), "vcpus": .int(Int64(vcpus)),
            "memory_mb": .int(Int64(memoryMB)), "root_gb": .int(Int64(rootGB)),
            "image_ref": imageRef.map { .string($0) } ?? .null,
            "vm_state": .string(vmState.rawValue), "task_state": taskState.map { .string($0.rawValue) } ?? .null,
            "power_state": .int(Int64(powerState.rawValue)), "power_state_name": .string(powerState.name),
            "fault": fault.map { .string($0) } ?? .null,
        ])
    }
}
