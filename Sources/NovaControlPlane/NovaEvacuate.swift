import Compute
import JSON
import Logging
import Messaging

/// Evacuation onto this host (nova's `rebuild_instance` with `recreate`): the instance's
/// host is down, the scheduler picked this one and claimed its resources in placement.
/// The agent rebuilds it here from its image (no shared storage: nova's libvirt path)
/// with nova-compute's task states, then takes it over: host, node, the Migration
/// `done`. When the source host comes back, its start-up releases its part of the
/// allocation and removes its old guest (NovaControlPlane.finishEvacuationsFromHere).
extension NovaComputeEndpoint {
    func evacuate(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let event = "compute_rebuild_instance"
        try await eventStart(t.uuid, event, ctx)
        var migration = NovaObject(primitive: request.args["migration"] ?? .null)
        var wanted = t.object["vm_state"]?.stringValue ?? "active"
        if let target = request.args["target_state"]?.stringValue, wanted != "error" { wanted = target }
        logger.info("nova: evacuating onto this host", metadata: ["instance_uuid": "\(t.uuid)",
                                                                  "from": "\(t.object["host"]?.stringValue ?? "?")"])
        do {
            // The instance first (nova: the claim first), so that a redelivered evacuation
            // stops before it touches the migration.
            try await save(&t, ["power_state": 0, "task_state": "rebuilding"], expected: .array(["rebuilding"]), ctx)
            if var m = migration {
                // nova's rebuild claim: the migration counts on this host.
                var claim: [String: JSONValue] = ["dest_compute": .string(host), "dest_node": .string(host),
                                                  "dest_host": .string(plane.settings.hostIP), "status": "pre-migrating"]
                if Self.minor(m.version) >= 8 { claim["dest_compute_id"] = plane.nodeID }
                m.changes = []
                try await saveMigration(&m, claim, ctx)
                migration = m
            }
            try await save(&t, ["task_state": "rebuild_block_device_mapping"], expected: .array(["rebuilding"]), ctx)
            try await save(&t, ["task_state": "rebuild_spawning"], expected: .array(["rebuild_block_device_mapping"]), ctx)
            var built = try await buildHere(t, image: t.object["image_ref"]?.stringValue, checksum: nil, request, what: "evacuation")
            // nova's finish_evacuation: the instance is this host's from now on. It goes in
            // the save that settles the instance (nova saves it just after), so nobody sees
            // a settled server that still names the dead host.
            let takeover: [String: JSONValue] = ["host": .string(host), "node": .string(host), "compute_id": plane.nodeID]
            var spawned: [String: JSONValue] = ["power_state": built["power_state"] ?? 1, "vm_state": "active", "task_state": .null,
                                                "launched_at": .string(novaTimestamp())]
            if wanted != "stopped" { spawned.merge(takeover) { $1 } }
            try await save(&t, spawned, expected: .array(["rebuild_spawning"]), ctx)
            if wanted == "stopped" {
                // nova brings it back to its state before the evacuation.
                try await save(&t, ["task_state": "powering-off"], expected: nil, ctx)
                built = try await native("stop_instance", ["instance_uuid": .string(t.uuid)], request, part: "stop")
                try await save(&t, ["vm_state": built["vm_state"] ?? "stopped", "power_state": built["power_state"] ?? 4,
                                    "task_state": .null].merging(takeover) { $1 }, expected: nil, ctx)
            }
            if var m = migration {
                try await saveMigration(&m, ["status": "done"], ctx)
            }
            await plane.schedulerInstanceInfo(t.object.primitive, context: ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
            logger.info("nova: evacuated onto this host", metadata: ["instance_uuid": "\(t.uuid)"])
        } catch {
            guard let why = try await failing(error, "evacuation", t.uuid, event, ctx) else { return .null }
            if var m = migration {
                do { try await saveMigration(&m, ["status": "failed"], ctx) } catch {
                    logger.warning("nova: could not save the evacuation of \(t.uuid) as failed: \(error)")
                }
            }
            try? await removeHere(t.uuid, request, part: "cleanup")
            await plane.removeProvider(plane.nodeUUID, fromAllocationOf: t.uuid)
            await reportFailure(&t, event: event, why: why, values: ["vm_state": "error", "task_state": .null], ctx)
        }
        return .null
    }
}
