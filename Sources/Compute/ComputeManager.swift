import AgentSupport
import Logging
import Messaging
import PluginHost

#if canImport(Glibc)
import Glibc
#endif

/// The compute manager: the agent's RPC API (version 1.0), the instance lifecycle and the
/// host's capabilities. It owns the instance records and enforces the state table
/// (`InstanceAction`); plugins only carry out what it has decided.
///
/// Actions on one instance cannot interleave: an action sets the instance's task_state
/// before its first plugin call, and any other action (except terminate) is refused while
/// a task_state is set, as nova does.
public actor ComputeManager {
    public static let apiVersion = "1.0"
    public static let agentVersion = "0.1.0"

    let host: String
    let statePath: String
    let plugins: PluginSet
    let logger: Logger
    let startedAt = monotonicSeconds()
    var instances: [String: InstanceRecord] = [:]

    public init(host: String, statePath: String, plugins: PluginSet, logger: Logger) {
        self.host = host
        self.statePath = statePath
        self.plugins = plugins
        self.logger = logger
    }

    public var instancesPath: String { statePath + "/instances" }
    public var uptime: Double { monotonicSeconds() - startedAt }

    // MARK: - Build

    /// Builds and starts an instance: fetch image → plug VIFs → define and start. On any
    /// failure it undoes what was done and leaves the instance in ERROR with the reason.
    func build(_ args: [String: JSONValue]) async throws -> JSONValue {
        let spec = try BuildRequest(args: args)
        if let existing = instances[spec.uuid], existing.vmState != .deleted {
            throw ComputeError(code: .exists, message: "Instance \(spec.uuid) already exists.", kwargs: ["name": .string(spec.uuid)])
        }
        var record = InstanceRecord(
            uuid: spec.uuid, name: spec.name, vcpus: spec.vcpus, memoryMB: spec.memoryMB, rootGB: spec.rootGB,
            imageRef: spec.imageRef, vifs: spec.vifs, vmState: .building, taskState: .spawning, powerState: .noState,
            fault: nil, diskPath: "\(instancesPath)/\(spec.uuid)/disk")
        instances[spec.uuid] = record
        var log = logger
        log[metadataKey: "instance_uuid"] = "\(spec.uuid)"
        log.info("building instance", metadata: ["vcpus": "\(spec.vcpus)", "memory_mb": "\(spec.memoryMB)"])

        var plugged: [JSONValue] = []
        do {
            if let ref = spec.imageRef {
                var req: [String: JSONValue] = ["image_ref": .string(ref), "dest_path": .string(record.diskPath)]
                if let c = spec.checksum { req["checksum"] = .string(c) }
                if spec.rootGB > 0 { req["max_bytes"] = .int(Int64(spec.rootGB) << 30) }
                _ = try await plugins.imageFetcher.fetch(.object(req))
            }
            for vif in spec.vifs {
                try await plugins.network.plug(instance: record.pluginJSON, vif: vif)
                plugged.append(vif)
            }
            // spawn cleans up its own half-defined domain when it fails.
            try await plugins.hypervisor.spawn(instance: record.pluginJSON)
            let power = (try? await plugins.hypervisor.info(uuid: spec.uuid))?["power_state"]?.intValue
            record.powerState = power.flatMap(PowerState.init(rawValue:)) ?? .running
            record.vmState = .active
            record.taskState = nil
            instances[spec.uuid] = record
            log.info("instance is active", metadata: ["power_state": "\(record.powerState.name)"])
            return record.rpcJSON
        } catch {
            let reason = "\(error)"
            log.error("build failed, rolling back: \(reason)")
            for vif in plugged.reversed() { try? await plugins.network.unplug(instance: record.pluginJSON, vif: vif) }
            removeInstanceDirectory(spec.uuid)
            record.vmState = .error
            record.taskState = nil
            record.powerState = .noState
            record.fault = reason
            instances[spec.uuid] = record
            throw ComputeError(code: .buildFailed, message: "Build of instance \(spec.uuid) aborted: \(reason)",
                               kwargs: ["instance_uuid": .string(spec.uuid), "reason": .string(reason)])
        }
    }

    // MARK: - Actions on an existing instance

    /// Checks the state table, sets the task_state, runs the plugin operation and records
    /// the outcome. A refused action changes nothing.
    func perform(_ action: InstanceAction, uuid: String) async throws -> JSONValue {
        guard var record = instances[uuid], record.vmState != .deleted else {
            if action == .terminate {
                // Idempotent: make sure nothing is left on the hypervisor, then succeed.
                try? await plugins.hypervisor.destroy(uuid: uuid)
                logger.info("terminate of an unknown instance: nothing to do", metadata: ["instance_uuid": "\(uuid)"])
                return .object(["uuid": .string(uuid), "vm_state": .string(VMState.deleted.rawValue)])
            }
            throw ComputeError.notFound(uuid)
        }
        if let refusal = action.refusal(uuid: uuid, vmState: record.vmState, taskState: record.taskState) {
            throw refusal
        }
        record.taskState = action.taskState
        instances[uuid] = record
        do {
            try await run(action, record)
        } catch let e as PluginError where action == .terminate && e.code == .notFound {
            // The domain is already gone: terminate still succeeds.
        } catch {
            // The action failed: the instance keeps its vm_state, the task is cleared,
            // and the caller hears why.
            if var r = instances[uuid] {
                r.taskState = nil
                r.fault = "\(error)"
                if let p = (try? await plugins.hypervisor.info(uuid: uuid))?["power_state"]?.intValue.flatMap(PowerState.init(rawValue:)) {
                    r.powerState = p
                }
                instances[uuid] = r
            }
            throw ComputeError(code: (error as? PluginError)?.code == .notSupported ? .notSupported : .hypervisorFailure,
                               message: "\(action.rpcMethod) of instance \(uuid) failed: \(error)",
                               kwargs: ["instance_uuid": .string(uuid)])
        }
        record.taskState = nil
        record.vmState = action.resultingState
        record.fault = nil
        if action == .terminate {
            for vif in record.vifs { try? await plugins.network.unplug(instance: record.pluginJSON, vif: vif) }
            removeInstanceDirectory(uuid)
            record.powerState = .noState
            instances[uuid] = nil
        } else {
            let p = (try? await plugins.hypervisor.info(uuid: uuid))?["power_state"]?.intValue.flatMap(PowerState.init(rawValue:))
            record.powerState = p ?? record.powerState
            instances[uuid] = record
        }
        logger.info("instance is \(record.vmState.rawValue)", metadata: [
            "instance_uuid": "\(uuid)", "action": "\(action.rpcMethod)", "power_state": "\(record.powerState.name)",
        ])
        return record.rpcJSON
    }

    private func run(_ action: InstanceAction, _ record: InstanceRecord) async throws {
        let h = plugins.hypervisor
        switch action {
        case .stop: try await h.perform(.powerOff, uuid: record.uuid)
        case .start: try await h.perform(.powerOn, uuid: record.uuid)
        case .softReboot: try await h.reboot(uuid: record.uuid, hard: false)
        case .hardReboot: try await h.reboot(uuid: record.uuid, hard: true)
        case .pause: try await h.perform(.pause, uuid: record.uuid)
        case .unpause: try await h.perform(.unpause, uuid: record.uuid)
        case .suspend: try await h.perform(.suspend, uuid: record.uuid)
        case .resume: try await h.perform(.resume, uuid: record.uuid)
        case .terminate: try await h.destroy(uuid: record.uuid)
        }
    }

    private func removeInstanceDirectory(_ uuid: String) {
        let dir = "\(instancesPath)/\(uuid)"
        for name in ["disk", "disk.part"] { unlink("\(dir)/\(name)") }
        rmdir(dir)
    }

    // MARK: - Reads

    func instanceInfo(_ uuid: String) async throws -> JSONValue {
        guard let before = instances[uuid] else { throw ComputeError.notFound(uuid) }
        if before.taskState == nil, before.vmState != .building,
           let p = (try? await plugins.hypervisor.info(uuid: uuid))?["power_state"]?.intValue.flatMap(PowerState.init(rawValue:)),
           instances[uuid]?.taskState == nil
        {
            instances[uuid]?.powerState = p
        }
        // Read again: another action may have run while the hypervisor answered.
        guard let record = instances[uuid] else { throw ComputeError.notFound(uuid) }
        return record.rpcJSON
    }

    func listInstances() -> JSONValue {
        .array(instances.values.sorted { $0.uuid < $1.uuid }.map(\.rpcJSON))
    }

    /// The capabilities fanned out to the scheduler and returned by get_host_capabilities.
    public func capabilities() async throws -> JSONValue {
        let hv = try await plugins.hypervisor.hostInfo()
        let live = instances.values.filter { $0.vmState != .deleted }
        let vcpusUsed = live.reduce(0) { $0 + $1.vcpus }
        let memUsed = live.reduce(0) { $0 + $1.memoryMB }
        let diskUsed = live.reduce(0) { $0 + $1.rootGB }
        let memTotal = hv["memory_mb"]?.intValue ?? 0
        let (diskTotal, diskFree) = diskGB()
        let domainType = hv["domain_type"]?.stringValue ?? "kvm"
        return .object([
            "host": .string(host),
            "hypervisor_type": hv["hypervisor_type"] ?? .null,
            "hypervisor_version": hv["hypervisor_version"] ?? .null,
            "hypervisor_hostname": hv["hypervisor_hostname"] ?? .string(host),
            "cpu_info": hv["cpu_info"] ?? .object([:]),
            "vcpus": .int(Int64(hv["vcpus"]?.intValue ?? 0)),
            "vcpus_used": .int(Int64(vcpusUsed)),
            "memory_mb": .int(Int64(memTotal)),
            "memory_mb_used": .int(Int64(memUsed)),
            "memory_mb_free": .int(Int64(max(0, memTotal - memUsed))),
            "local_gb": .int(Int64(diskTotal)),
            "local_gb_used": .int(Int64(diskUsed)),
            "local_gb_free": .int(Int64(min(diskFree, max(0, diskTotal - diskUsed)))),
            "num_instances": .int(Int64(live.count)),
            "supported_instances": .array([.array(["x86_64", .string(domainType), "hvm"])]),
            "plugins": .array(plugins.infos.map {
                .object(["kind": .string($0.kind.rawValue), "name": .string($0.name), "version": .string($0.version)])
            }),
            "agent_version": .string(Self.agentVersion),
        ])
    }

    /// Total and free GiB of the file system that holds the instances.
    private func diskGB() -> (Int, Int) {
        var s = statvfs()
        let path = access(instancesPath, F_OK) == 0 ? instancesPath : statePath
        guard statvfs(path, &s) == 0 else { return (0, 0) }
        let total = Int(UInt64(s.f_blocks) * UInt64(s.f_frsize) >> 30)
        let free = Int(UInt64(s.f_bavail) * UInt64(s.f_frsize) >> 30)
        return (total, free)
    }
}

