import AgentSupport
import Compute
import JSON
import Logging
import Messaging

/// nova's compute RPC API 6.x (target version 6.5) on `compute.<host>` and
/// `compute-alt.<host>`: each life-cycle cast is run by the compute manager (through the
/// native API, so the journal, the state table and the plugins are the same) and reported
/// the way nova-compute reports it: `InstanceActionEvent` start/finish, `Instance.save`
/// with the expected task states, `InstanceFault.create` and ERROR on failure, the
/// placement allocation deleted on delete and on a failed build, `Instance.destroy`.
/// Every conductor call made for a message carries that message's request context.
public final class NovaComputeEndpoint: RPCEndpoint {
    public static let apiVersionServed = "6.5"

    static let lifecycle: [String: String] = [
        "stop_instance": "stop_instance", "start_instance": "start_instance", "reboot_instance": "reboot_instance",
        "pause_instance": "pause_instance", "unpause_instance": "unpause_instance",
        "suspend_instance": "suspend_instance", "resume_instance": "resume_instance",
        "rescue_instance": "rescue_instance", "unrescue_instance": "unrescue_instance",
        "snapshot_instance": "snapshot_instance", "rebuild_instance": "rebuild_instance",
        "backup_instance": "snapshot_instance",
    ]
    /// nova casts on one instance that this dialect does not run yet: the instance gets
    /// its task state back, a fault saying so, and the action's event fails — rather than
    /// a task state that never clears.
    static let notImplemented: Set<String> = [
        "soft_delete_instance", "restore_instance",
        "trigger_crash_dump",
    ]
    static let methods: Set<String> = Set(lifecycle.keys).union(["build_and_run_instance", "terminate_instance",
                                                                 "get_host_uptime", "get_console_output", "set_host_enabled",
                                                                 "inject_network_info"])
        .union(notImplemented).union(resizeMethods).union(shelveMethods)

    let plane: NovaControlPlane
    let manager: ComputeManager
    let host: String
    let logger: Logger

    public init(plane: NovaControlPlane, manager: ComputeManager, host: String, logger: Logger) {
        self.plane = plane
        self.manager = manager
        self.host = host
        self.logger = logger
    }

    public var apiVersion: String { Self.apiVersionServed }
    public func supports(method: String) -> Bool { Self.methods.contains(method) }
    public func isReadOnly(method: String) -> Bool { method == "get_host_uptime" || method == "get_console_output" }

    /// Messages for one instance run one at a time, in delivery order.
    public func orderingKey(for request: RPCRequest) -> String? {
        NovaObject(primitive: request.args["instance"] ?? .null)?["uuid"]?.stringValue
    }

    /// The handlers' own conductor connection (the heartbeat's stays free).
    var conductor: Conductor { plane.handlerConductor }

    public func handle(_ request: RPCRequest, delivery: DeliveryAcknowledger) async throws -> JSONValue {
        switch request.method {
        case "get_host_uptime": return .string(hostUptime())
        case "set_host_enabled":
            guard let enabled = request.args["enabled"]?.boolValue else {
                throw RemoteFailure(className: "InvalidInput", module: "nova.exception", message: "'enabled' must be a boolean")
            }
            try await plane.setHostEnabled(enabled)
            return .string(enabled ? "enabled" : "disabled")
        case "get_console_output":
            let uuid = try instanceObject(request).uuid
            var args: [String: JSONValue] = ["instance_uuid": .string(uuid)]
            if let t = request.args["tail_length"] { args["tail_length"] = t }
            return try await native("get_console_output", args, request)
        case "inject_network_info":
            // nova's libvirt driver does nothing here either: the guest reads its network
            // from DHCP and the metadata service, not from an injected file.
            let uuid = try instanceObject(request).uuid
            logger.info("nova: inject_network_info: nothing to inject (as nova's libvirt driver)", metadata: ["instance_uuid": "\(uuid)"])
            return .null
        case "build_and_run_instance": return try await build(request)
        case let m where Self.resizeMethods.contains(m): return try await resizeStep(request)
        case let m where Self.shelveMethods.contains(m): return try await shelveStep(request)
        case let m where Self.notImplemented.contains(m): return try await refuse(request)
        case "terminate_instance": return try await terminate(request)
        case "rebuild_instance" where request.args["recreate"]?.boolValue == true: return try await evacuate(request)
        default: return try await action(request)
        }
    }

