import AgentMetrics
import AgentSupport
import InstanceStore
import Logging
import PluginHost

/// What each action does on the hypervisor, step by step. Each step that matters after a
/// crash is recorded first (`step`), and every plugin operation used here is idempotent
/// or checked before it is repeated, so an interrupted operation can be run again.
extension ComputeManager {
    func carryOut(_ action: InstanceAction, uuid: String, args: [String: JSONValue], context: [String: JSONValue],
                  op: inout StoredOperation, resuming: Bool) async throws -> JSONValue
    {
        let hv = plugins.hypervisor
        guard var r = instances[uuid] else { throw ComputeError.notFound(uuid) }
        let l = log(uuid)
        switch action {
        case .build:
            if resuming {
                if await currentPower(uuid) == .running, op.step == "spawn" {
                    l.info("build interrupted after the domain started: finishing it")
                    return finishBuild(uuid, power: .running)
                }
                l.info("build interrupted at step '\(op.step ?? "accepted")': undoing what was done and building again")
                await rollbackBuild(r, reached: op.step)
            }
            l.info("building instance", metadata: ["vcpus": "\(r.vcpus)", "memory_mb": "\(r.memoryMB)"])
            await step(&op, "fetch")
            if let ref = r.imageRef {
                try await makeInstanceDirectory(uuid)
                let fetched = try await plugins.imageFetcher.fetch(imageRequest(r, ref: ref, dest: r.diskPath, context: context))
                logFetch(l, ref, fetched)
                recordFetch(&r, fetched)
            }
            downloadProgress[uuid] = nil
            Failpoints.hit("build.after_fetch")
            await step(&op, "plug")
            try await plugVIFs(&r, uuid: uuid)
            Failpoints.hit("build.after_plug")
            await step(&op, "spawn")
            // spawn cleans up its own half-defined domain when it fails.
            try await hv.spawn(instance: r.pluginJSON)
            Failpoints.hit("build.after_spawn")
            return finishBuild(uuid, power: await currentPower(uuid) ?? .running)

        case .terminate:
            try await destroyIfPresent(uuid)
            Failpoints.hit("terminate.after_destroy")
            for vif in r.vifs.reversed() { try await plugins.network.unplug(instance: r.pluginJSON, vif: vif) }
            await removeInstanceDirectory(uuid)
            r.vmState = .deleted
            r.taskState = nil
            r.powerState = .noState
            instances[uuid] = r
            l.info("instance is deleted")
            return r.rpcJSON

        case .lock, .unlock:
            r.locked = action == .lock
            r.lockedBy = action == .lock ? (context["is_admin"]?.boolValue == true ? "admin" : "owner") : nil
            instances[uuid] = r
            l.info(action == .lock ? "instance locked" : "instance unlocked", metadata: ["locked_by": "\(r.lockedBy ?? "-")"])
            return r.rpcJSON

        case .stop, .start, .pause, .unpause, .suspend, .resume, .softDelete, .restore:
            let target = Self.expectedPower(action)
            if resuming, let target, await currentPower(uuid) == target {
                l.info("\(action.rpcMethod) was interrupted after it took effect: recording it")
            } else {
                try await powerAction(action, r)
            }
            Failpoints.hit("action.after_plugin")
            return await finish(action, uuid)

        case .softReboot:
            if let failure = await softReboot(uuid) {
                l.warning("soft reboot did not complete (\(failure)); rebooting hard, as nova does")
                await step(&op, "hard", task: .rebootingHard)
                try await hv.reboot(uuid: uuid, hard: true)
            }
            Failpoints.hit("action.after_plugin")
            return await finish(action, uuid)

        case .hardReboot:
            do { try await hv.reboot(uuid: uuid, hard: true) } catch {
                guard error.code == .notFound else { throw error }
                // As nova's hard reboot regenerates the domain: the record is the truth.
                l.warning("hard reboot found no domain; defining it again from the record")
                try await hv.spawn(instance: r.pluginJSON)
            }
            Failpoints.hit("action.after_plugin")
            return await finish(action, uuid)

        case .rescue:
            var rescue: [String: JSONValue] = ["rescue_disk_path": .null]
            if let ref = args["rescue_image_ref"]?.stringValue ?? r.imageRef {
                try await makeInstanceDirectory(uuid)
                let path = "\(instanceDirectory(uuid))/disk.rescue"
                _ = try await plugins.imageFetcher.fetch(imageRequest(r, ref: ref, dest: path, context: context, checked: false))
                rescue["rescue_disk_path"] = .string(path)
            }
            try await hv.rescue(instance: r.pluginJSON, rescue: .object(rescue))
            Failpoints.hit("action.after_plugin")
            return await finish(action, uuid)

        case .unrescue:
            try await hv.unrescue(instance: r.pluginJSON)
            await removeFile("\(instanceDirectory(uuid))/disk.rescue")
            return await finish(action, uuid)

        case .snapshot:
            let imageID = args["image_id"]?.stringValue ?? op.id
            let name = args["image_name"]?.stringValue ?? args["name"]?.stringValue ?? "\(r.name)-snapshot"
            try await makeInstanceDirectory(uuid)
            let temp = "\(instanceDirectory(uuid))/snapshot-\(imageID).part"
            let snap = try await hv.snapshot(uuid: uuid, destPath: temp)
            await step(&op, "upload", task: .imageUploading)
            let uploaded: JSONValue
            do {
                var req: [String: JSONValue] = [
                    "source_path": .string(temp), "image_name": .string(name), "image_id": .string(imageID),
                    "disk_format": snap["disk_format"] ?? "raw", "instance_uuid": .string(uuid),
                ]
                if let base = r.imageRef { req["base_image_ref"] = .string(base) }
                if let token = authTokens[uuid] { req["auth_token"] = .string(token) }
                uploaded = try await plugins.imageFetcher.upload(.object(req))
            } catch {
                await removeFile(temp)
                throw error
            }
            await removeFile(temp)
            _ = await finish(action, uuid)
            l.info("snapshot stored", metadata: ["image_ref": "\(uploaded["image_ref"]?.stringValue ?? "?")"])
            return .object(["image_id": .string(imageID), "image_ref": uploaded["image_ref"] ?? .null,
                            "size": uploaded["size"] ?? .null, "checksum": uploaded["checksum"] ?? .null,
                            "instance": instances[uuid]?.rpcJSON ?? .null])

        case .rebuild:
            let wasStopped = r.vmState == .stopped || (resuming && op.step != nil && r.powerState.isOff && r.vmState == .stopped)
            if let v = args["image_ref"], !v.isNull {
                guard let ref = v.stringValue else { throw ComputeError.invalidInput("'image_ref' must be a string, got \(v.typeName)") }
                r.imageRef = ref
                r.imageChecksum = args["image_checksum"]?.stringValue
                instances[uuid] = r
            }
            try await destroyIfPresent(uuid)
            await step(&op, "spawn", task: .rebuildSpawning)
            if let ref = r.imageRef {
                try await makeInstanceDirectory(uuid)
                let fetched = try await plugins.imageFetcher.fetch(imageRequest(r, ref: ref, dest: r.diskPath, context: context))
                logFetch(l, ref, fetched)
            }
            try await hv.spawn(instance: r.pluginJSON)
            if wasStopped { try await hv.perform(.powerOff, uuid: uuid) }
            Failpoints.hit("action.after_plugin")
            return await finish(action, uuid, state: wasStopped ? .stopped : .active)

        case .resize:
            let new = try ResizeRequest(args: args).flavor
            if !resuming || r.oldFlavor == nil {
                r.oldFlavor = r.flavor
                r.flavor = new
                instances[uuid] = r
            }
            await step(&op, "resize", task: .resizeFinish)
            try await hv.resize(instance: r.pluginJSON)
            Failpoints.hit("action.after_plugin")
            return await finish(action, uuid)

        case .confirmResize:
            r.oldFlavor = nil
            instances[uuid] = r
            return await finish(action, uuid, state: r.powerState.isOff ? .stopped : .active)

        case .revertResize:
            guard let old = r.oldFlavor else { return await finish(action, uuid, state: r.powerState.isOff ? .stopped : .active) }
            var reverted = r
            reverted.flavor = old
            try await hv.resize(instance: reverted.pluginJSON)
            reverted.oldFlavor = nil
            instances[uuid] = reverted
            return await finish(action, uuid, state: (await currentPower(uuid) ?? r.powerState).isOff ? .stopped : .active)
        }
    }

