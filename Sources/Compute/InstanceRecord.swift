import AgentSupport

/// The resources an instance is sized by (nova's flavor figures).
public struct Flavor: Sendable, Equatable {
    public var vcpus: Int
    public var memoryMB: Int
    public var rootGB: Int
    public var name: String

    public init(vcpus: Int, memoryMB: Int, rootGB: Int, name: String = "") {
        self.vcpus = vcpus
        self.memoryMB = memoryMB
        self.rootGB = rootGB
        self.name = name
    }

    public var json: JSONValue {
        .object(["vcpus": .int(Int64(vcpus)), "memory_mb": .int(Int64(memoryMB)), "root_gb": .int(Int64(rootGB)),
                 "name": .string(name)])
    }

    init?(json: JSONValue?) {
        guard let j = json, let v = j["vcpus"]?.intValue, let m = j["memory_mb"]?.intValue else { return nil }
        self.init(vcpus: v, memoryMB: m, rootGB: j["root_gb"]?.intValue ?? 0, name: j["name"]?.stringValue ?? "")
    }
}

/// What the agent knows about one instance it manages; kept in the instance store as
/// one JSON document (`storeJSON`) and written before and after every change.
public struct InstanceRecord: Sendable, Equatable {
    public var uuid: String
    public var name: String
    public var flavor: Flavor
    /// The flavor before a resize, kept (and its resources held) until confirm or revert.
    public var oldFlavor: Flavor?
    public var imageRef: String?
    public var imageChecksum: String?
    public var vifs: [JSONValue]
    public var vmState: VMState
    public var taskState: TaskState?
    public var powerState: PowerState
    public var fault: String?
    public var diskPath: String
    public var locked = false
    /// "admin" or "owner", as nova records who locked it.
    public var lockedBy: String?
    public var projectID: String?
    public var userID: String?
    public var createdAt: String
    public var launchedAt: String?
    /// Wall-clock seconds of the soft delete (reclaim_instance_interval counts from it).
    public var softDeletedAt: Double?
    /// False once a failed build released its claim: the record stays (ERROR, with the
    /// fault) but holds no resources.
    public var holdsResources = true
    /// A three-part image's boot files (`kernel_path`, `ramdisk_path`, `kernel_cmdline`), as
    /// the image plugin cached them: the hypervisor boots the kernel directly.
    public var directBoot: [String: JSONValue] = [:]
    /// The last image fetch's figures (bytes, seconds, rate_mb_s, downloaded).
    public var imageFetch: [String: JSONValue] = [:]

    public var vcpus: Int { flavor.vcpus }
    public var memoryMB: Int { flavor.memoryMB }
    public var rootGB: Int { flavor.rootGB }

    public init(uuid: String, name: String, flavor: Flavor, imageRef: String?, imageChecksum: String?, vifs: [JSONValue],
                vmState: VMState, taskState: TaskState?, powerState: PowerState, diskPath: String)
    {
        self.uuid = uuid
        self.name = name
        self.flavor = flavor
        self.imageRef = imageRef
        self.imageChecksum = imageChecksum
        self.vifs = vifs
        self.vmState = vmState
        self.taskState = taskState
        self.powerState = powerState
        self.diskPath = diskPath
        self.createdAt = utcTimestamp()
    }

    /// The instance as plugins receive it (spawn, plug, unplug, resize, rescue).
    public var pluginJSON: JSONValue {
        .object([
            "uuid": .string(uuid), "name": .string(name), "vcpus": .int(Int64(vcpus)),
            "memory_mb": .int(Int64(memoryMB)), "root_gb": .int(Int64(rootGB)),
            "disk_path": .string(diskPath), "vifs": .array(vifs),
        ].merging(directBoot) { a, _ in a })
    }

    /// The instance as RPC callers see it.
    public var rpcJSON: JSONValue {
        .object([
            "uuid": .string(uuid), "name": .string(name), "vcpus": .int(Int64(vcpus)),
            "memory_mb": .int(Int64(memoryMB)), "root_gb": .int(Int64(rootGB)),
            "flavor": flavor.json, "old_flavor": oldFlavor?.json ?? .null,
            "image_ref": imageRef.map { .string($0) } ?? .null,
            "vm_state": .string(vmState.rawValue), "task_state": taskState.map { .string($0.rawValue) } ?? .null,
            "power_state": .int(Int64(powerState.rawValue)), "power_state_name": .string(powerState.name),
            "fault": fault.map { .string($0) } ?? .null,
            "locked": .bool(locked), "locked_by": lockedBy.map { .string($0) } ?? .null,
            "created_at": .string(createdAt), "launched_at": launchedAt.map { .string($0) } ?? .null,
            "image_fetch": imageFetch.isEmpty ? .null : .object(imageFetch),
        ])
    }

    /// The stored document: everything, so that a restart loses nothing.
    var storeJSON: JSONValue {
        func opt(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
        return .object([
            "uuid": .string(uuid), "name": .string(name), "flavor": flavor.json, "old_flavor": oldFlavor?.json ?? .null,
            "image_ref": opt(imageRef), "image_checksum": opt(imageChecksum), "vifs": .array(vifs),
            "vm_state": .string(vmState.rawValue), "task_state": opt(taskState?.rawValue),
            "power_state": .int(Int64(powerState.rawValue)), "fault": opt(fault), "disk_path": .string(diskPath),
            "locked": .bool(locked), "locked_by": opt(lockedBy), "project_id": opt(projectID), "user_id": opt(userID),
            "created_at": .string(createdAt), "launched_at": opt(launchedAt),
            "soft_deleted_at": softDeletedAt.map { .double($0) } ?? .null, "holds_resources": .bool(holdsResources),
            "direct_boot": .object(directBoot), "image_fetch": .object(imageFetch),
        ])
    }

    init?(stored j: JSONValue) {
        guard let uuid = j["uuid"]?.stringValue, let flavor = Flavor(json: j["flavor"]),
              let vm = j["vm_state"]?.stringValue.flatMap(VMState.init(rawValue:)),
              let disk = j["disk_path"]?.stringValue
        else { return nil }
        self.init(uuid: uuid, name: j["name"]?.stringValue ?? uuid, flavor: flavor, imageRef: j["image_ref"]?.stringValue,
                  imageChecksum: j["image_checksum"]?.stringValue, vifs: j["vifs"]?.arrayValue ?? [], vmState: vm,
                  taskState: j["task_state"]?.stringValue.flatMap(TaskState.init(rawValue:)),
                  powerState: j["power_state"]?.intValue.flatMap(PowerState.init(rawValue:)) ?? .noState, diskPath: disk)
        oldFlavor = Flavor(json: j["old_flavor"])
        fault = j["fault"]?.stringValue
        locked = j["locked"]?.boolValue ?? false
        lockedBy = j["locked_by"]?.stringValue
        projectID = j["project_id"]?.stringValue
        userID = j["user_id"]?.stringValue
        createdAt = j["created_at"]?.stringValue ?? createdAt
        launchedAt = j["launched_at"]?.stringValue
        softDeletedAt = j["soft_deleted_at"]?.doubleValue
        holdsResources = j["holds_resources"]?.boolValue ?? true
        directBoot = j["direct_boot"]?.objectValue ?? [:]
        imageFetch = j["image_fetch"]?.objectValue ?? [:]
    }
}