    // MARK: - Pieces

    struct Target {
        var object: NovaObject
        var uuid: String
    }

    func instanceObject(_ request: RPCRequest) throws -> Target {
        guard let o = NovaObject(primitive: request.args["instance"] ?? .null), o.name == "Instance",
              let uuid = o["uuid"]?.stringValue
        else { throw RemoteFailure(className: "InvalidInput", module: "nova.exception", message: "'instance' is not an Instance object") }
        guard o.version.hasPrefix("2.") else {
            throw RemoteFailure(className: "IncompatibleObjectVersion", module: "oslo_versionedobjects.exception",
                                message: "Instance \(o.version) is not 2.x")
        }
        var object = o
        object.changes = []
        return Target(object: object, uuid: uuid.lowercased())
    }

    /// Runs a native API method on the manager with this message's context and unique id
    /// (the journal's dedupe key; a second action for the same message names its `part`).
    /// The cast's acknowledgement stays with the RPC server (after the conductor heard the
    /// outcome), so a crash in between redelivers it.
    func native(_ method: String, _ args: [String: JSONValue], _ request: RPCRequest, part: String? = nil) async throws -> JSONValue {
        let id = request.uniqueID.map { "nova-\($0)" + (part.map { "-" + $0 } ?? "") }
        let inner = RPCRequest(method: method, args: args, version: ComputeManager.apiVersion, uniqueID: id, context: request.context)
        return try await manager.handle(inner, delivery: .none)
    }

    func eventStart(_ uuid: String, _ event: String, _ ctx: [String: JSONValue]) async throws {
        _ = try await conductor.classAction("InstanceActionEvent", "event_start", args: [.string(uuid), .string(event)],
                                            kwargs: ["want_result": false, "host": .string(host)], context: ctx)
    }

    func eventFinish(_ uuid: String, _ event: String, error: String?, _ ctx: [String: JSONValue]) async {
        do {
            _ = try await conductor.classAction("InstanceActionEvent", "event_finish_with_failure", args: [.string(uuid), .string(event)],
                                                kwargs: ["exc_val": error.map { .string($0) } ?? .null,
                                                         "exc_tb": error.map { .string("Traceback (most recent call last):\n  compute-agent\n\($0)\n") } ?? .null,
                                                         "want_result": false], context: ctx)
        } catch {
            logger.warning("nova: event_finish \(event) of \(uuid) failed: \(error)")
        }
    }

    func save(_ t: inout Target, _ values: [String: JSONValue], expected: JSONValue?, _ ctx: [String: JSONValue]) async throws {
        for (k, v) in values { t.object.set(k, v) }
        var kwargs: [String: JSONValue] = [:]
        if let expected { kwargs["expected_task_state"] = expected }
        try await conductor.objectAction(&t.object, "save", kwargs: kwargs, context: ctx)
    }

    func fault(_ uuid: String, _ message: String, _ ctx: [String: JSONValue]) async {
        var f = NovaObject(name: "InstanceFault", version: "1.2")
        for (k, v) in [("instance_uuid", JSONValue.string(uuid)), ("code", .int(500)), ("message", .string(String(message.prefix(255)))),
                       ("details", .string(message)), ("host", .string(host))] { f.set(k, v) }
        do { try await conductor.objectAction(&f, "create", context: ctx) } catch {
            logger.warning("nova: InstanceFault.create for \(uuid) failed: \(error)")
        }
    }

    static func message(_ error: Error) -> String {
        if let f = error as? RemoteFailure { return f.message }
        return "\(error)"
    }

