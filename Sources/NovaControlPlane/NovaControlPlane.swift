import AgentSupport
import Compute
import JSON
import Logging
import Messaging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// nova 34's dialect (`control_plane = nova`): the agent stands where nova-compute
/// stands. At start it registers through nova-conductor (Service and ComputeNode records,
/// service version 74) and makes its placement resource provider (inventories, traits);
/// the heartbeat is `Service.save`, the capabilities become `ComputeNode.save` and placement
/// inventory updates, only when they changed. docs/nova-dropin.md.
public final class NovaControlPlane: ControlPlane {
    public struct Settings: Sendable {
        public var host: String
        public var statePath: String
        public var placementEndpoint: String
        public var placementToken: String
        public var hostIP: String
        public var reservedHostMemoryMB: Int
        public var reservedHostDiskMB: Int
        public var cpuAllocationRatio: Double
        public var ramAllocationRatio: Double
        public var diskAllocationRatio: Double
        public var callTimeout: Double
        /// nova's `sync_power_state_interval`: how often the host's power states are saved
        /// to nova (at most once per capabilities pass); negative = only at start-up.
        public var syncPowerStateInterval: Double
        /// `shelved_offload_time`: 0 = offload a shelved server at once, N > 0 = after N
        /// seconds (NovaControlPlane.offloadShelved), -1 = only on request.
        public var shelvedOffloadTime: Int = 0
        /// glance's URL (`[glance] api_servers`, the first one), for deleting the snapshot of
        /// an unshelved server; nil = snapshots are left in glance (logged).
        public var glanceEndpoint: String?

        public init(host: String, statePath: String, placementEndpoint: String, placementToken: String, hostIP: String,
                    reservedHostMemoryMB: Int, reservedHostDiskMB: Int, cpuAllocationRatio: Double,
                    ramAllocationRatio: Double, diskAllocationRatio: Double, callTimeout: Double,
                    syncPowerStateInterval: Double = 600)
        {
            self.syncPowerStateInterval = syncPowerStateInterval
            self.host = host
            self.statePath = statePath
            self.placementEndpoint = placementEndpoint
            self.placementToken = placementToken
            self.hostIP = hostIP
            self.reservedHostMemoryMB = reservedHostMemoryMB
            self.reservedHostDiskMB = reservedHostDiskMB
            self.cpuAllocationRatio = cpuAllocationRatio
            self.ramAllocationRatio = ramAllocationRatio
            self.diskAllocationRatio = diskAllocationRatio
            self.callTimeout = callTimeout
        }
    }

    /// nova 34's SERVICE_VERSION (nova-dropin.md 2.4).
    public static let serviceVersion = 74

    public let dialect = "nova"
    let settings: Settings
    let client: RPCClient
    let conductor: Conductor
    /// The RPC handlers' own connection to the conductor, so that the heartbeat's lane
    /// never carries a handler's calls.
    let handlerClient: RPCClient
    let handlerConductor: Conductor
    let placement: PlacementClient
    let glance: GlanceClient?
    let manager: ComputeManager
    let logger: Logger

    struct State {
        var service: NovaObject?
        var node: NovaObject?
        var reportCount = 0
        /// What placement and the ComputeNode last got, to send only changes.
        var inventory: JSONValue?
        var usage: [String: JSONValue] = [:]
        /// nova's first sync_instance_info comes 120 s after start.
        var lastSchedulerSync = monotonicSeconds()
        /// When the periodic pass last saved the host's power states to nova.
        var lastPowerSync = monotonicSeconds()
    }

    let state = Mutex(State())
    private let registeredFlag = Atomic<Bool>(false)

    /// `client` (heartbeat, registration, periodic work) and `handlerClient` (the RPC
    /// handlers' conductor calls) must accept replies and should confirm publishes.
    public init(settings: Settings, client: RPCClient, handlerClient: RPCClient, manager: ComputeManager, logger: Logger) {
        self.settings = settings
        self.client = client
        // The agent's own calls (registration, heartbeat) wait at most 10 s: a conductor
        // that is still starting drops the first calls (its queue does not exist yet), and
        // nova-compute too probes it with 10 s calls rather than rpc_response_timeout.
        self.conductor = Conductor(client: client, timeout: min(10, settings.callTimeout))
        self.handlerClient = handlerClient
        self.handlerConductor = Conductor(client: handlerClient, timeout: settings.callTimeout)
        self.placement = PlacementClient(endpoint: settings.placementEndpoint, token: settings.placementToken)
        self.glance = settings.glanceEndpoint.map { GlanceClient(endpoint: $0) }
        self.manager = manager
        self.logger = logger
    }

    public var isConnected: Bool { client.isConnected }
    public var isRegistered: Bool { registeredFlag.load(ordering: .acquiring) }