    /// The power state a simple action leaves the domain in (to recognise, after a crash,
    /// an action that already took effect).
    static func expectedPower(_ action: InstanceAction) -> PowerState? {
        switch action {
        case .stop, .softDelete: return .shutdown
        case .start, .unpause, .resume, .restore: return .running
        case .pause: return .paused
        case .suspend: return .suspended
        default: return nil
        }
    }

    /// Destroys the domain; a domain that is already gone is fine.
    func destroyIfPresent(_ uuid: String) async throws {
        do { try await plugins.hypervisor.destroy(uuid: uuid) } catch {
            if error.code != .notFound { throw error }
        }
    }

    /// A soft reboot within `soft_reboot_timeout`; nil when it worked, else why not.
    private func softReboot(_ uuid: String) async -> PluginError? {
        do {
            try await plugins.hypervisor.reboot(uuid: uuid, hard: false, timeout: settings.softRebootTimeout)
            return nil
        } catch { return error }
    }

    private func powerAction(_ action: InstanceAction, _ r: InstanceRecord) async throws {
        let hv = plugins.hypervisor
        switch action {
        case .stop: try await hv.perform(.powerOff, uuid: r.uuid)
        case .start, .restore: try await hv.perform(.powerOn, uuid: r.uuid)
        case .pause: try await hv.perform(.pause, uuid: r.uuid)
        case .unpause: try await hv.perform(.unpause, uuid: r.uuid)
        case .suspend: try await hv.perform(.suspend, uuid: r.uuid)
        case .resume: try await hv.perform(.resume, uuid: r.uuid)
        case .softDelete: if r.powerState != .shutdown { try await hv.perform(.powerOff, uuid: r.uuid) }
        default: break
        }
    }