    /// The conductor refused a save because the instance's task state is not the one the
    /// step expects: another task won, or this message is a redelivery of a step that
    /// already ran (a crash before its acknowledgement). Nothing is undone then (nova's
    /// `reverts_task_state` leaves such a task state alone too).
    static func preempted(_ error: Error) -> Bool {
        let name = (error as? RemoteFailure)?.className ?? (error as? RemoteFailureConvertible)?.remoteFailure.className
        return name == "UnexpectedTaskStateError" || name == "UnexpectedDeletingTaskStateError"
    }

    /// The head of every step's failure path: rethrows what must go back to the broker,
    /// reports a preempted step (logged, its event finished with the reason; no fault, no
    /// state written, nothing rolled back) and returns nil for both; otherwise the reason,
    /// logged, for the step's own cleanup.
    func failing(_ error: Error, _ what: String, _ uuid: String, _ event: String, _ ctx: [String: JSONValue]) async throws -> String? {
        if Self.mustRequeue(error) { throw error }
        let why = Self.message(error)
        if Self.preempted(error) {
            logger.warning("nova: \(event) of \(uuid) stopped, the instance has moved on (another task, or this message was redelivered after a step that already ran): \(why)")
            await eventFinish(uuid, event, error: why, ctx)
            return nil
        }
        logger.error("nova: \(what) of \(uuid) failed: \(why)")
        return why
    }

    /// Builds the instance on this host through the native API (a redelivery finds it
    /// built and reports what the host has) and requires it active.
    func buildHere(_ t: Target, image: String?, checksum: String?, _ request: RPCRequest, what: String) async throws -> JSONValue {
        let instance = Self.nativeInstance(t, image: image, checksum: checksum)
        let built: JSONValue
        do {
            built = try await native("build_and_run_instance", ["instance": instance], request)
        } catch let f as RemoteFailureConvertible where f.remoteFailure.className == "InstanceExists" {
            built = try await native("get_instance_info", ["instance_uuid": .string(t.uuid)], request)
        }
        guard built["vm_state"]?.stringValue == "active" else {
            throw NovaError("the \(what) ended in vm_state \(built["vm_state"]?.stringValue ?? "?"): \(built["fault"]?.stringValue ?? "")")
        }
        return built
    }

    /// Removes whatever this host has of the instance (native terminate; nothing there is
    /// fine). `mustSucceed` false: a failure is logged (cleanup after a failure).
    func removeHere(_ uuid: String, _ request: RPCRequest, part: String, mustSucceed: Bool = false) async throws {
        do {
            _ = try await native("terminate_instance", ["instance_uuid": .string(uuid)], request, part: part)
        } catch let f as RemoteFailureConvertible where f.remoteFailure.className == "InstanceNotFound" {
        } catch {
            if mustSucceed { throw error }
            logger.warning("nova: could not remove what this host has of \(uuid): \(error)")
        }
    }

    /// A journal that cannot be written: the cast must go back to the broker, not be
    /// reported as failed.
    static func mustRequeue(_ error: Error) -> Bool { (error as? RemoteFailureConvertible)?.requeueAfter != nil }

    // MARK: - build_and_run_instance (nova-dropin.md 5.2)

