import AgentSupport
import InstanceStore
import Logging
import Messaging
import PluginHost

#if canImport(Glibc)
import Glibc
#endif

/// The compute manager: the agent's RPC API, the instance lifecycle, the resource
/// tracker and the host's capabilities. It owns the instance records and enforces the
/// state table (`InstanceAction`); plugins only carry out what it has decided.
///
/// Every state-changing action is journalled in the instance store before it starts
/// (the record with its task_state and the operation, in one transaction) and again when
/// it ends, so that after a crash `recover()` knows exactly what was in flight. Actions on
/// one instance hold that instance's lock (`KeyedFIFOLock`) for their whole run.
public actor ComputeManager {
    public static let apiVersion = "1.1"
    public static let agentVersion = "0.2.0"

    public struct Settings: Sendable {
        public var host: String
        public var statePath: String
        public var resources = ResourceTracker.Settings()
        public var maxConcurrentBuilds = 10
        /// How long a soft reboot may take before the agent reboots hard (nova's
        /// `wait_soft_reboot_seconds`).
        public var softRebootTimeout = 120.0
        /// How many times an operation interrupted by restarts is retried before the
        /// instance goes to ERROR.
        public var maxOperationAttempts = 3
        /// Finished operations kept for redelivery detection.
        public var operationsKept = 10_000
        /// nova's `[image_cache]` options for the cache manager pass.
        public var removeUnusedBaseImages = true
        public var originalMinimumAge = 86_400
        public var resizedMinimumAge = 3600

        public init(host: String, statePath: String) {
            self.host = host
            self.statePath = statePath
        }
    }

    let settings: Settings
    let plugins: PluginSet
    let store: InstanceStore
    let notifier: InstanceNotifier
    let logger: Logger
    let startedAt = monotonicSeconds()
    let locks = KeyedFIFOLock()
    let builds: AsyncLimiter

    var instances: [String: InstanceRecord] = [:] {
        // No oldValue: Swift then mutates the dictionary in place (SE-0268).
        didSet { recordsRevision &+= 1 }
    }
    /// Bumped on every change of `instances`; keys the cached usage.
    var recordsRevision: UInt64 = 0
    var cachedUsage: (revision: UInt64, usage: ResourceTracker.Usage)?

    /// What the records hold (claims), recomputed only after a record changed: the
    /// audit, the capabilities and every claim read it.
    var usage: ResourceTracker.Usage {
        if let c = cachedUsage, c.revision == recordsRevision { return c.usage }
        let u = ResourceTracker.usage(of: instances.values)
        cachedUsage = (recordsRevision, u)
        return u
    }
    /// The unfinished operation of each instance, by instance uuid.
    var openOperations: [String: StoredOperation] = [:]
    var tracker: ResourceTracker
    var lastAudit: ResourceAudit?
    var lastHostInfo: JSONValue = .object([:])
    var unmanagedDomains: [String: String] = [:]
    /// Why the journal cannot be written (full disk, read-only, I/O error), while it cannot;
    /// and how many writes in a row failed (sets the requeue delay).
    public private(set) var journalProblem: String?
    /// The auth token of the request running for an instance (not journalled).
    var authTokens: [String: String] = [:]
    /// How far the image download of a building instance has got (from plugin
    /// `progress` events; in memory only, gone when the build ends).
    var downloadProgress: [String: (bytes: Int, total: Int)] = [:]

    /// A plugin's `{"event": "progress", "uuid", "bytes", "total"}` for a download.
    public func recordProgress(uuid: String, _ event: JSONValue) {
        guard instances[uuid]?.vmState == .building, let bytes = event["bytes"]?.intValue else { return }
        downloadProgress[uuid] = (bytes, event["total"]?.intValue ?? 0)
    }
    var journalFailures = 0

    public init(settings: Settings, plugins: PluginSet, store: InstanceStore, notifier: InstanceNotifier, logger: Logger) {
        self.settings = settings
        self.plugins = plugins
        self.store = store
        self.notifier = notifier
        self.logger = logger
        self.tracker = ResourceTracker(settings: settings.resources)
        self.builds = AsyncLimiter(limit: settings.maxConcurrentBuilds)
    }

    public nonisolated var host: String { settings.host }
    public var instancesPath: String { settings.statePath + "/instances" }
    public nonisolated var uptime: Double { monotonicSeconds() - startedAt }
    public var instanceCount: Int { instances.count }

    /// Instances by vm_state and by power_state name, and builds in progress (for the
    /// metrics; every known state is present, 0 when none is in it).
    public func stateCounts() -> (vmStates: [String: Int], powerStates: [String: Int], building: Int) {
        var vm = Dictionary(uniqueKeysWithValues: VMState.allCases.map { ($0.rawValue, 0) })
        var power = Dictionary(uniqueKeysWithValues: PowerState.allCases.map { ($0.name, 0) })
        for r in instances.values {
            vm[r.vmState.rawValue, default: 0] += 1
            power[r.powerState.name, default: 0] += 1
        }
        return (vm, power, vm[VMState.building.rawValue] ?? 0)
    }

    func log(_ uuid: String) -> Logger {
        var l = logger
        l[metadataKey: "instance_uuid"] = "\(uuid)"
        return l
    }

    // MARK: - Accepting an action

    /// Runs a state-changing request: checks it, records it durably, acks the message,
    /// carries it out and records the outcome. A message whose `_unique_id` is already in
    /// the journal (a redelivery) is acked and not run again.
    func execute(_ action: InstanceAction, uuid: String, args: [String: JSONValue], context: [String: JSONValue],
                 uniqueID: String?, delivery: DeliveryAcknowledger) async throws -> JSONValue
    {
        if let id = uniqueID, let done = try await storeRead({ try await self.store.operation(id: id) }) {
            log(uuid).warning("redelivered message for an operation already accepted: not run again",
                              metadata: ["unique_id": "\(id)", "operation_state": "\(done.state.rawValue)"])
            delivery.acknowledge()
            if let r = done.result, done.state == .done { return r }
            return instances[uuid]?.rpcJSON ?? .object(["uuid": .string(uuid), "vm_state": "deleted"])
        }
        Failpoints.hit("rpc.before_record")
        // The caller's token is a secret: it is kept in memory for the run (image downloads
        // pass it on), never written to the journal.
        var storedContext = context
        let token = storedContext.removeValue(forKey: "auth_token")?.stringValue
        let opArgs: JSONValue = .object(["args": .object(args), "context": .object(storedContext)])
        // Checked before waiting for the lock, so bad input is refused at once.
        if action == .build { _ = try BuildRequest(args: args) }
        let ticket = locks.ticket(uuid)
        await locks.acquire(ticket)
        defer { locks.release(ticket) }

        if let open = openOperations[uuid], open.method == action.rawValue, open.args == opArgs {
            log(uuid).warning("the same action is already in progress for this instance: not run twice",
                              metadata: ["operation": "\(open.id)"])
            delivery.acknowledge()
            return instances[uuid]?.rpcJSON ?? .null
        }
        if action == .build { await ensureTotals() }
        let isAdmin = context["is_admin"]?.boolValue == true
        guard var record = try admit(action, uuid: uuid, args: args, context: context, isAdmin: isAdmin) else {
            return try await terminateUnknown(uuid)
        }
        let op = StoredOperation(id: uniqueID ?? randomUUID(), instanceUUID: uuid, method: action.rawValue, args: opArgs,
                                 state: .running, step: "accepted", attempts: 1)
        let before = instances[uuid]
        if action.taskState != nil { record.taskState = action.taskState }
        instances[uuid] = record
        do {
            try await store.write([.putInstance(uuid: uuid, body: record.storeJSON), .putOperation(op)])
            journalWritten()
        } catch {
            instances[uuid] = before
            let delay = journalFailed(error)
            log(uuid).error("could not record the action; it stays with the broker and is retried in \(delay) s: \(error)")
            throw ComputeError(code: .storeFailure, message: "the agent could not record the action: \(error)", kwargs: [:],
                               requeueAfter: delay)
        }
        openOperations[uuid] = op
        if let token { authTokens[uuid] = token }
        Failpoints.hit("rpc.after_record")
        delivery.acknowledge()
        return try await run(action, op: op, resuming: false)
    }

    /// The state-table, lock and resource checks; returns the record to start from, or nil
    /// for a terminate of an instance the agent does not have.
    private func admit(_ action: InstanceAction, uuid: String, args: [String: JSONValue], context: [String: JSONValue],
                       isAdmin: Bool) throws -> InstanceRecord?
    {
        if action == .build {
            let spec = try BuildRequest(args: args)
            if let existing = instances[uuid], existing.vmState != .deleted {
                throw ComputeError(code: .exists, message: "Instance \(uuid) already exists.", kwargs: ["name": .string(uuid)])
            }
            try tracker.check(spec.flavor, used: usage)
            var r = InstanceRecord(uuid: uuid, name: spec.name, flavor: spec.flavor, imageRef: spec.imageRef,
                                   imageChecksum: spec.checksum, vifs: spec.vifs, vmState: .building, taskState: .spawning,
                                   powerState: .noState, diskPath: "\(instancesPath)/\(uuid)/disk")
            r.projectID = context["project_id"]?.stringValue ?? context["tenant"]?.stringValue
            r.userID = context["user_id"]?.stringValue ?? context["user"]?.stringValue
            return r
        }
        guard let record = instances[uuid], record.vmState != .deleted else {
            if action == .terminate { return nil }
            throw ComputeError.notFound(uuid)
        }
        if let refusal = action.refusal(uuid: uuid, vmState: record.vmState, taskState: record.taskState) { throw refusal }
        if action.checksLock, record.locked, !isAdmin { throw ComputeError.locked(uuid) }
        if action == .unlock, record.lockedBy == "admin", !isAdmin {
            throw ComputeError(code: .locked, message: "Instance \(uuid) is locked by an administrator; only an administrator can unlock it",
                               kwargs: ["instance_uuid": .string(uuid)])
        }
        if action == .resize {
            let new = try ResizeRequest(args: args).flavor
            if new.rootGB < record.flavor.rootGB {
                throw ComputeError(code: .resizeError, message: "Resize error: Unable to resize disk down.",
                                   kwargs: ["reason": "Unable to resize disk down."])
            }
            // The new flavor is claimed while the old one stays held (same-host resize).
            try tracker.check(new, used: usage)
        }
        return record
    }

    /// Terminate of an instance the agent has no record of: make sure the hypervisor has
    /// nothing under that uuid, then succeed (terminate is idempotent).
    private func terminateUnknown(_ uuid: String) async throws -> JSONValue {
        do {
            try await plugins.hypervisor.destroy(uuid: uuid)
            log(uuid).warning("terminate of an instance without a record: destroyed its domain")
            unmanagedDomains[uuid] = nil
        } catch {
            if error.code != .notFound { throw error }
            log(uuid).info("terminate of an unknown instance: nothing to do")
        }
        return .object(["uuid": .string(uuid), "vm_state": .string(VMState.deleted.rawValue)])
    }

    // MARK: - Running an accepted operation

    /// Carries out `op` (fresh, or resumed after a restart) and records its outcome.
    func run(_ action: InstanceAction, op: StoredOperation, resuming: Bool) async throws -> JSONValue {
        var op = op
        let uuid = op.instanceUUID
        let args = op.args["args"]?.objectValue ?? [:]
        let context = op.args["context"]?.objectValue ?? [:]
        if let r = instances[uuid] { notify(action, "start", r) }
        if action == .build {
            await builds.acquire()
        }
        defer { if action == .build { builds.release() } }
        do {
            let result = try await carryOut(action, uuid: uuid, args: args, context: context, op: &op, resuming: resuming)
            op.state = .done
            op.result = result
            let record = instances[uuid]
            var changes: [InstanceStore.Change] = [.putOperation(op)]
            if let record, record.vmState != .deleted {
                changes.append(.putInstance(uuid: uuid, body: record.storeJSON))
            } else {
                changes.append(.deleteInstance(uuid: uuid))
                instances[uuid] = nil
            }
            openOperations[uuid] = nil
            authTokens[uuid] = nil
            await persist(changes, uuid: uuid)
            if let record { notify(action, "end", record) }
            return result
        } catch {
            let failure = await recordFailure(action, uuid: uuid, error: error, step: op.step)
            op.state = .failed
            op.result = .object(["error": .string(failure.code.rawValue), "message": .string(failure.message)])
            openOperations[uuid] = nil
            authTokens[uuid] = nil
            var changes: [InstanceStore.Change] = [.putOperation(op)]
            if let r = instances[uuid] { changes.append(.putInstance(uuid: uuid, body: r.storeJSON)) }
            await persist(changes, uuid: uuid)
            if let r = instances[uuid] { notify(action, "error", r, message: failure.message) }
            throw failure
        }
    }

    /// Writes a completed step; a store failure here is logged loudly (the action has
    /// happened on the hypervisor; the next start-up reconciles the record).
    func persist(_ changes: [InstanceStore.Change], uuid: String) async {
        do {
            try await store.write(changes)
            journalWritten()
        } catch {
            _ = journalFailed(error)
            log(uuid).critical("could not record the outcome in the instance store: \(error)")
        }
    }

    /// A journal write failed: remember why (STATUS, health) and return the delay before
    /// the message that could not be recorded goes back to the broker (1, 2, 4 … 30 s).
    func journalFailed(_ error: any Error) -> Double {
        journalFailures += 1
        if journalProblem == nil { logger.critical("the instance journal cannot be written: \(error)") }
        journalProblem = "\(error)"
        return min(30, Double(1 << min(journalFailures - 1, 5)))
    }

    /// A journal write succeeded: the condition (if any) is over.
    func journalWritten() {
        if journalProblem != nil { logger.notice("the instance journal is writable again") }
        journalProblem = nil
        journalFailures = 0
    }

    /// Records how far an operation got.
    func step(_ op: inout StoredOperation, _ name: String, task: TaskState? = nil) async {
        op.step = name
        var changes: [InstanceStore.Change] = [.putOperation(op)]
        if let task, var r = instances[op.instanceUUID] {
            r.taskState = task
            instances[op.instanceUUID] = r
            changes.append(.putInstance(uuid: r.uuid, body: r.storeJSON))
        }
        await persist(changes, uuid: op.instanceUUID)
    }

    /// After a failed action: roll back what applies, clear the task, keep the reason.
    /// `step` is how far the action got (a failed build names it: fetch, plug, spawn).
    private func recordFailure(_ action: InstanceAction, uuid: String, error: Error, step: String?) async -> ComputeError {
        let reason = "\(error)"
        let l = log(uuid)
        guard var r = instances[uuid] else {
            return error as? ComputeError ?? ComputeError(code: .hypervisorFailure, message: reason, kwargs: [:])
        }
        switch action {
        case .build:
            l.error("build failed, rolling back: \(reason)")
            await rollbackBuild(r)
            r.vmState = .error
            r.powerState = .noState
            r.holdsResources = false
            r.fault = reason
            r.taskState = nil
            instances[uuid] = r
            return ComputeError(code: .buildFailed, message: "Build of instance \(uuid) aborted: \(reason)",
                                kwargs: ["instance_uuid": .string(uuid), "reason": .string(reason), "step": step.map { .string($0) } ?? .null])
        case .resize:
            if let old = r.oldFlavor {
                r.flavor = old
                r.oldFlavor = nil
            }
        case .rebuild:
            // The old domain is gone and the new one did not start: nova leaves it in ERROR.
            r.vmState = .error
        default: break
        }
        r.taskState = nil
        let pluginCode = (error as? PluginError)?.code
        if pluginCode != .notSupported { r.fault = reason }
        if let p = await currentPower(uuid) { r.powerState = p }
        instances[uuid] = r
        l.warning("\(action.rpcMethod) failed: \(reason)")
        if let c = error as? ComputeError { return c }
        return ComputeError(code: pluginCode == .notSupported ? .notSupported : .hypervisorFailure,
                            message: "\(action.rpcMethod) of instance \(uuid) failed: \(reason)",
                            kwargs: ["instance_uuid": .string(uuid)])
    }

    /// Undoes a build: the domain, the VIFs, the disk. Every step is idempotent. With
    /// `reached` (the journalled step of an interrupted build), only what that step can
    /// have done is undone.
    func rollbackBuild(_ r: InstanceRecord, reached: String? = nil) async {
        let order = ["accepted", "fetch", "plug", "spawn"]
        let reachedIndex = reached.flatMap { order.firstIndex(of: $0) } ?? order.count
        if reachedIndex >= 3 {
            do { try await plugins.hypervisor.destroy(uuid: r.uuid) } catch {
                if error.code != .notFound { log(r.uuid).error("rollback: could not destroy the domain: \(error)") }
            }
        }
        for vif in r.vifs.reversed() where reachedIndex >= 2 {
            do { try await plugins.network.unplug(instance: r.pluginJSON, vif: vif) } catch {
                log(r.uuid).error("rollback: could not unplug a VIF: \(error)")
            }
        }
        await removeInstanceDirectory(r.uuid)
    }

    /// The hypervisor's power state of one instance; nil if it cannot tell.
    func currentPower(_ uuid: String) async -> PowerState? {
        do {
            return try await plugins.hypervisor.info(uuid: uuid)["power_state"]?.intValue.flatMap(PowerState.init(rawValue:))
        } catch { return error.code == .notFound ? .noState : nil }
    }

    func notify(_ action: InstanceAction, _ phase: String, _ r: InstanceRecord, message: String? = nil) {
        notifier.emit(priority: phase == "error" ? "error" : "info",
                      eventType: "compute.instance.\(action.notificationEvent).\(phase)",
                      payload: r.notificationPayload(host: host, message: message))
    }

    // MARK: - Files (on the blocking executor, never on the cooperative pool)

    func instanceDirectory(_ uuid: String) -> String { "\(instancesPath)/\(uuid)" }

    func makeInstanceDirectory(_ uuid: String) async throws {
        let dir = instanceDirectory(uuid)
        let rc = try await plugins.executor.run(timeout: 30) { () -> Int32 in
            mkdir(dir, 0o750) == 0 || errno == EEXIST ? 0 : errno
        }
        if rc != 0 { throw ComputeError(code: .hypervisorFailure, message: "cannot create \(dir): \(String(cString: strerror(rc)))", kwargs: [:]) }
    }

    func removeInstanceDirectory(_ uuid: String) async {
        let dir = instanceDirectory(uuid)
        _ = try? await plugins.executor.run(timeout: 30) {
            if let d = opendir(dir) {
                while let e = readdir(d) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                    if name != "." && name != ".." { unlink("\(dir)/\(name)") }
                }
                closedir(d)
            }
            rmdir(dir)
        }
    }

    func removeFile(_ path: String) async {
        _ = try? await plugins.executor.run(timeout: 30) { unlink(path) }
    }

    /// Total and free GiB of the file system that holds the instances.
    func diskGB() async -> (Int, Int) {
        let path = instancesPath, fallback = settings.statePath
        return (try? await plugins.executor.run(timeout: 30) { () -> (Int, Int) in
            var s = statvfs()
            let p = access(path, F_OK) == 0 ? path : fallback
            guard statvfs(p, &s) == 0 else { return (0, 0) }
            return (Int((UInt64(s.f_blocks) * UInt64(s.f_frsize)) >> 30), Int((UInt64(s.f_bavail) * UInt64(s.f_frsize)) >> 30))
        }) ?? (0, 0)
    }

    private func storeRead<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch {
            throw ComputeError(code: .storeFailure, message: "the agent could not read its instance store: \(error)", kwargs: [:])
        }
    }
}