    /// The ComputeNode's uuid (= the placement provider's), kept in the state path so a
    /// restart finds its records again.
    public var nodeUUID: String { state.withLock { $0.node?["uuid"]?.stringValue } ?? "" }

    /// The ComputeNode's database id (`Instance.compute_id`).
    var nodeID: JSONValue { state.withLock { $0.node?["id"] } ?? .null }

    public func start() async {
        await client.start()
        await handlerClient.start()
        var attempt = 0
        while !Task.isCancelled {
            do {
                try await register()
                registeredFlag.store(true, ordering: .releasing)
                return
            } catch {
                attempt += 1
                logger.error("registration with nova-conductor and placement failed (attempt \(attempt)), retrying in 2 s: \(error)")
                try? await Task.sleep(for: .seconds(2))
            }
        }
    }

    public func stop() async {
        await handlerClient.stop()
        await client.stop()
    }

    // MARK: - Registration (nova-dropin.md 3)

    func register() async throws {
        let ctx = Conductor.adminContext()
        let host = settings.host
        // Service: found (a restart: keep it and its report_count) or created.
        var service: NovaObject
        let found = try await conductor.classAction("Service", "get_by_host_and_binary", args: [.string(host), "nova-compute"],
                                                    context: ctx)
        if let existing = NovaObject(primitive: found) {
            service = existing
            if service["version"]?.intValue != Self.serviceVersion {
                service.set("version", .int(Int64(Self.serviceVersion)))
                try await conductor.objectAction(&service, "save", context: ctx)
            }
            logger.info("nova: found this host's nova-compute service record", metadata: [
                "service_id": "\(service["id"]?.intValue ?? 0)", "report_count": "\(service["report_count"]?.intValue ?? 0)",
            ])
        } else {
            service = NovaObject(name: "Service", version: "1.22")
            for (k, v) in [("host", JSONValue.string(host)), ("binary", "nova-compute"), ("topic", "compute"),
                           ("report_count", .int(0)), ("version", .int(Int64(Self.serviceVersion)))] { service.set(k, v) }
            try await conductor.objectAction(&service, "create", context: ctx)
            logger.info("nova: created the nova-compute service record", metadata: ["service_id": "\(service["id"]?.intValue ?? 0)"])
        }
        let reportCount = service["report_count"]?.intValue ?? 0

        // ComputeNode: by the node uuid this host keeps.
        let uuid = try nodeIdentity()
        let caps = try await manager.capabilities()
        var node: NovaObject
        do {
            let got = try await conductor.classAction("ComputeNode", "get_by_uuid", args: [.string(uuid)], context: ctx)
            guard let n = NovaObject(primitive: got) else { throw RemoteFailure(className: "ComputeHostNotFound", module: "nova.exception", message: "") }
            node = n
            logger.info("nova: found this host's compute node record", metadata: ["node_id": "\(node["id"]?.intValue ?? 0)", "uuid": "\(uuid)"])
        } catch let f as RemoteFailure where f.className == "ComputeHostNotFound" {
            node = NovaObject(name: "ComputeNode", version: "1.19")
            node.set("uuid", .string(uuid))
            node.set("service_id", service["id"] ?? .null)
            node.set("host", .string(host))
            node.set("hypervisor_hostname", .string(host))
            for (k, v) in nodeFields(caps) { node.set(k, v) }
            try await conductor.objectAction(&node, "create", context: ctx)
            logger.info("nova: created the compute node record", metadata: ["node_id": "\(node["id"]?.intValue ?? 0)", "uuid": "\(uuid)"])
        }
        state.withLock {
            $0.service = service
            $0.node = node
            $0.reportCount = reportCount
        }
        try await ensureProvider(uuid: uuid, caps: caps)
        try await saveUsage(caps, context: ctx)
        await reconcileInstances(context: ctx)
    }

