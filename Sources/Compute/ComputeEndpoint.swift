import AgentSupport
import Messaging

/// The agent's RPC API, version 1.1 (docs/rpc-api.md).
///
/// State-changing methods (casts, or calls that return the instance as it ends up):
/// build_and_run_instance, terminate_instance, stop_instance, start_instance,
/// reboot_instance, pause_instance, unpause_instance, suspend_instance, resume_instance,
/// rescue_instance, unrescue_instance, snapshot_instance, rebuild_instance,
/// resize_instance, confirm_resize, revert_resize, soft_delete_instance,
/// restore_instance, lock_instance, unlock_instance.
/// Reads (calls): get_instance_info, list_instances, get_host_capabilities,
/// get_available_resource, get_console_output, get_diagnostics, ping.
extension ComputeManager: RPCEndpoint {
    public static let readMethods: Set<String> = [
        "get_instance_info", "list_instances", "get_host_capabilities", "get_available_resource",
        "get_console_output", "get_diagnostics", "ping",
    ]
    public static let methods: Set<String> = readMethods.union(InstanceAction.byMethod.keys)

    public nonisolated var apiVersion: String { Self.apiVersion }

    public nonisolated func supports(method: String) -> Bool { Self.methods.contains(method) }

    public nonisolated func isReadOnly(method: String) -> Bool { Self.readMethods.contains(method) }

    /// Actions on one instance run one at a time in delivery order.
    public nonisolated func orderingKey(for request: RPCRequest) -> String? {
        guard InstanceAction.byMethod[request.method] != nil else { return nil }
        if request.method == "build_and_run_instance" { return request.args["instance"]?["uuid"]?.stringValue?.lowercased() }
        return try? Self.instanceUUID(request.args)
    }

    public nonisolated func handle(_ request: RPCRequest, delivery: DeliveryAcknowledger) async throws -> JSONValue {
        let a = request.args
        switch request.method {
        case "ping":
            var reply: [String: JSONValue] = ["pong": true, "host": .string(host), "version": .string(Self.agentVersion),
                                              "api_version": .string(Self.apiVersion), "echo": a["arg"] ?? .object(a)]
            if let n = a["reply_bytes"], !n.isNull {
                guard let bytes = n.intValue, (0...(1 << 20)).contains(bytes) else {
                    throw ComputeError.invalidInput("'reply_bytes' must be an integer in 0...1048576, got \(n.serialized())")
                }
                reply["padding"] = .string(String(repeating: "x", count: bytes))
            }
            return .object(reply)
        case "get_instance_info": return try await instanceInfo(Self.instanceUUID(a))
        case "list_instances": return await listInstances()
        case "get_host_capabilities": return try await capabilities()
        case "get_available_resource": return try await availableResource()
        case "get_console_output": return try await consoleOutput(Self.instanceUUID(a), tailLength: a["tail_length"])
        case "get_diagnostics": return try await diagnostics(Self.instanceUUID(a))
        default:
            guard var action = InstanceAction.byMethod[request.method] else { throw RemoteFailure.noSuchMethod(request.method) }
            let uuid: String
            if action == .build {
                uuid = try BuildRequest(args: a).uuid
            } else {
                uuid = try Self.instanceUUID(a)
            }
            if action == .softReboot {
                let type = a["reboot_type"]
                switch type?.stringValue?.uppercased() {
                case nil where type == nil || type == .null, "SOFT"?: break
                case "HARD"?: action = .hardReboot
                default: throw ComputeError.invalidInput("'reboot_type' must be \"SOFT\" or \"HARD\", got \(type!.serialized())")
                }
            }
            return try await execute(action, uuid: uuid, args: a, context: request.context, uniqueID: request.uniqueID,
                                     delivery: delivery)
        }
    }