/// The arguments of build_and_run_instance, checked before anything is created.
///
/// Accepted: `instance` = {uuid, name (or display_name), vcpus, memory_mb, root_gb,
/// image_ref, image_checksum, vifs}; flavor figures may instead come in `flavor` =
/// {vcpus, memory_mb, root_gb}, and `image_ref` at top level.
struct BuildRequest {
    var uuid: String
    var name: String
    var vcpus: Int
    var memoryMB: Int
    var rootGB: Int
    var imageRef: String?
    var checksum: String?
    var vifs: [JSONValue]

    init(args: [String: JSONValue]) throws(ComputeError) {
        guard let instance = args["instance"] else { throw .invalidInput("build_and_run_instance needs an 'instance' argument") }
        guard case .object(let i) = instance else { throw .invalidInput("'instance' must be an object, got \(instance.typeName)") }
        let flavor = args["flavor"]?.objectValue ?? i["flavor"]?.objectValue ?? [:]
        func int(_ key: String, min: Int) throws(ComputeError) -> Int {
            guard let v = i[key] ?? flavor[key] else { throw .invalidInput("instance has no '\(key)'") }
            guard let n = v.intValue else { throw .invalidInput("'\(key)' must be an integer, got \(v.typeName)") }
            guard n >= min else { throw .invalidInput("'\(key)' must be at least \(min), got \(n)") }
            return n
        }
        guard let u = i["uuid"] else { throw .invalidInput("instance has no 'uuid'") }
        guard let uuid = u.stringValue, Self.isUUID(uuid) else { throw .invalidInput("'uuid' must be a UUID string, got \(u.serialized())") }
        self.uuid = uuid.lowercased()
        name = i["name"]?.stringValue ?? i["display_name"]?.stringValue ?? "instance-\(uuid.prefix(8))"
        vcpus = try int("vcpus", min: 1)
        memoryMB = try int("memory_mb", min: 1)
        rootGB = (i["root_gb"] ?? flavor["root_gb"]) == nil ? 0 : try int("root_gb", min: 0)
        let ref = i["image_ref"] ?? args["image_ref"]
        if let ref, !ref.isNull {
            guard let s = ref.stringValue else { throw .invalidInput("'image_ref' must be a string, got \(ref.typeName)") }
            imageRef = s.isEmpty ? nil : s
        }
        checksum = i["image_checksum"]?.stringValue
        switch i["vifs"] ?? args["network_info"] {
        case nil, .null?: vifs = []
        case .array(let a)?: vifs = a
        case let other?: throw .invalidInput("'vifs' must be a list, got \(other.typeName)")
        }
    }

    static func isUUID(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard b.count == 36 else { return false }
        for (i, c) in b.enumerated() {
            if [8, 13, 18, 23].contains(i) { if c != UInt8(ascii: "-") { return false } } else {
                let hex = (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)
                if !hex { return false }
            }
        }
        return true
    }
}