    /// nova's `init_host`, against the agent's journal (`startUp`), and its periodic
    /// `_sync_power_states` afterwards. At start-up a guest the agent has whose instance
    /// nova no longer places here (deleted by nova-api while the agent was down) is
    /// removed, and an instance nova places here that the agent does not know is named in
    /// the log. Every pass saves what the host found out by itself — another power state,
    /// a guest that stopped by itself (`stopped`), a domain that vanished (`error`) — for
    /// instances no action is running on (`expected_task_state` null, so a task nova-api
    /// starts meanwhile wins).
    func reconcileInstances(context ctx: [String: JSONValue], startUp: Bool = true) async {
        if startUp { await finishEvacuationsFromHere(context: ctx) }
        let listed: JSONValue
        do {
            listed = try await conductor.classAction("InstanceList", "get_by_host", args: [.string(settings.host)],
                                                     kwargs: ["expected_attrs": .array([])], context: ctx)
        } catch {
            logger.warning("nova: cannot list this host's instances for reconciliation: \(error)")
            return
        }
        guard let list = NovaObject(primitive: listed) else { return }
        var nova: [String: NovaObject] = [:]
        for item in list["objects"]?.arrayValue ?? [] {
            if let o = NovaObject(primitive: item), let id = o["uuid"]?.stringValue { nova[id.lowercased()] = o }
        }
        let local: [JSONValue]
        do {
            local = try await manager.handle(RPCRequest(method: "list_instances"), delivery: .none).arrayValue ?? []
        } catch { return }
        var removed = 0, updated = 0
        for record in local {
            guard let id = record["uuid"]?.stringValue, record["vm_state"]?.stringValue != "deleted" else { continue }
            guard var instance = nova[id] else {
                // Deleted in nova while this agent was away (nova-api deletes locally when
                // the service is down): nothing may keep running for it.
                guard startUp else { continue }
                do {
                    _ = try await manager.handle(RPCRequest(method: "terminate_instance", args: ["instance_uuid": .string(id)],
                                                            uniqueID: "nova-reconcile-\(id)", context: ["is_admin": true]),
                                                 delivery: .none)
                    removed += 1
                    logger.warning("nova: removed instance \(id): nova no longer places it on this host")
                } catch {
                    logger.error("nova: could not remove instance \(id), which nova no longer places here: \(error)")
                }
                continue
            }
            guard instance["task_state"]?.isNull ?? true, record["task_state"]?.isNull ?? true,
                  record["vm_state"]?.stringValue != "building" else { continue }
            var values: [String: JSONValue] = [:]
            if let p = record["power_state"], p != instance["power_state"] { values["power_state"] = p }
            // A guest found off is `stopped` only for a server nova has running (nova's
            // _sync_instance_power_state stops an ACTIVE or PAUSED one); a shelved or resized
            // server is off or on by design. A vanished domain is ERROR whatever the state.
            let novaState = instance["vm_state"]?.stringValue ?? ""
            if let v = record["vm_state"]?.stringValue, novaState != v,
               v == "error" || (v == "stopped" && ["active", "paused"].contains(novaState)) {
                values["vm_state"] = .string(v)
            }
            guard !values.isEmpty else { continue }
            for (k, v) in values { instance.set(k, v) }
            instance.changes = Set(values.keys)
            do {
                try await conductor.objectAction(&instance, "save", kwargs: ["expected_task_state": .array([.null])], context: ctx)
                updated += 1
                logger.warning("nova: instance \(id) updated from the host \(startUp ? "at start-up" : "by the power-state sync")", metadata: [
                    "power_state": "\(values["power_state"]?.intValue.map(String.init) ?? "-")",
                    "vm_state": "\(values["vm_state"]?.stringValue ?? "-")",
                ])
            } catch {
                logger.warning("nova: could not save instance \(id) \(startUp ? "at start-up" : "in the power-state sync"): \(error)")
            }
        }
        guard startUp else { return }
        let known = Set(local.compactMap { $0["uuid"]?.stringValue })
        for id in nova.keys where !known.contains(id) {
            logger.warning("nova: instance \(id) is placed on this host but the agent has no record of it")
        }
        logger.info("nova: instances reconciled", metadata: [
            "nova": "\(nova.count)", "agent": "\(local.count)", "removed": "\(removed)", "updated": "\(updated)",
        ])
    }

    // MARK: - The scheduler's instance view (nova-dropin.md 4.3)

    /// `update_instance_info` to every scheduler after a build.
    func schedulerInstanceInfo(_ instance: JSONValue, context: [String: JSONValue]) async {
        let list = NovaObject(name: "InstanceList", version: "2.6", data: ["objects": .array([instance])])
        do {
            try await handlerClient.fanoutCast(topic: "scheduler", method: "update_instance_info",
                                        args: ["host_name": .string(settings.host), "instance_info": list.primitive],
                                        version: "4.2", context: context)
        } catch { logger.warning("nova: update_instance_info not sent: \(error)") }
    }

    /// `delete_instance_info` to every scheduler when an instance goes.
    func schedulerInstanceDeleted(_ uuid: String, context: [String: JSONValue]) async {
        do {
            try await handlerClient.fanoutCast(topic: "scheduler", method: "delete_instance_info",
                                        args: ["host_name": .string(settings.host), "instance_uuid": .string(uuid)],
                                        version: "4.2", context: context)
        } catch { logger.warning("nova: delete_instance_info not sent: \(error)") }
    }