    func build(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let event = "compute__do_build_and_run_instance"
        try await eventStart(t.uuid, event, ctx)
        let imageID = request.args["image"]?["id"]?.stringValue ?? t.object["image_ref"]?.stringValue
        do {
            try await save(&t, ["vm_state": "building", "task_state": .null], expected: .array(["scheduling", .null]), ctx)
            try await save(&t, ["host": .string(host), "node": .string(host), "compute_id": plane.nodeID,
                                "launched_on": .string(host)], expected: nil, ctx)
            try await save(&t, ["task_state": "spawning"], expected: .array([.null]), ctx)
            let built = try await buildHere(t, image: imageID, checksum: request.args["image"]?["checksum"]?.stringValue, request, what: "build")
            try await save(&t, ["power_state": built["power_state"] ?? 1, "vm_state": "active", "task_state": .null,
                                "launched_at": .string(novaTimestamp())], expected: "spawning", ctx)
            await plane.schedulerInstanceInfo(t.object.primitive, context: ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
            logger.info("nova: instance built", metadata: ["instance_uuid": "\(t.uuid)"])
            return .null
        } catch {
            if Self.mustRequeue(error) { throw error }
            let why = Self.message(error)
            if Self.mayWorkElsewhere(error), let retry = request.args["filter_properties"]?["retry"]?.objectValue {
                await reschedule(&t, request, retry: retry, why: why, event: event)
                return .null
            }
            logger.error("nova: build of \(t.uuid) failed: \(why)")
            await plane.deleteAllocation(t.uuid)
            await reportFailure(&t, event: event, why: why,
                                values: ["vm_state": "error", "task_state": .null, "host": .null, "node": .null, "compute_id": .null], ctx)
            return .null
        }
    }

    /// The native API's build request for a nova Instance: its flavor, name and image
    /// (glance's md5 `checksum`, when given, is checked by the image plugin).
    static func nativeInstance(_ t: Target, image: String?, checksum: String?) -> JSONValue {
        let flavor = NovaObject(primitive: t.object["flavor"] ?? .null)
        var instance: [String: JSONValue] = [
            "uuid": .string(t.uuid), "name": t.object["display_name"] ?? .string(t.uuid),
            "vcpus": flavor?["vcpus"] ?? t.object["vcpus"] ?? 1,
            "memory_mb": flavor?["memory_mb"] ?? t.object["memory_mb"] ?? 64,
            "root_gb": flavor?["root_gb"] ?? t.object["root_gb"] ?? 0,
            "flavor": .object(["name": flavor?["name"] ?? "", "vcpus": flavor?["vcpus"] ?? 1,
                               "memory_mb": flavor?["memory_mb"] ?? 64, "root_gb": flavor?["root_gb"] ?? 0]),
        ]
        if let image, !image.isEmpty { instance["image_ref"] = .string(image) }
        if let checksum, !checksum.isEmpty { instance["image_checksum"] = .string("md5:" + checksum) }
        return .object(instance)
    }

    /// A build failure another host may not have, as nova tells them apart: the
    /// hypervisor could not plug or spawn the guest, or the host had no room. An image
    /// that cannot be fetched or checked, or bad input, fails the same everywhere.
    static func mayWorkElsewhere(_ error: Error) -> Bool {
        guard let f = (error as? RemoteFailureConvertible)?.remoteFailure else { return false }
        switch f.className {
        case "ComputeResourcesUnavailable": return true
        case "BuildAbortException": return ["plug", "spawn"].contains(f.kwargs["step"]?.stringValue ?? "")
        default: return false
        }
    }

    /// nova-compute's reschedule (its `RescheduledException` path) when the scheduler
    /// left retry information: the agent's record of the failed build goes (the instance is
    /// no longer this host's), host and node are cleared with task `scheduling`, the
    /// allocation is deleted, and the conductor is asked (`compute_task` 1.19
    /// `build_instances`) to build it on one of the scheduler's alternates (`host_list`);
    /// with none left the conductor puts it in ERROR ("Exhausted all hosts"). The event of
    /// the build on this host succeeds, as nova's does; the reason travels in
    /// `filter_properties.retry.exc_reason`. If the conductor cannot be told, the build
    /// fails here as one without retry information would (the event is then finished
    /// twice, the second time with the error).
    func reschedule(_ t: inout Target, _ request: RPCRequest, retry: [String: JSONValue], why: String, event: String) async {
        let ctx = request.context
        logger.warning("nova: build of \(t.uuid) failed on this host, rescheduling: \(why)")
        var retry = retry
        retry["exc"] = .array(["Traceback (most recent call last):\n", .string("compute-agent (\(host)): \(why)\n")])
        retry["exc_reason"] = .string(why)
        var filter = request.args["filter_properties"]?.objectValue ?? [:]
        filter["retry"] = .object(retry)
        try? await removeHere(t.uuid, request, part: "reschedule")
        do {
            try await save(&t, ["host": .null, "node": .null, "compute_id": .null, "task_state": "scheduling"], expected: nil, ctx)
            await plane.deleteAllocation(t.uuid)
            var args: [String: JSONValue] = ["instances": .array([t.object.primitive]), "image": request.args["image"] ?? .object([:]),
                                             "filter_properties": .object(filter),
                                             "host_lists": .array([request.args["host_list"] ?? .array([])])]
            for key in ["admin_password", "injected_files", "requested_networks", "security_groups", "request_spec"] {
                args[key] = request.args[key] ?? .null
            }
            // Finished before the cast (nova: after): nova's event_finish takes the first row
            // of that name in the action, which the next host's attempt would add.
            await eventFinish(t.uuid, event, error: nil, ctx)
            try await plane.handlerClient.cast(topic: "conductor", method: "build_instances", args: args, namespace: "compute_task",
                                               version: "1.19", context: ctx)
        } catch {
            let failure = "\(why) (and it could not be rescheduled: \(Self.message(error)))"
            logger.error("nova: build of \(t.uuid) failed: \(failure)")
            await plane.deleteAllocation(t.uuid)
            await reportFailure(&t, event: event, why: failure,
                                values: ["vm_state": "error", "task_state": .null, "host": .null, "node": .null, "compute_id": .null], ctx)
        }
    }

    // MARK: - stop / start / reboot / pause / unpause / suspend / resume (5.3)

    func action(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let method = request.method
        let event = "compute_\(method)"
        try await eventStart(t.uuid, event, ctx)
        do {
            var args: [String: JSONValue] = ["instance_uuid": .string(t.uuid)]
            var final: [String: JSONValue] = ["task_state": .null]
            var shelvedSnapshot: String?
            var backup: (type: String, rotation: Int)?
            let expected: JSONValue?
            switch method {
            case "reboot_instance":
                let hard = request.args["reboot_type"]?.stringValue?.uppercased() == "HARD"
                args["reboot_type"] = .string(hard ? "HARD" : "SOFT")
                let suffix = hard ? "_hard" : ""
                try await save(&t, ["task_state": .string("reboot_pending" + suffix)],
                               expected: .array(["rebooting" + suffix, "reboot_pending" + suffix, "reboot_started" + suffix].map { .string($0) }), ctx)
                try await save(&t, ["task_state": .string("reboot_started" + suffix)], expected: .string("reboot_pending" + suffix), ctx)
                final["vm_state"] = "active"
                expected = nil
            case "stop_instance":
                final["vm_state"] = "stopped"
                expected = .array(["powering-off"])
            case "start_instance":
                final["vm_state"] = "active"
                expected = "powering-on"
                // A server shelved but not offloaded is unshelved with a start: its
                // snapshot and the shelve's keys go (nova's start_instance).
                var meta = t.object["system_metadata"]?.objectValue ?? [:]
                if Self.shelvedKeys.contains(where: { meta[$0] != nil }) {
                    shelvedSnapshot = meta["shelved_image_id"]?.stringValue
                    for k in Self.shelvedKeys { meta[k] = nil }
                    final["system_metadata"] = .object(meta)
                }
            case "pause_instance":
                final["vm_state"] = "paused"
                expected = "pausing"
            case "unpause_instance":
                final["vm_state"] = "active"
                expected = "unpausing"
            case "suspend_instance":
                final["vm_state"] = "suspended"
                var meta = t.object["system_metadata"]?.objectValue ?? [:]
                meta["old_vm_state"] = t.object["vm_state"] ?? "active"
                final["system_metadata"] = .object(meta)
                expected = "suspending"
            case "rescue_instance":
                if let ref = request.args["rescue_image_ref"]?.stringValue, !ref.isEmpty { args["rescue_image_ref"] = .string(ref) }
                final["vm_state"] = "rescued"
                expected = "rescuing"
            case "unrescue_instance":
                final["vm_state"] = "active"
                expected = "unrescuing"
            case "snapshot_instance":
                // nova-api made the image record and set image_snapshot_pending; the
                // steps and their expected states are nova-compute's.
                guard let image = request.args["image_id"]?.stringValue else {
                    throw RemoteFailure(className: "InvalidInput", module: "nova.exception", message: "snapshot_instance needs image_id")
                }
                args["image_id"] = .string(image)
                if let name = request.args["image"]?["name"]?.stringValue { args["image_name"] = .string(name) }
                try await save(&t, ["task_state": "image_snapshot"], expected: "image_snapshot_pending", ctx)
                try await save(&t, ["task_state": "image_pending_upload"], expected: "image_snapshot", ctx)
                try await save(&t, ["task_state": "image_uploading"], expected: "image_pending_upload", ctx)
                expected = "image_uploading"
            case "backup_instance":
                // A snapshot (task image_backup, set by nova-api) followed by the rotation.
                guard let image = request.args["image_id"]?.stringValue, let type = request.args["backup_type"]?.stringValue,
                      let rotation = request.args["rotation"]?.intValue, rotation >= 0
                else {
                    throw RemoteFailure(className: "InvalidInput", module: "nova.exception",
                                        message: "backup_instance needs image_id, backup_type and a rotation ≥ 0")
                }
                args["image_id"] = .string(image)
                backup = (type, rotation)
                try await save(&t, ["task_state": "image_pending_upload"], expected: "image_backup", ctx)
                try await save(&t, ["task_state": "image_uploading"], expected: "image_pending_upload", ctx)
                expected = "image_uploading"
            case "rebuild_instance":
                // nova-compute's _do_rebuild_instance on the same host; an evacuation
                // (`recreate`) is NovaEvacuate.swift.
                if let ref = (request.args["image_ref"]?.stringValue ?? t.object["image_ref"]?.stringValue), !ref.isEmpty {
                    args["image_ref"] = .string(ref)
                }
                try await save(&t, ["task_state": "rebuilding"], expected: .array(["rebuilding"]), ctx)
                try await save(&t, ["task_state": "rebuild_block_device_mapping"], expected: .array(["rebuilding"]), ctx)
                try await save(&t, ["task_state": "rebuild_spawning"], expected: .array(["rebuild_block_device_mapping"]), ctx)
                final["launched_at"] = .string(novaTimestamp())
                expected = .array(["rebuild_spawning"])
            case "resume_instance":
                var meta = t.object["system_metadata"]?.objectValue ?? [:]
                final["vm_state"] = meta.removeValue(forKey: "old_vm_state") ?? "active"
                final["system_metadata"] = .object(meta)
                expected = "resuming"
            default:
                throw RemoteFailure.noSuchMethod(method)
            }
            let after = try await native(Self.lifecycle[method]!, args, request)
            if method != "snapshot_instance" && method != "backup_instance" { final["power_state"] = after["power_state"] ?? .null }
            if method == "rebuild_instance" {
                // active, or stopped again when it was stopped (nova stops it after the spawn)
                final["vm_state"] = after["vm_state"] ?? "active"
            }
            try await save(&t, final, expected: expected, ctx)
            if let shelvedSnapshot { await deleteShelvedSnapshot(shelvedSnapshot, t.uuid, ctx) }
            if let backup { await rotateBackups(t.uuid, type: backup.type, keep: backup.rotation, ctx) }
            if method == "rebuild_instance" { await plane.schedulerInstanceInfo(t.object.primitive, context: ctx) }
            await eventFinish(t.uuid, event, error: nil, ctx)
            return .null
        } catch {
            guard let why = try await failing(error, "\(method)", t.uuid, event, ctx) else { return .null }
            if method == "snapshot_instance" || method == "backup_instance", let image = request.args["image_id"]?.stringValue {
                // nova's delete_image_on_error: the image record nova-api made goes.
                await deleteImage(image, t.uuid, why: "its snapshot failed", ctx)
            }
            await reportFailure(&t, event: event, why: why, values: ["task_state": .null], ctx)
            return .null
        }
    }

    /// A cast this dialect does not run: reported as nova reports a failed action (the
    /// task state reverts; with `keepVMState` the vm_state is saved as it was).
    func refuse(_ request: RPCRequest, why custom: String? = nil, keepVMState: Bool = false) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let event = "compute_\(request.method)"
        let why = custom ?? "compute-agent does not run \(request.method) in the nova dialect yet (docs/nova-dropin.md)"
        logger.error("nova: \(why)", metadata: ["instance_uuid": "\(t.uuid)"])
        do { try await eventStart(t.uuid, event, ctx) } catch {
            logger.warning("nova: event_start \(event) of \(t.uuid) failed: \(error)")
        }
        var values: [String: JSONValue] = ["task_state": .null]
        if keepVMState { values["vm_state"] = t.object["vm_state"] ?? "active" }
        await reportFailure(&t, event: event, why: why, values: values, ctx)
        return .null
    }