    /// The target instance: `instance_uuid`, or `instance` as a uuid string or an object
    /// with a `uuid` (nova passes the whole instance object).
    static func instanceUUID(_ a: [String: JSONValue]) throws(ComputeError) -> String {
        if let v = a["instance_uuid"] {
            guard let s = v.stringValue else { throw .invalidInput("'instance_uuid' must be a string, got \(v.typeName)") }
            return try checkedUUID(s, "instance_uuid")
        }
        switch a["instance"] {
        case .string(let s)?: return try checkedUUID(s, "instance")
        case .object(let o)?:
            guard let s = o["uuid"]?.stringValue else { throw .invalidInput("'instance' has no string 'uuid'") }
            return try checkedUUID(s, "instance.uuid")
        case let other?: throw .invalidInput("'instance' must be an object or a uuid string, got \(other.typeName)")
        case nil: throw .invalidInput("missing 'instance_uuid' (or 'instance')")
        }
    }

    /// Instances are named by UUID (as in nova); anything else is refused before it
    /// reaches a lock, the journal or a plugin. The refused text is quoted, cut to 64
    /// characters.
    static func checkedUUID(_ s: String, _ what: String) throws(ComputeError) -> String {
        guard BuildRequest.isUUID(s) else {
            let shown = s.count > 64 ? String(s.prefix(64)) + "…" : s
            throw .invalidInput("'\(what)' must be a UUID, got '\(shown)'")
        }
        return s.lowercased()
    }
}

// MARK: - Reads

extension ComputeManager {
    func instanceInfo(_ uuid: String) async throws -> JSONValue {
        guard let before = instances[uuid] else { throw ComputeError.notFound(uuid) }
        if before.taskState == nil, before.vmState != .building, let p = await currentPower(uuid),
           p != .noState, instances[uuid]?.taskState == nil
        {
            instances[uuid]?.powerState = p
        }
        // Read again: another action may have run while the hypervisor answered.
        guard let record = instances[uuid] else { throw ComputeError.notFound(uuid) }
        guard let p = downloadProgress[uuid], record.vmState == .building, case .object(var o) = record.rpcJSON else {
            return record.rpcJSON
        }
        // nova's `progress` (0-100) while the image downloads, with the figures.
        if p.total > 0 { o["progress"] = .int(Int64(min(100, p.bytes * 100 / p.total))) }
        o["image_download"] = .object(["bytes": .int(Int64(p.bytes)), "total": .int(Int64(p.total))])
        return .object(o)
    }

    func listInstances() -> JSONValue {
        .array(instances.values.sorted { $0.uuid < $1.uuid }.map(\.rpcJSON))
    }

    /// nova's get_console_output: the tail of the console log (`tail_length` lines).
    func consoleOutput(_ uuid: String, tailLength: JSONValue?) async throws -> JSONValue {
        guard instances[uuid] != nil else { throw ComputeError.notFound(uuid) }
        var lines: Int?
        if let t = tailLength, !t.isNull {
            guard let n = t.intValue ?? t.stringValue.flatMap({ Int($0) }), n >= 0 else {
                throw ComputeError.invalidInput("'tail_length' must be a non-negative integer, got \(t.serialized())")
            }
            lines = n
        }
        let out: String
        do { out = try await plugins.hypervisor.consoleOutput(uuid: uuid)["output"]?.stringValue ?? "" } catch {
            throw ComputeError(code: error.code == .notSupported ? .notSupported : .hypervisorFailure,
                               message: "get_console_output of instance \(uuid) failed: \(error)", kwargs: [:])
        }
        guard let lines else { return .string(out) }
        let all = out.split(separator: "\n", omittingEmptySubsequences: false)
        return .string(all.suffix(lines + (out.hasSuffix("\n") ? 1 : 0)).joined(separator: "\n"))
    }

    func diagnostics(_ uuid: String) async throws -> JSONValue {
        guard instances[uuid] != nil else { throw ComputeError.notFound(uuid) }
        do { return try await plugins.hypervisor.diagnostics(uuid: uuid) } catch {
            throw ComputeError(code: error.code == .notSupported ? .notSupported : .hypervisorFailure,
                               message: "get_diagnostics of instance \(uuid) failed: \(error)", kwargs: [:])
        }
    }