    /// `sync_instance_info` (nova: every 120 s) with the uuids of the host's instances.
    func schedulerSync() async {
        let now = monotonicSeconds()
        guard state.withLock({ s -> Bool in
            guard now - s.lastSchedulerSync >= 120 else { return false }
            s.lastSchedulerSync = now
            return true
        }) else { return }
        guard let local = try? await manager.handle(RPCRequest(method: "list_instances"), delivery: .none).arrayValue else { return }
        let uuids = local.filter { $0["vm_state"]?.stringValue != "deleted" }.compactMap { $0["uuid"] }
        do {
            try await client.fanoutCast(topic: "scheduler", method: "sync_instance_info",
                                        args: ["host_name": .string(settings.host), "instance_uuids": .array(uuids)],
                                        version: "4.2", context: Conductor.adminContext())
        } catch { logger.warning("nova: sync_instance_info not sent: \(error)") }
    }

    /// The node uuid in `<state_path>/nova-compute-node-uuid`, made once (nova keeps
    /// `compute_id` the same way: a node must not get a new identity on restart).
    func nodeIdentity() throws -> String {
        let path = settings.statePath + "/nova-compute-node-uuid"
        if let text = readWholeFile(path) {
            let id = text.trimmingCharacters()
            if id.count == 36 { return id }
        }
        let id = randomUUID()
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw NovaError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array((id + "\n").utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(tmp, path) == 0 else {
            throw NovaError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        return id
    }

    /// ComputeNode fields from the agent's capabilities (totals, usage, hypervisor).
    func nodeFields(_ caps: JSONValue) -> [(String, JSONValue)] {
        let vcpus = caps["vcpus"]?.intValue ?? 0, memory = caps["memory_mb"]?.intValue ?? 0, disk = caps["local_gb"]?.intValue ?? 0
        let hvVersion: Int64 = caps["hypervisor_version"]?.intValue.map(Int64.init)
            ?? Int64(caps["hypervisor_version"]?.stringValue.flatMap { Int($0.filter(\.isNumber)) } ?? 0)
        let domainType = caps["supported_instances"]?.arrayValue?.first?.arrayValue?.dropFirst().first?.stringValue ?? "qemu"
        let hvSpec = NovaObject(name: "HVSpec", version: "1.2",
                                data: ["arch": "x86_64", "hv_type": .string(domainType == "kvm" ? "kvm" : "qemu"), "vm_mode": "hvm"],
                                changes: ["arch", "hv_type", "vm_mode"])
        var fields: [(String, JSONValue)] = [
            ("vcpus", .int(Int64(vcpus))), ("memory_mb", .int(Int64(memory))), ("local_gb", .int(Int64(disk))),
            ("hypervisor_type", .string(caps["hypervisor_type"]?.stringValue ?? "QEMU")),
            ("hypervisor_version", .int(hvVersion)),
            ("cpu_info", .string((caps["cpu_info"] ?? .object([:])).serialized())),
            ("disk_available_least", .int(Int64(caps["local_gb_free"]?.intValue ?? disk))),
            ("host_ip", .string(settings.hostIP)), ("numa_topology", .null),
            ("supported_hv_specs", .array([hvSpec.primitive])),
            ("cpu_allocation_ratio", .double(settings.cpuAllocationRatio)),
            ("ram_allocation_ratio", .double(settings.ramAllocationRatio)),
            ("disk_allocation_ratio", .double(settings.diskAllocationRatio)),
        ]
        fields += usageFields(caps).sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return fields
    }

    /// The usage half of a ComputeNode (what `update_available_resource` saves).
    func usageFields(_ caps: JSONValue) -> [String: JSONValue] {
        let memory = caps["memory_mb"]?.intValue ?? 0, disk = caps["local_gb"]?.intValue ?? 0
        let memUsed = (caps["memory_mb_used"]?.intValue ?? 0) + settings.reservedHostMemoryMB
        let diskUsed = caps["local_gb_used"]?.intValue ?? 0
        let instances = caps["num_instances"]?.intValue ?? 0
        return [
            "vcpus_used": .int(Int64(caps["vcpus_used"]?.intValue ?? 0)), "memory_mb_used": .int(Int64(memUsed)),
            "local_gb_used": .int(Int64(diskUsed)), "free_ram_mb": .int(Int64(memory - memUsed)),
            "free_disk_gb": .int(Int64(disk - diskUsed)), "running_vms": .int(Int64(instances)), "current_workload": .int(0),
            "metrics": "[]",
            "stats": .object(["failed_builds": "0", "num_instances": .string(String(instances)), "uptime": .string(hostUptime())]),
            "pci_device_pools": NovaObject(name: "PciDevicePoolList", version: "1.1", data: ["objects": .array([])]).primitive,
        ]
    }

    /// `ComputeNode.save` with the usage fields that changed since the last save.
    func saveUsage(_ caps: JSONValue, context: [String: JSONValue]) async throws {
        let fields = usageFields(caps)
        guard var node = state.withLock({ $0.node }) else { return }
        let last = state.withLock { $0.usage }
        var changed = false
        for (k, v) in fields where k != "stats" && last[k] != v {
            node.set(k, v)
            changed = true
        }
        // The uptime in `stats` changes every second: it goes along with other changes,
        // or once a periodic pass finds nothing else changed for a minute.
        if changed || last["stats"]?["num_instances"] != fields["stats"]?["num_instances"] || last.isEmpty {
            node.set("stats", fields["stats"]!)
            changed = true
        }
        guard changed else { return }
        try await conductor.objectAction(&node, "save", context: context)
        state.withLock {
            $0.node = node
            $0.usage = fields
        }
    }

    // MARK: - Placement (nova-dropin.md 4.2)

    static let traits = ["COMPUTE_NODE", "OWNER_NOVA", "COMPUTE_IMAGE_TYPE_RAW", "COMPUTE_IMAGE_TYPE_QCOW2",
                         "COMPUTE_NET_ATTACH_INTERFACE", "COMPUTE_DEVICE_TAGGING",
                         // a cold migration may stay on this host (NovaResize.swift): nova-api
                         // lets the scheduler pick the same host only with this trait
                         "COMPUTE_SAME_HOST_COLD_MIGRATE"]

    func inventory(_ caps: JSONValue) -> [String: JSONValue] {
        func inv(_ total: Int, _ ratio: Double, reserved: Int) -> JSONValue {
            .object(["total": .int(Int64(total)), "min_unit": 1, "max_unit": .int(Int64(max(1, total))), "step_size": 1,
                     "allocation_ratio": .double(ratio), "reserved": .int(Int64(reserved))])
        }
        return [
            "VCPU": inv(caps["vcpus"]?.intValue ?? 0, settings.cpuAllocationRatio, reserved: 0),
            "MEMORY_MB": inv(caps["memory_mb"]?.intValue ?? 0, settings.ramAllocationRatio, reserved: settings.reservedHostMemoryMB),
            "DISK_GB": inv(caps["local_gb"]?.intValue ?? 0, settings.diskAllocationRatio,
                           reserved: (settings.reservedHostDiskMB + 1023) / 1024),
        ]
    }

    /// The provider (uuid = the node's, name = the host), its inventories and traits: made
    /// when missing, written only when different. A 409 (generation moved) re-reads once.
    func ensureProvider(uuid: String, caps: JSONValue) async throws {
        let rp = "/resource_providers/\(uuid)"
        var generation: Int
        let existing = try await placement.request("GET", rp, version: "1.20")
        if existing.status == 404 {
            let made = try await placement.expect("POST", "/resource_providers", version: "1.20",
                                                  body: .object(["uuid": .string(uuid), "name": .string(settings.host)]))
            generation = made?["generation"]?.intValue ?? 0
            logger.info("placement: created the resource provider", metadata: ["uuid": "\(uuid)", "name": "\(settings.host)"])
        } else if existing.status == 200 {
            generation = existing.body?["generation"]?.intValue ?? 0
        } else {
            throw NovaError("placement GET \(rp) answered \(existing.status)")
        }
        try await putInventory(uuid: uuid, caps: caps, generation: &generation)
        let current = try await placement.expect("GET", rp + "/traits", version: "1.6")
        generation = current?["resource_provider_generation"]?.intValue ?? generation
        let have = Set((current?["traits"]?.arrayValue ?? []).compactMap(\.stringValue))
        let want = Set(Self.traits)
        if !want.isSubset(of: have) {
            // Keep traits someone else set (an operator's CUSTOM_*), add ours.
            let all = have.union(want).sorted().map { JSONValue.string($0) }
            _ = try await placement.expect("PUT", rp + "/traits", version: "1.6",
                                           body: .object(["resource_provider_generation": .int(Int64(generation)), "traits": .array(all)]))
            logger.info("placement: set the provider's traits", metadata: ["traits": "\(want.sorted().joined(separator: ","))"])
        }
    }

    func putInventory(uuid: String, caps: JSONValue, generation: inout Int) async throws {
        let rp = "/resource_providers/\(uuid)"
        let want = inventory(caps)
        let current = try await placement.expect("GET", rp + "/inventories", version: "1.26")
        generation = current?["resource_provider_generation"]?.intValue ?? generation
        let have = current?["inventories"]?.objectValue ?? [:]
        let same = want.allSatisfy { key, value in
            guard let h = have[key] else { return false }
            return ["total", "reserved", "max_unit", "min_unit", "step_size"].allSatisfy { h[$0]?.intValue == value[$0]?.intValue }
                && abs((h["allocation_ratio"]?.doubleValue ?? -1) - (value["allocation_ratio"]?.doubleValue ?? 0)) < 1e-6
        }
        if !same {
            let answer = try await placement.expect("PUT", rp + "/inventories", version: "1.26", body: .object([
                "resource_provider_generation": .int(Int64(generation)), "inventories": .object(want),
            ]))
            generation = answer?["resource_provider_generation"]?.intValue ?? generation + 1
            logger.info("placement: inventory updated", metadata: [
                "vcpus": "\(caps["vcpus"]?.intValue ?? 0)", "memory_mb": "\(caps["memory_mb"]?.intValue ?? 0)",
                "disk_gb": "\(caps["local_gb"]?.intValue ?? 0)",
            ])
        }
        state.withLock { $0.inventory = .object(want) }
    }

    /// nova-api's `set_host_enabled` when an admin disables or enables the service: the
    /// provider gets or loses `COMPUTE_STATUS_DISABLED`, which the scheduler excludes.
    func setHostEnabled(_ enabled: Bool) async throws {
        let rp = "/resource_providers/\(nodeUUID)/traits"
        let current = try await placement.expect("GET", rp, version: "1.6")
        var traits = Set((current?["traits"]?.arrayValue ?? []).compactMap(\.stringValue))
        let before = traits
        if enabled { traits.remove("COMPUTE_STATUS_DISABLED") } else { traits.insert("COMPUTE_STATUS_DISABLED") }
        guard traits != before else { return }
        _ = try await placement.expect("PUT", rp, version: "1.6", body: .object([
            "resource_provider_generation": current?["resource_provider_generation"] ?? 0,
            "traits": .array(traits.sorted().map { .string($0) }),
        ]))
        logger.notice("nova: the service was \(enabled ? "enabled" : "disabled"); provider trait COMPUTE_STATUS_DISABLED \(enabled ? "removed" : "set")")
    }

    /// Deletes the placement allocation of an instance (a terminated or failed build):
    /// the scheduler made it; without this the capacity leaks.
    func deleteAllocation(_ instance: String) async {
        do {
            let r = try await placement.request("DELETE", "/allocations/\(instance)", version: "1.28")
            if r.status != 204 && r.status != 404 { logger.warning("placement: DELETE /allocations/\(instance) answered \(r.status)") }
        } catch {
            logger.warning("placement: cannot delete the allocation of \(instance): \(error)")
        }
    }

    /// nova's `move_allocations`: what `source` (a migration) holds in placement becomes
    /// `target`'s (the instance's) in one POST, and `source` holds nothing — how a move
    /// that did not happen gives the instance its old allocation back. False when the
    /// source holds nothing.
    @discardableResult
    func moveAllocations(from source: String, to target: String) async -> Bool {
        do {
            guard let src = try await placement.expect("GET", "/allocations/\(source)", version: "1.28"),
                  let allocs = src["allocations"]?.objectValue, !allocs.isEmpty
            else { return false }
            let dst = try await placement.expect("GET", "/allocations/\(target)", version: "1.28")
            var moved: [String: JSONValue] = [:]
            for (rp, a) in allocs { moved[rp] = .object(["resources": a["resources"] ?? .object([:])]) }
            let owner: [String: JSONValue] = ["project_id": src["project_id"] ?? .null, "user_id": src["user_id"] ?? .null]
            var from = owner, to = owner
            from["allocations"] = .object([:])
            from["consumer_generation"] = src["consumer_generation"] ?? .null
            to["allocations"] = .object(moved)
            to["consumer_generation"] = dst?["consumer_generation"] ?? .null
            _ = try await placement.expect("POST", "/allocations", version: "1.28",
                                           body: .object([source: .object(from), target: .object(to)]))
            logger.info("placement: moved the allocation of \(source) back to \(target)")
            return true
        } catch {
            logger.warning("placement: cannot move the allocation of \(source) to \(target): \(error)")
            return false
        }
    }

    /// nova's `remove_provider_tree_from_instance_allocation`: `provider`'s part of
    /// `consumer`'s allocation goes, the rest stays (an evacuated instance's source host,
    /// or a destination whose evacuation failed). False when there was nothing to remove
    /// or placement refused.
    @discardableResult
    func removeProvider(_ provider: String, fromAllocationOf consumer: String) async -> Bool {
        do {
            guard let current = try await placement.expect("GET", "/allocations/\(consumer)", version: "1.28"),
                  var allocs = current["allocations"]?.objectValue, allocs[provider] != nil
            else { return false }
            allocs[provider] = nil
            var rest: [String: JSONValue] = [:]
            for (rp, a) in allocs { rest[rp] = .object(["resources": a["resources"] ?? .object([:])]) }
            _ = try await placement.expect("PUT", "/allocations/\(consumer)", version: "1.28", body: .object([
                "allocations": .object(rest), "consumer_generation": current["consumer_generation"] ?? .null,
                "project_id": current["project_id"] ?? .null, "user_id": current["user_id"] ?? .null,
            ]))
            logger.info("placement: removed this host's part of the allocation of \(consumer)")
            return true
        } catch {
            logger.warning("placement: cannot remove this host's part of the allocation of \(consumer): \(error)")
            return false
        }
    }

    /// nova-compute's `_destroy_evacuated_instances`, at start-up: instances evacuated
    /// from this host while it was down lose this host's part of their allocation, and
    /// their migration becomes `completed` (their guests are removed by the
    /// reconciliation, as instances nova no longer places here).
    func finishEvacuationsFromHere(context ctx: [String: JSONValue]) async {
        let filters: JSONValue = .object(["source_compute": .string(settings.host), "migration_type": "evacuation",
                                          "status": .array(["accepted", "pre-migrating", "done"])])
        let listed: JSONValue
        do {
            listed = try await conductor.classAction("MigrationList", "get_by_filters", args: [filters], context: ctx)
        } catch {
            logger.warning("nova: cannot list the evacuations from this host: \(error)")
            return
        }
        let node = nodeUUID
        for item in NovaObject(primitive: listed)?["objects"]?.arrayValue ?? [] {
            guard var migration = NovaObject(primitive: item), let uuid = migration["instance_uuid"]?.stringValue else { continue }
            await removeProvider(node, fromAllocationOf: uuid)
            migration.changes = []
            migration.set("status", "completed")
            do {
                _ = try await conductor.objectAction(&migration, "save", context: ctx)
                logger.notice("nova: instance \(uuid) was evacuated from this host; its allocation here is released")
            } catch {
                logger.warning("nova: could not complete the evacuation of \(uuid): \(error)")
            }
        }
    }

    /// nova's `_poll_shelved_instances` (with `shelved_offload_time` > 0, at each
    /// resources pass): a server shelved on this host longer than that, with no task, gets
    /// task `shelving_offloading` and a `shelve_offload_instance` cast to this host — so the
    /// offload runs as the RPC handler's, journaled and redelivered like any other.
    func offloadShelved(context ctx: [String: JSONValue]) async {
        let filters: JSONValue = .object(["vm_state": "shelved", "task_state": .null, "host": .string(settings.host)])
        let listed: JSONValue
        do {
            listed = try await conductor.classAction("InstanceList", "get_by_filters", args: [filters],
                                                     kwargs: ["expected_attrs": .array(["system_metadata"])], context: ctx)
        } catch {
            logger.warning("nova: cannot list this host's shelved servers: \(error)")
            return
        }
        let now = wallClock()
        for item in NovaObject(primitive: listed)?["objects"]?.arrayValue ?? [] {
            guard var instance = NovaObject(primitive: item), let uuid = instance["uuid"]?.stringValue,
                  let shelvedAt = instance["system_metadata"]?["shelved_at"]?.stringValue.flatMap(parseNovaTimestamp),
                  now - shelvedAt >= Double(settings.shelvedOffloadTime)
            else { continue }
            instance.changes = []
            instance.set("task_state", "shelving_offloading")
            do {
                try await conductor.objectAction(&instance, "save", kwargs: ["expected_task_state": .array([.null])], context: ctx)
                try await client.cast(topic: "compute", server: settings.host, method: "shelve_offload_instance",
                                      args: ["instance": instance.primitive, "clean_shutdown": false, "accel_uuids": .array([])],
                                      version: "6.0", context: ctx)
                logger.info("nova: offloading shelved server \(uuid) (shelved_offload_time \(settings.shelvedOffloadTime) s)")
            } catch {
                logger.warning("nova: could not start offloading shelved server \(uuid): \(error)")
            }
        }
    }

    // MARK: - ControlPlane

    public func heartbeat(count: Int, uptime: Double) async throws {
        guard isRegistered, var service = state.withLock({ $0.service }) else {
            throw NovaError("not registered with nova-conductor yet")
        }
        // The conductor moves last_seen_up only when report_count grows: keep counting
        // from the stored value.
        let next = state.withLock { s -> Int in
            s.reportCount += 1
            return s.reportCount
        }
        service.set("report_count", .int(Int64(next)))
        try await conductor.objectAction(&service, "save", context: Conductor.adminContext())
        state.withLock { $0.service = service }
    }

    public func publishCapabilities(_ capabilities: JSONValue) async throws {
        guard isRegistered else { return }
        let ctx = Conductor.adminContext()
        try await saveUsage(capabilities, context: ctx)
        await schedulerSync()
        if settings.syncPowerStateInterval >= 0,
           state.withLock({ monotonicSeconds() - $0.lastPowerSync >= settings.syncPowerStateInterval }) {
            state.withLock { $0.lastPowerSync = monotonicSeconds() }
            await reconcileInstances(context: ctx, startUp: false)
        }
        if settings.shelvedOffloadTime > 0 { await offloadShelved(context: ctx) }
        let want = JSONValue.object(inventory(capabilities))
        if state.withLock({ $0.inventory }) != want {
            var generation = 0
            try await putInventory(uuid: nodeUUID, caps: capabilities, generation: &generation)
        }
    }

    /// Legacy notifications go out as with the native dialect (nova's `messagingv2`).
    public func notify(topic: String, priority: String, eventType: String, publisherID: String,
                       payload: JSONValue, context: [String: JSONValue]) async throws
    {
        try await client.notify(topic: topic, priority: priority, eventType: eventType, publisherID: publisherID,
                                payload: payload, context: context)
    }
}

/// A failure of the nova dialect's own (not a remote one).
struct NovaError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// What `uptime` prints (nova's get_host_uptime returns it; ComputeNode stats carry it so
/// nova-api does not have to ask).
func hostUptime() -> String {
    var t = time(nil)
    var tm = tm()
    localtime_r(&t, &tm)
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    let up = (readWholeFile("/proc/uptime")?.split(separator: " ").first).flatMap { Double($0) } ?? 0
    let days = Int(up) / 86_400, hours = (Int(up) % 86_400) / 3600, minutes = (Int(up) % 3600) / 60
    let load = (readWholeFile("/proc/loadavg") ?? "0 0 0").split(separator: " ").prefix(3).joined(separator: ", ")
    let span = days > 0 ? "\(days) day\(days == 1 ? "" : "s"), \(hours):\(two(Int32(minutes)))" : "\(hours):\(two(Int32(minutes)))"
    return " \(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)) up \(span),  0 users,  load average: \(load)"
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

extension NovaControlPlane {
    /// Reads what the nova dialect needs from the agent's configuration (nova's own
    /// `[placement]` section among it). Throws a ConfigError naming what is missing.
    public convenience init(configuration c: AgentConfiguration, client: RPCClient, handlerClient: RPCClient,
                            manager: ComputeManager, logger: Logger) throws(ConfigError)
    {
        let placement = c.novaSections["placement"] ?? [:]
        let endpoint = try Self.placementEndpoint(c)
        var settings = Settings(
            host: c.host, statePath: c.statePath, placementEndpoint: endpoint, placementToken: placement["token"] ?? "admin",
            hostIP: c.myIP ?? firstHostAddress(), reservedHostMemoryMB: c.reservedHostMemoryMB,
            reservedHostDiskMB: c.reservedHostDiskMB, cpuAllocationRatio: c.cpuAllocationRatio,
            ramAllocationRatio: c.ramAllocationRatio, diskAllocationRatio: c.diskAllocationRatio,
            callTimeout: c.rpcResponseTimeout, syncPowerStateInterval: c.syncPowerStateInterval)
        settings.shelvedOffloadTime = c.shelvedOffloadTime
        let glance = c.pluginSections["glance"] ?? c.novaSections["glance"] ?? [:]
        settings.glanceEndpoint = glance["api_servers"]?.split(separator: ",").first.map { String($0).trimmingCharacters() }
        self.init(settings: settings, client: client, handlerClient: handlerClient, manager: manager, logger: logger)
    }
}

extension NovaControlPlane {
    /// `[placement] endpoint_override` or `endpoint`; a ConfigError when neither is set
    /// (checked at start-up, before anything else is done).
    public static func placementEndpoint(_ c: AgentConfiguration) throws(ConfigError) -> String {
        let placement = c.novaSections["placement"] ?? [:]
        guard let endpoint = placement["endpoint_override"].flatMap({ $0.isEmpty ? nil : $0 }) ?? placement["endpoint"],
              !endpoint.isEmpty
        else {
            throw c.error(section: "placement", option: "endpoint",
                          "control_plane = nova needs placement's URL: [placement] endpoint (nova's admin_token style, as in nova.conf)")
        }
        return endpoint
    }
}

/// The first non-loopback IPv4 address of the host (nova's `my_ip` default), else 127.0.0.1.
func firstHostAddress() -> String {
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0, let first = list else { return "127.0.0.1" }
    defer { freeifaddrs(list) }
    var p: UnsafeMutablePointer<ifaddrs>? = first
    while let a = p {
        defer { p = a.pointee.ifa_next }
        guard let sa = a.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET),
              a.pointee.ifa_flags & UInt32(IFF_LOOPBACK) == 0
        else { continue }
        var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
            var addr = sin.pointee.sin_addr
            _ = inet_ntop(AF_INET, &addr, &buf, socklen_t(buf.count))
        }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return "127.0.0.1"
}
