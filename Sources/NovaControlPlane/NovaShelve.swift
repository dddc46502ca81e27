import Compute
import JSON
import Logging
import Messaging

/// Shelve, shelve-offload and unshelve as nova-compute runs them (nova 34's
/// `shelve_instance`, `shelve_offload_instance`, `unshelve_instance`), made of the native
/// API's actions: the guest is powered off and its disk uploaded by the image plugin into
/// the snapshot image nova-api made (`<name>-shelved`); with `shelved_offload_time = 0`
/// (nova's default) it then leaves the host at once — domain, disk and the agent's record
/// removed, the placement allocation deleted, host and node cleared. Unshelving an
/// offloaded server is a build from that snapshot on the host the conductor picked; the
/// snapshot is then deleted from glance. A server shelved but not offloaded is unshelved
/// by the conductor with `start_instance` (NovaComputeEndpoint.action).
extension NovaComputeEndpoint {
    static let shelveMethods: Set<String> = ["shelve_instance", "shelve_offload_instance", "unshelve_instance"]

    /// The system_metadata keys a shelve leaves (nova's `remove_shelved_keys_from_system_metadata`).
    static let shelvedKeys = ["shelved_at", "shelved_image_id", "shelved_host"]

    func shelveStep(_ request: RPCRequest) async throws -> JSONValue {
        switch request.method {
        case "shelve_instance": return try await shelve(request)
        case "shelve_offload_instance": return try await shelveOffload(request)
        default: return try await unshelve(request)
        }
    }

    // MARK: - shelve_instance

    func shelve(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let event = "compute_shelve_instance"
        try await eventStart(t.uuid, event, ctx)
        do {
            guard let image = request.args["image_id"]?.stringValue, !image.isEmpty else {
                throw RemoteFailure(className: "InvalidInput", module: "nova.exception", message: "shelve_instance needs image_id")
            }
            try await powerOff(t, request)
            try await save(&t, ["task_state": "shelving_image_pending_upload"], expected: "shelving", ctx)
            try await save(&t, ["task_state": "shelving_image_uploading"], expected: "shelving_image_pending_upload", ctx)
            _ = try await native("snapshot_instance", ["instance_uuid": .string(t.uuid), "image_id": .string(image)], request, part: "snapshot")
            var meta = t.object["system_metadata"]?.objectValue ?? [:]
            meta["shelved_at"] = .string(String(novaTimestamp().dropLast()))
            meta["shelved_image_id"] = .string(image)
            meta["shelved_host"] = .string(host)
            let offload = plane.settings.shelvedOffloadTime == 0
            try await save(&t, ["system_metadata": .object(meta), "vm_state": "shelved",
                                "task_state": offload ? "shelving_offloading" : .null, "power_state": 4],
                           expected: .array(["shelving", "shelving_image_uploading"]), ctx)
            if offload { try await offloadGuest(&t, request) }
            await eventFinish(t.uuid, event, error: nil, ctx)
            logger.info("nova: shelved\(offload ? " and offloaded" : "")", metadata: ["instance_uuid": "\(t.uuid)", "image": "\(image)"])
        } catch {
            guard let why = try await failing(error, "shelve", t.uuid, event, ctx) else { return .null }
            await reportFailure(&t, event: event, why: why, values: ["task_state": .null], ctx)
        }
        return .null
    }

    /// nova's `_power_off_instance` before a shelve: a paused or suspended guest is woken
    /// first (the native stop starts from active), then stopped; a stopped one is left.
    func powerOff(_ t: Target, _ request: RPCRequest) async throws {
        let id = ["instance_uuid": JSONValue.string(t.uuid)]
        switch t.object["vm_state"]?.stringValue {
        case "stopped": return
        case "paused": _ = try await native("unpause_instance", id, request, part: "unpause")
        case "suspended": _ = try await native("resume_instance", id, request, part: "resume")
        default: break
        }
        _ = try await native("stop_instance", id, request, part: "stop")
    }

    // MARK: - shelve_offload_instance

    func shelveOffload(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let event = "compute_shelve_offload_instance"
        do { try await eventStart(t.uuid, event, ctx) } catch {
            // The periodic offload (NovaControlPlane.offloadShelved) has no instance action.
            logger.info("nova: shelve offload of \(t.uuid) without an instance action: \(error)")
        }
        do {
            try await offloadGuest(&t, request)
            await eventFinish(t.uuid, event, error: nil, ctx)
        } catch {
            guard let why = try await failing(error, "shelve offload", t.uuid, event, ctx) else { return .null }
            await reportFailure(&t, event: event, why: why, values: ["task_state": .null], ctx)
        }
        return .null
    }

    /// nova's `_shelve_offload_instance`: the guest, its disk and the agent's record go
    /// (native terminate), then the allocation; `shelved_offloaded` with host and node
    /// cleared; the scheduler hears the instance left.
    func offloadGuest(_ t: inout Target, _ request: RPCRequest) async throws {
        let ctx = request.context
        try await removeHere(t.uuid, request, part: "offload", mustSucceed: true)
        await plane.deleteAllocation(t.uuid)
        // One save (nova: two, host and node cleared in the second), so that nobody sees a
        // shelved_offloaded server that still names this host.
        try await save(&t, ["power_state": 4, "vm_state": "shelved_offloaded", "task_state": .null,
                            "host": .null, "node": .null, "compute_id": .null],
                       expected: .array(["shelving", "shelving_offloading"]), ctx)
        await plane.schedulerInstanceDeleted(t.uuid, context: ctx)
    }

    // MARK: - unshelve_instance

    func unshelve(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let event = "compute_unshelve_instance"
        try await eventStart(t.uuid, event, ctx)
        let snapshot = request.args["image"]?["id"]?.stringValue
        do {
            try await save(&t, ["task_state": "spawning"], expected: "unshelving", ctx)
            // nova's instance claim puts the instance on this host.
            try await save(&t, ["host": .string(host), "node": .string(host), "compute_id": plane.nodeID, "launched_on": .string(host)],
                           expected: nil, ctx)
            let built = try await buildHere(t, image: snapshot ?? t.object["image_ref"]?.stringValue,
                                            checksum: request.args["image"]?["checksum"]?.stringValue, request, what: "unshelve")
            var meta = t.object["system_metadata"]?.objectValue ?? [:]
            for k in Self.shelvedKeys { meta[k] = nil }
            try await save(&t, ["system_metadata": .object(meta), "power_state": built["power_state"] ?? 1, "vm_state": "active",
                                "task_state": .null, "launched_at": .string(novaTimestamp())], expected: "spawning", ctx)
            if let snapshot { await deleteShelvedSnapshot(snapshot, t.uuid, ctx) }
            await plane.schedulerInstanceInfo(t.object.primitive, context: ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
            logger.info("nova: unshelved", metadata: ["instance_uuid": "\(t.uuid)"])
        } catch {
            guard let why = try await failing(error, "unshelve", t.uuid, event, ctx) else { return .null }
            // nova: the claim is undone and the server stays shelved_offloaded.
            try? await removeHere(t.uuid, request, part: "cleanup")
            await plane.deleteAllocation(t.uuid)
            await reportFailure(&t, event: event, why: why, values: ["task_state": .null, "host": .null, "node": .null, "compute_id": .null], ctx)
        }
        return .null
    }

    /// The snapshot a shelved server was kept in, deleted once the server is back (nova's
    /// `_delete_snapshot_of_shelved_instance`).
    func deleteShelvedSnapshot(_ image: String, _ uuid: String, _ ctx: [String: JSONValue]) async {
        await deleteImage(image, uuid, why: "the server is unshelved", ctx)
    }
}