    /// The last resource audit (running one first if none has run).
    func availableResource() async throws -> JSONValue {
        if lastAudit == nil { await updateAvailableResource() }
        guard let a = lastAudit else {
            throw ComputeError(code: .hypervisorFailure,
                               message: "the hypervisor has not reported usable resources (see the agent's log for the audit's error)",
                               kwargs: [:])
        }
        let usage = self.usage
        return .object([
            "vcpus": .int(Int64(a.totals.vcpus)), "memory_mb": .int(Int64(a.totals.memoryMB)), "local_gb": .int(Int64(a.totals.diskGB)),
            "vcpus_used": .int(Int64(usage.vcpus)), "memory_mb_used": .int(Int64(usage.memoryMB)), "local_gb_used": .int(Int64(usage.diskGB)),
            "usable_vcpus": .int(Int64(a.limits.vcpus)), "usable_memory_mb": .int(Int64(a.limits.memoryMB)),
            "usable_local_gb": .int(Int64(a.limits.diskGB)),
            "cpu_allocation_ratio": .double(settings.resources.cpuAllocationRatio),
            "ram_allocation_ratio": .double(settings.resources.ramAllocationRatio),
            "disk_allocation_ratio": .double(settings.resources.diskAllocationRatio),
            "reserved_host_memory_mb": .int(Int64(settings.resources.reservedHostMemoryMB)),
            "hypervisor_vcpus_used": .int(Int64(a.hypervisorVCPUs)), "hypervisor_memory_mb_used": .int(Int64(a.hypervisorMemoryMB)),
            "num_instances": .int(Int64(usage.instances)),
            "unmanaged_domains": .array(a.unmanagedDomains.map { .string($0) }),
            "audit_ms": .double((a.durationMS * 10).rounded() / 10),
        ])
    }

    /// The capabilities fanned out to the scheduler and returned by
    /// get_host_capabilities: the audited totals with the records' current usage.
    public func capabilities() async throws -> JSONValue {
        if lastAudit == nil { await updateAvailableResource() }
        guard let a = lastAudit else {
            throw ComputeError(code: .hypervisorFailure, message: "the hypervisor has not reported its resources", kwargs: [:])
        }
        let hv = lastHostInfo
        let usage = self.usage
        let t = a.totals
        let domainType = hv["domain_type"]?.stringValue ?? "kvm"
        return .object([
            "host": .string(host),
            "hypervisor_type": hv["hypervisor_type"] ?? .null,
            "hypervisor_version": hv["hypervisor_version"] ?? .null,
            "hypervisor_hostname": hv["hypervisor_hostname"] ?? .string(host),
            "cpu_info": hv["cpu_info"] ?? .object([:]),
            "vcpus": .int(Int64(t.vcpus)),
            "vcpus_used": .int(Int64(usage.vcpus)),
            "memory_mb": .int(Int64(t.memoryMB)),
            "memory_mb_used": .int(Int64(usage.memoryMB)),
            "memory_mb_free": .int(Int64(max(0, t.memoryMB - usage.memoryMB - settings.resources.reservedHostMemoryMB))),
            "local_gb": .int(Int64(t.diskGB)),
            "local_gb_used": .int(Int64(usage.diskGB)),
            "local_gb_free": .int(Int64(min(t.diskFreeGB, max(0, t.diskGB - usage.diskGB)))),
            "usable_vcpus": .int(Int64(a.limits.vcpus)),
            "usable_memory_mb": .int(Int64(a.limits.memoryMB)),
            "usable_local_gb": .int(Int64(a.limits.diskGB)),
            "num_instances": .int(Int64(usage.instances)),
            "unmanaged_domains": .int(Int64(unmanagedDomains.count)),
            "supported_instances": .array([.array(["x86_64", .string(domainType), "hvm"])]),
            "plugins": .array(plugins.infos.map {
                .object(["kind": .string($0.kind.rawValue), "name": .string($0.name), "version": .string($0.version)])
            }),
            "agent_version": .string(Self.agentVersion),
        ])
    }
}
