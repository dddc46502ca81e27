import AgentSupport
import Compute
import JSON
import Logging
import Messaging

/// Resize and cold migration within this host, as nova-compute runs them (nova 34's
/// `prep_resize` → `resize_instance` → `finish_resize`, then `confirm_resize`, or
/// `revert_resize` → `finish_revert_resize`). The agent is destination and source at
/// once, so each step casts the next to its own `compute-alt.<host>` as nova-compute
/// does: every step is its own message with its own instance action event, journal entry
/// and redelivery. The guest's flavor changes in `finish_resize` (the native
/// `resize_instance`), and goes back in `finish_revert_resize` (native `revert_resize`).
/// Placement: the conductor gave the instance the new flavor's allocation and the
/// Migration the old one; confirm deletes the Migration's, revert moves it back.
/// A move from another host is refused at `prep_resize` with nothing left claimed.
extension NovaComputeEndpoint {
    static let resizeMethods: Set<String> = ["prep_resize", "resize_instance", "finish_resize", "confirm_resize",
                                             "revert_resize", "finish_revert_resize"]

    func resizeStep(_ request: RPCRequest) async throws -> JSONValue {
        switch request.method {
        case "prep_resize": return try await prepResize(request)
        case "resize_instance": return try await resizeInstance(request)
        case "finish_resize": return try await finishResize(request)
        case "confirm_resize": return try await confirmResize(request)
        case "revert_resize": return try await revertResize(request)
        default: return try await finishRevertResize(request)
        }
    }

    // MARK: - Pieces

    func migrationObject(_ request: RPCRequest) throws -> NovaObject {
        guard let m = NovaObject(primitive: request.args["migration"] ?? .null), m.name == "Migration", m["uuid"]?.stringValue != nil else {
            throw RemoteFailure(className: "InvalidInput", module: "nova.exception", message: "'migration' is not a Migration object")
        }
        var migration = m
        migration.changes = []
        return migration
    }

    func saveMigration(_ m: inout NovaObject, _ values: [String: JSONValue], _ ctx: [String: JSONValue]) async throws {
        for (k, v) in values { m.set(k, v) }
        try await conductor.objectAction(&m, "save", context: ctx)
    }

    /// A failed step ends its migration in `error` (nova's errors_out_migration); a save
    /// that fails is logged.
    func errorOut(_ m: inout NovaObject, _ ctx: [String: JSONValue]) async {
        do { try await saveMigration(&m, ["status": "error"], ctx) } catch {
            logger.warning("nova: could not save migration \(m["uuid"]?.stringValue ?? "?") as error: \(error)")
        }
    }

    /// The next step, cast to this host as nova-compute casts it to the other one.
    func castStep(_ method: String, _ args: [String: JSONValue], _ ctx: [String: JSONValue]) async throws {
        try await plane.handlerClient.cast(topic: "compute-alt", server: host, method: method, args: args, version: "6.0", context: ctx)
        Failpoints.hit("nova.cast.\(method)")
    }

    /// nova's `_set_instance_info`: the instance's flavor and the fields copied from it.
    static func flavorFields(_ flavor: NovaObject) -> [String: JSONValue] {
        var v: [String: JSONValue] = ["flavor": flavor.primitive]
        for (field, from) in [("instance_type_id", "id"), ("memory_mb", "memory_mb"), ("vcpus", "vcpus"), ("root_gb", "root_gb"),
                              ("ephemeral_gb", "ephemeral_gb")]
        {
            if let x = flavor[from] { v[field] = x }
        }
        return v
    }

    /// What the native API's resize takes of a nova Flavor.
    static func nativeFlavor(_ flavor: NovaObject) -> JSONValue {
        .object(["name": flavor["name"] ?? "", "vcpus": flavor["vcpus"] ?? .null, "memory_mb": flavor["memory_mb"] ?? .null,
                 "root_gb": flavor["root_gb"] ?? 0])
    }

    func flavorObject(_ value: JSONValue?, _ what: String) throws -> NovaObject {
        guard let f = NovaObject(primitive: value ?? .null), f.name == "Flavor" else {
            throw RemoteFailure(className: "InvalidInput", module: "nova.exception", message: "\(what) is not a Flavor object")
        }
        return f
    }

    /// nova's `_delete_stashed_flavor_info`.
    func dropStashedFlavors(_ t: inout Target, _ ctx: [String: JSONValue]) async {
        var meta = t.object["system_metadata"]?.objectValue ?? [:]
        meta["old_vm_state"] = nil
        do { try await save(&t, ["old_flavor": .null, "new_flavor": .null, "system_metadata": .object(meta)], expected: nil, ctx) } catch {
            logger.warning("nova: could not clear the stashed flavors of \(t.uuid): \(error)")
        }
    }

    // MARK: - prep_resize (destination)