    /// A resize or cold migration this host cannot take, refused where nova's own
    /// destination would refuse it (prep_resize): by then the conductor has made a
    /// Migration and moved the instance's allocation to it (the instance holding the new
    /// flavor's), so the allocation goes back to the instance and the migration to
    /// `error` — nothing stays claimed — and the server keeps its flavor and state.
    func refusePrepResize(_ request: RPCRequest, why: String) async throws -> JSONValue {
        let t = try instanceObject(request)
        if var migration = NovaObject(primitive: request.args["migration"] ?? .null), let id = migration["uuid"]?.stringValue {
            await plane.moveAllocations(from: id, to: t.uuid)
            await errorOut(&migration, request.context)
        }
        return try await refuse(request, why: why, keepVMState: true)
    }

    /// Reports a failed action as nova-compute does: `values` saved (at least nova's
    /// reverts_task_state), an InstanceFault with the reason, and the action's event
    /// finished with it. A save that fails is logged (the fault and event still go).
    func reportFailure(_ t: inout Target, event: String, why: String, values: [String: JSONValue],
                       _ ctx: [String: JSONValue]) async
    {
        do { try await save(&t, values, expected: nil, ctx) } catch {
            logger.warning("nova: could not save \(values.keys.sorted().joined(separator: ", ")) of \(t.uuid) after a failure: \(error)")
        }
        await fault(t.uuid, why, ctx)
        await eventFinish(t.uuid, event, error: why, ctx)
    }

    // MARK: - terminate_instance (5.4)

    func terminate(_ request: RPCRequest) async throws -> JSONValue {
        var t = try instanceObject(request)
        let ctx = request.context
        let event = "compute_terminate_instance"
        try await eventStart(t.uuid, event, ctx)
        do {
            do {
                _ = try await native("terminate_instance", ["instance_uuid": .string(t.uuid)], request)
            } catch let f as RemoteFailureConvertible where f.remoteFailure.className == "InstanceNotFound" {
                // Never built here (or already gone): nothing on the host to remove.
            }
            try await save(&t, ["power_state": 0, "vm_state": "deleted", "task_state": .null,
                                "terminated_at": .string(novaTimestamp())], expected: nil, ctx)
            await plane.deleteAllocation(t.uuid)
            await plane.schedulerInstanceDeleted(t.uuid, context: ctx)
            try await conductor.objectAction(&t.object, "destroy", context: ctx)
            await eventFinish(t.uuid, event, error: nil, ctx)
            return .null
        } catch {
            guard let why = try await failing(error, "terminate", t.uuid, event, ctx) else { return .null }
            await reportFailure(&t, event: event, why: why, values: ["task_state": .null, "vm_state": "error"], ctx)
            return .null
        }
    }
}