    private func finishBuild(_ uuid: String, power: PowerState) -> JSONValue {
        guard var r = instances[uuid] else { return .null }
        r.powerState = power
        r.vmState = .active
        r.taskState = nil
        r.fault = nil
        r.launchedAt = utcTimestamp()
        instances[uuid] = r
        log(uuid).info("instance is active", metadata: ["power_state": "\(power.name)"])
        return r.rpcJSON
    }

    /// Records the end of a successful action: the resulting vm_state, no task, the
    /// hypervisor's power state.
    private func finish(_ action: InstanceAction, _ uuid: String, state: VMState? = nil) async -> JSONValue {
        let power = await currentPower(uuid)
        guard var r = instances[uuid] else { return .null }
        r.taskState = nil
        r.vmState = state ?? action.resultingState ?? r.vmState
        r.fault = nil
        if let power { r.powerState = power }
        if action == .softDelete { r.softDeletedAt = Double(time(nil)) }
        if action == .restore { r.softDeletedAt = nil }
        instances[uuid] = r
        log(uuid).info("instance is \(r.vmState.rawValue)", metadata: [
            "action": "\(action.rpcMethod)", "power_state": "\(r.powerState.name)",
        ])
        return r.rpcJSON
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// The arguments of build_and_run_instance, checked before anything is created.
///
/// Accepted: `instance` = {uuid, name (or display_name), vcpus, memory_mb, root_gb,
/// image_ref, image_checksum, vifs}; flavor figures may instead come in `flavor` =
/// {vcpus, memory_mb, root_gb, name}, and `image_ref` at top level.
extension ComputeManager {
    /// Plugs each VIF, keeping what the network plugin says the domain needs for it (ABI
    /// 1.2 `plug_vif`) as the VIF's `domain`, in the record and the journal, so the
    /// hypervisor plugin builds the right `<interface>` now and after a restart.
    func plugVIFs(_ r: inout InstanceRecord, uuid: String) async throws {
        var vifs = r.vifs
        let instance = r.pluginJSON.serialized()
        for (n, vif) in vifs.enumerated() {
            if let domain = try await plugins.network.plug(instanceJSON: instance, vif: vif), case .object(var o) = vif {
                o["domain"] = domain
                vifs[n] = .object(o)
            }
        }
        if vifs != r.vifs {
            r.vifs = vifs
            instances[uuid] = r
            await persist([.putInstance(uuid: uuid, body: r.storeJSON)], uuid: uuid)
        }
    }

    /// The image-fetch request of the plugin ABI: where to put which image, the flavor's
    /// root size (a plugin that makes overlays sizes the disk by it; 0 = the image's size),
    /// the expected checksum, and the caller's token (`X-Auth-Token` for Glance).
    func imageRequest(_ r: InstanceRecord, ref: String, dest: String, context: [String: JSONValue],
                      checked: Bool = true) -> JSONValue
    {
        var req: [String: JSONValue] = ["image_ref": .string(ref), "dest_path": .string(dest), "root_gb": .int(Int64(r.rootGB))]
        if checked, let c = r.imageChecksum { req["checksum"] = .string(c) }
        if checked, r.rootGB > 0 { req["max_bytes"] = .int(Int64(r.rootGB) << 30) }
        if let token = authTokens[r.uuid] ?? context["auth_token"]?.stringValue, !token.isEmpty { req["auth_token"] = .string(token) }
        req["instance_uuid"] = .string(r.uuid)
        return .object(req)
    }

    /// What a fetch gave the record (journalled with it): a three-part image's kernel and
    /// ramdisk paths and command line for the hypervisor, and the download's figures
    /// (bytes, seconds, rate, whether it came from the cache).
    func recordFetch(_ r: inout InstanceRecord, _ fetched: JSONValue) {
        var boot: [String: JSONValue] = [:]
        for k in ["kernel_path", "ramdisk_path", "kernel_cmdline"] { if let v = fetched[k], !v.isNull { boot[k] = v } }
        var stats: [String: JSONValue] = [:]
        for k in ["bytes", "seconds", "rate_mb_s", "downloaded"] { if let v = fetched[k], !v.isNull { stats[k] = v } }
        r.directBoot = boot
        r.imageFetch = stats
        instances[r.uuid] = r
    }

    /// One line per fetch with what the plugin measured (bytes, seconds, rate, cached).
    func logFetch(_ l: Logger, _ ref: String, _ result: JSONValue) {
        if let downloaded = result["downloaded"]?.boolValue {
            AgentMetrics.shared.count(downloaded ? "compute_agent_image_cache_misses_total" : "compute_agent_image_cache_hits_total",
                                      help: downloaded ? "Image fetches that had to download the image" : "Image fetches served from the image cache")
            if downloaded, let bytes = result["bytes"]?.intValue {
                AgentMetrics.shared.count("compute_agent_image_downloaded_bytes_total", by: Int64(bytes),
                                          help: "Bytes of images downloaded by the image plugin")
            }
        }
        var meta: Logger.Metadata = ["image_ref": "\(ref)"]
        for k in ["bytes", "seconds", "rate_mb_s", "downloaded", "base_path"] {
            if let v = result[k], !v.isNull { meta[k] = "\(v.stringValue ?? v.serialized())" }
        }
        l.info("image ready", metadata: meta)
    }
}

struct BuildRequest {
    var uuid: String
    var name: String
    var flavor: Flavor
    var imageRef: String?
    var checksum: String?
    var vifs: [JSONValue]

    init(args: [String: JSONValue]) throws(ComputeError) {
        guard let instance = args["instance"] else { throw .invalidInput("build_and_run_instance needs an 'instance' argument") }
        guard case .object(let i) = instance else { throw .invalidInput("'instance' must be an object, got \(instance.typeName)") }
        if let f = args["flavor"] ?? i["flavor"], !f.isNull, f.objectValue == nil {
            throw .invalidInput("'flavor' must be an object, got \(f.typeName)")
        }
        let flavorArgs = args["flavor"]?.objectValue ?? i["flavor"]?.objectValue ?? [:]
        guard let u = i["uuid"] else { throw .invalidInput("instance has no 'uuid'") }
        guard let uuid = u.stringValue, Self.isUUID(uuid) else { throw .invalidInput("'uuid' must be a UUID string, got \(u.serialized())") }
        self.uuid = uuid.lowercased()
        func optionalString(_ key: String) throws(ComputeError) -> String? {
            guard let v = i[key], !v.isNull else { return nil }
            guard let s = v.stringValue else { throw .invalidInput("'\(key)' must be a string, got \(v.typeName)") }
            return s
        }
        if let n = try optionalString("name") {
            name = n
        } else if let n = try optionalString("display_name") {
            name = n
        } else {
            name = "instance-\(uuid.prefix(8))"
        }
        try Self.limit("name", name, Self.maxNameLength)
        flavor = try parseFlavor(i, flavorArgs, what: "instance")
        try Self.limit("flavor name", flavor.name, Self.maxNameLength)
        let ref = i["image_ref"] ?? args["image_ref"]
        if let ref, !ref.isNull {
            guard let s = ref.stringValue else { throw .invalidInput("'image_ref' must be a string, got \(ref.typeName)") }
            try Self.limit("image_ref", s, Self.maxImageRefLength)
            imageRef = s.isEmpty ? nil : s
        }
        checksum = try optionalString("image_checksum")
        if let checksum { try Self.limit("image_checksum", checksum, 256) }
        switch i["vifs"] ?? args["network_info"] {
        case nil, .null?: vifs = []
        case .array(let a)?:
            guard a.count <= Self.maxVIFs else {
                throw .invalidInput("an instance has at most \(Self.maxVIFs) network interfaces, got \(a.count)")
            }
            var ids = Set<String>()
            for v in a {
                let id = try Self.checkVIF(v)
                guard ids.insert(id).inserted else { throw .invalidInput("two VIFs have the port id '\(id)'") }
            }
            vifs = a
        case let other?: throw .invalidInput("'vifs' must be a list, got \(other.typeName)")
        }
        if let m = i["metadata"], !m.isNull {
            guard case .object(let meta) = m else { throw .invalidInput("'metadata' must be an object, got \(m.typeName)") }
            guard meta.count <= Self.maxMetadataItems else {
                throw .invalidInput("'metadata' has at most \(Self.maxMetadataItems) items, got \(meta.count)")
            }
            for (k, v) in meta {
                try Self.limit("metadata key", k, Self.maxNameLength)
                guard let s = v.stringValue else { throw .invalidInput("metadata values must be strings, got \(v.typeName)") }
                try Self.limit("metadata value", s, Self.maxNameLength)
            }
        }
    }

    /// The API's limits (nova's where nova has one: names and metadata keys/values are
    /// 255 characters, 128 metadata items). docs/rpc-api.md lists them.
    static let maxNameLength = 255
    static let maxImageRefLength = 4096
    static let maxVIFs = 64
    static let maxMetadataItems = 128

    /// A VIF in nova's network model (docs/rpc-api.md): an object with a string `id`; when
    /// present, a MAC `address`, a known `type`, interface names of at most 15 bytes (the
    /// kernel's limit), an MTU and a VLAN id in range. Returns the id.
    static func checkVIF(_ v: JSONValue) throws(ComputeError) -> String {
        guard case .object(let o) = v else { throw .invalidInput("a VIF must be an object, got \(v.typeName)") }
        guard let id = o["id"]?.stringValue, !id.isEmpty, id.count <= maxNameLength else {
            throw .invalidInput("a VIF needs a string 'id' (its port id) of 1 to \(maxNameLength) characters")
        }
        if let m = o["address"], !m.isNull {
            guard let mac = m.stringValue, isMAC(mac) else { throw .invalidInput("VIF \(id): 'address' must be a MAC address, got \(m.serialized())") }
        }
        if let t = o["type"], !t.isNull {
            guard let type = t.stringValue, ["bridge", "ovs", "ethernet"].contains(type) else {
                throw .invalidInput("VIF \(id): unknown type \(t.serialized()) (bridge, ovs or ethernet)")
            }
        }
        let network = o["network"]?.objectValue
        if let n = o["network"], !n.isNull, network == nil { throw .invalidInput("VIF \(id): 'network' must be an object") }
        for (what, value) in [("devname", o["devname"]), ("network.bridge", network?["bridge"]), ("bridge", o["bridge"])] {
            guard let value, !value.isNull else { continue }
            guard let name = value.stringValue, !name.isEmpty, name.utf8.count <= 15,
                  name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") }) else {
                throw .invalidInput("VIF \(id): '\(what)' must be an interface name of 1 to 15 printable bytes, got \(value.serialized())")
            }
        }
        let meta = network?["meta"]
        if let m = meta?["mtu"], !m.isNull {
            guard let mtu = m.intValue, (68...65535).contains(mtu) else { throw .invalidInput("VIF \(id): mtu must be 68 to 65535, got \(m.serialized())") }
        }
        if let vl = meta?["vlan"], !vl.isNull {
            guard let vlan = vl.intValue, (1...4094).contains(vlan) else { throw .invalidInput("VIF \(id): vlan must be 1 to 4094, got \(vl.serialized())") }
        }
        return id
    }

    static func isMAC(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard b.count == 17 else { return false }
        for (i, c) in b.enumerated() {
            if i % 3 == 2 { if c != UInt8(ascii: ":") { return false } } else {
                let hex = (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)
                if !hex { return false }
            }
        }
        return true
    }

    static func limit(_ what: String, _ value: String, _ max: Int) throws(ComputeError) {
        guard value.count <= max else {
            throw .invalidInput("'\(what)' is at most \(max) characters, got \(value.count)")
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

/// The new flavor of resize_instance: `flavor` (or nova's `instance_type`) = {vcpus,
/// memory_mb, root_gb, name}.
struct ResizeRequest {
    var flavor: Flavor

    init(args: [String: JSONValue]) throws(ComputeError) {
        guard let f = args["flavor"] ?? args["instance_type"] else { throw .invalidInput("resize_instance needs a 'flavor' argument") }
        guard case .object(let o) = f else { throw .invalidInput("'flavor' must be an object, got \(f.typeName)") }
        flavor = try parseFlavor(o, [:], what: "flavor")
    }
}

/// vcpus, memory_mb, root_gb (optional, default 0) and name, from `primary` or `fallback`.
private func parseFlavor(_ primary: [String: JSONValue], _ fallback: [String: JSONValue], what: String) throws(ComputeError) -> Flavor {
    func int(_ key: String, min: Int, default d: Int? = nil) throws(ComputeError) -> Int {
        guard let v = primary[key] ?? fallback[key], !v.isNull else {
            if let d { return d }
            throw .invalidInput("\(what) has no '\(key)'")
        }
        guard let n = v.intValue else { throw .invalidInput("'\(key)' must be an integer, got \(v.typeName)") }
        guard n >= min else { throw .invalidInput("'\(key)' must be at least \(min), got \(n)") }
        return n
    }
    let name = (fallback["name"] ?? (what == "flavor" ? primary["name"] : nil))?.stringValue ?? ""
    return Flavor(vcpus: try int("vcpus", min: 1), memoryMB: try int("memory_mb", min: 1),
                  rootGB: try int("root_gb", min: 0, default: 0), name: name)
}