    func prepResize(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        var migration = try migrationObject(request)
        let flavor = try flavorObject(request.args["flavor"], "'flavor'")
        let source = t.object["host"]?.stringValue ?? ""
        guard source == host else {
            return try await refusePrepResize(request, why: "compute-agent resizes and migrates instances only within its own host; "
                + "\(t.uuid) is on \(source.isEmpty ? "no host" : source) (docs/nova-dropin.md)")
        }
        let ctx = request.context
        let event = "compute_prep_resize"
        try await eventStart(t.uuid, event, ctx)
        let vmState = t.object["vm_state"] ?? "active"
        do {
            var meta = t.object["system_metadata"]?.objectValue ?? [:]
            meta["old_vm_state"] = vmState
            // nova saves without an expected task state; resize_prep (set by nova-api) makes
            // a redelivered prep_resize stop here once the resize has moved on.
            try await save(&t, ["new_flavor": flavor.primitive, "system_metadata": .object(meta)], expected: "resize_prep", ctx)
            // nova's move claim: the migration counts on this host from now on.
            var claim: [String: JSONValue] = ["dest_compute": .string(host), "dest_node": .string(host),
                                              "dest_host": .string(plane.settings.hostIP), "status": "pre-migrating"]
            if Self.minor(migration.version) >= 8 { claim["dest_compute_id"] = plane.nodeID }
            try await saveMigration(&migration, claim, ctx)
            logger.info("nova: migrating", metadata: ["instance_uuid": "\(t.uuid)", "flavor": "\(flavor["name"]?.stringValue ?? "?")"])
            try await castStep("resize_instance", ["instance": t.object.primitive, "migration": migration.primitive,
                                                   "image": request.args["image"] ?? .object([:]), "flavor": flavor.primitive,
                                                   "clean_shutdown": request.args["clean_shutdown"] ?? true,
                                                   "request_spec": request.args["request_spec"] ?? .null], ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
        } catch {
            guard let why = try await failing(error, "prep_resize", t.uuid, event, ctx) else { return .null }
            await plane.moveAllocations(from: migration["uuid"]?.stringValue ?? "", to: t.uuid)
            await errorOut(&migration, ctx)
            await reportFailure(&t, event: event, why: why, values: ["vm_state": vmState, "task_state": .null], ctx)
        }
        return .null
    }

    static func minor(_ version: String) -> Int { Int(version.split(separator: ".").last ?? "") ?? 0 }

    // MARK: - resize_instance (source)

    func resizeInstance(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        var migration = try migrationObject(request)
        let ctx = request.context
        let event = "compute_resize_instance"
        try await eventStart(t.uuid, event, ctx)
        let vmState = t.object["vm_state"] ?? "active"
        do {
            // The instance first (nova: the migration first), so that a duplicate of this
            // step stops before it touches the migration.
            try await save(&t, ["task_state": "resize_migrating"], expected: "resize_prep", ctx)
            try await saveMigration(&migration, ["status": "migrating"], ctx)
            // nova's driver powers the guest off and moves its disks here; on one host the
            // guest stays as it is until finish_resize gives it the new flavor.
            try await saveMigration(&migration, ["status": "post-migrating"], ctx)
            try await save(&t, ["host": migration["dest_compute"] ?? .string(host), "node": migration["dest_node"] ?? .string(host),
                                "compute_id": migration["dest_compute_id"] ?? plane.nodeID, "old_flavor": t.object["flavor"] ?? .null,
                                "task_state": "resize_migrated"], expected: "resize_migrating", ctx)
            try await castStep("finish_resize", ["instance": t.object.primitive, "migration": migration.primitive,
                                                 "image": request.args["image"] ?? .object([:]), "disk_info": "[]",
                                                 "request_spec": request.args["request_spec"] ?? .null], ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
        } catch {
            guard let why = try await failing(error, "resize_instance", t.uuid, event, ctx) else { return .null }
            await plane.moveAllocations(from: migration["uuid"]?.stringValue ?? "", to: t.uuid)
            await errorOut(&migration, ctx)
            await reportFailure(&t, event: event, why: why, values: ["vm_state": vmState, "task_state": .null], ctx)
        }
        return .null
    }

    // MARK: - finish_resize (destination)

    func finishResize(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        var migration = try migrationObject(request)
        let ctx = request.context
        let event = "compute_finish_resize"
        try await eventStart(t.uuid, event, ctx)
        let old = try? flavorObject(t.object["flavor"], "the instance's flavor")
        do {
            let new = try flavorObject(t.object["new_flavor"], "the instance's new_flavor")
            var values: [String: JSONValue] = ["old_flavor": t.object["flavor"] ?? .null, "task_state": "resize_finish"]
            if migration["old_instance_type_id"] != migration["new_instance_type_id"] {
                values.merge(Self.flavorFields(new)) { _, n in n }
            }
            try await save(&t, values, expected: "resize_migrated", ctx)
            let after = try await native("resize_instance", ["instance_uuid": .string(t.uuid), "flavor": Self.nativeFlavor(new)], request)
            try await saveMigration(&migration, ["status": "finished"], ctx)
            try await save(&t, ["vm_state": "resized", "task_state": .null, "power_state": after["power_state"] ?? .null,
                                "launched_at": .string(novaTimestamp())], expected: "resize_finish", ctx)
            await plane.schedulerInstanceInfo(t.object.primitive, context: ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
            logger.info("nova: resized", metadata: ["instance_uuid": "\(t.uuid)", "flavor": "\(new["name"]?.stringValue ?? "?")"])
        } catch {
            guard let why = try await failing(error, "finish_resize", t.uuid, event, ctx) else { return .null }
            // nova: the old flavor's allocation (the Migration's) goes; the instance, in
            // ERROR with its old flavor, keeps the new one's until it is deleted or rebuilt.
            await plane.deleteAllocation(migration["uuid"]?.stringValue ?? "")
            await errorOut(&migration, ctx)
            var values: [String: JSONValue] = ["vm_state": "error", "task_state": .null]
            if let old { values.merge(Self.flavorFields(old)) { _, n in n } }
            await reportFailure(&t, event: event, why: why, values: values, ctx)
        }
        return .null
    }

    // MARK: - confirm_resize (source)

    func confirmResize(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        var migration = try migrationObject(request)
        let ctx = request.context
        let status = migration["status"]?.stringValue ?? ""
        guard status == "finished" || status == "confirming" else {
            // nova: "already confirmed" or an unexpected status — nothing to do.
            logger.warning("nova: confirm_resize of \(t.uuid) with migration status '\(status)': nothing to do")
            return .null
        }
        let event = "compute_confirm_resize"
        try await eventStart(t.uuid, event, ctx)
        let migrationID = migration["uuid"]?.stringValue ?? ""
        do {
            let after = try await native("confirm_resize", ["instance_uuid": .string(t.uuid)], request)
            try await saveMigration(&migration, ["status": "confirmed"], ctx)
            try await save(&t, ["vm_state": after["vm_state"] ?? "active", "task_state": .null],
                           expected: .array([.null, "deleting", "soft-deleting"]), ctx)
            // The old flavor's claim (the Migration's allocation) ends. nova also tells the
            // scheduler the instance left the source host; here it has not left, so the
            // scheduler's view stays as it is.
            await plane.deleteAllocation(migrationID)
            await dropStashedFlavors(&t, ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
        } catch {
            guard let why = try await failing(error, "confirm_resize", t.uuid, event, ctx) else { return .null }
            await plane.deleteAllocation(migrationID)
            await errorOut(&migration, ctx)
            await reportFailure(&t, event: event, why: why, values: ["vm_state": "error", "task_state": .null], ctx)
        }
        return .null
    }

    // MARK: - revert_resize (destination) and finish_revert_resize (source)

    func revertResize(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        var migration = try migrationObject(request)
        let ctx = request.context
        let event = "compute_revert_resize"
        try await eventStart(t.uuid, event, ctx)
        do {
            // nova destroys the guest on the destination; here it is the one guest, which
            // finish_revert_resize gives its old flavor back.
            try await saveMigration(&migration, ["status": "reverted"], ctx)
            try await castStep("finish_revert_resize", ["instance": t.object.primitive, "migration": migration.primitive,
                                                        "request_spec": request.args["request_spec"] ?? .null], ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
        } catch {
            guard let why = try await failing(error, "revert_resize", t.uuid, event, ctx) else { return .null }
            await errorOut(&migration, ctx)
            await reportFailure(&t, event: event, why: why, values: ["vm_state": "error", "task_state": .null], ctx)
        }
        return .null
    }

    func finishRevertResize(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        var migration = try migrationObject(request)
        let ctx = request.context
        let event = "compute_finish_revert_resize"
        try await eventStart(t.uuid, event, ctx)
        let oldVMState = t.object["system_metadata"]?["old_vm_state"]?.stringValue ?? "active"
        do {
            let old = try flavorObject(t.object["old_flavor"], "the instance's old_flavor")
            var values = Self.flavorFields(old)
            values["host"] = migration["source_compute"] ?? .string(host)
            values["node"] = migration["source_node"] ?? .string(host)
            values["compute_id"] = plane.nodeID
            try await save(&t, values, expected: .array(["resize_reverting"]), ctx)
            await plane.moveAllocations(from: migration["uuid"]?.stringValue ?? "", to: t.uuid)
            var after = try await native("revert_resize", ["instance_uuid": .string(t.uuid)], request)
            try await save(&t, ["launched_at": .string(novaTimestamp())], expected: "resize_reverting", ctx)
            if oldVMState == "stopped", after["vm_state"]?.stringValue != "stopped" {
                // nova stops a server that was stopped before the resize.
                try await save(&t, ["task_state": "powering-off"], expected: nil, ctx)
                after = try await native("stop_instance", ["instance_uuid": .string(t.uuid)], request, part: "stop")
            }
            try await save(&t, ["vm_state": after["vm_state"] ?? "active", "task_state": .null, "power_state": after["power_state"] ?? .null],
                           expected: nil, ctx)
            await dropStashedFlavors(&t, ctx)
            await plane.schedulerInstanceInfo(t.object.primitive, context: ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
        } catch {
            guard let why = try await failing(error, "finish_revert_resize", t.uuid, event, ctx) else { return .null }
            await errorOut(&migration, ctx)
            await reportFailure(&t, event: event, why: why, values: ["vm_state": "error", "task_state": .null], ctx)
            await dropStashedFlavors(&t, ctx)
        }
        return .null
    }
}
