import AgentMetrics
import AgentSupport
import InstanceStore
import Logging
import PluginHost

#if canImport(Glibc)
import Glibc
#endif

/// Keeping the records and the hypervisor in agreement: start-up recovery, the power
/// state sync (periodic and event-driven), the resource audit and soft-delete reclaim.
extension ComputeManager {
    /// A stored document that is not an instance record (its first 200 characters).
    struct UnreadableRecord: Error {
        let text: String
    }

    /// Loads the records, compares them with what the hypervisor runs (one list call) and
    /// resumes every operation a crash interrupted. Returns once each resumed operation
    /// holds its instance's lock, so RPC messages that arrive later queue behind it.
    public func recover() async throws {
        // Each document becomes a record as it is read (never all documents at once), and
        // the table is sized once: at 10,000 instances this halves the start-up peak.
        let loaded = try await store.instances { doc -> Result<InstanceRecord, UnreadableRecord> in
            InstanceRecord(stored: doc).map { .success($0) } ?? .failure(UnreadableRecord(text: String(doc.serialized().prefix(200))))
        }
        instances.reserveCapacity(loaded.count)
        for item in loaded {
            switch item {
            case .success(let r): instances[r.uuid] = r
            case .failure(let bad):
                logger.error("instance store holds a record this agent cannot read; left untouched", metadata: ["record": "\(bad.text)"])
            }
        }
        let ops = try await store.openOperations()
        let domains: [String: (power: PowerState, name: String)]?
        do { domains = try await hypervisorDomains() } catch {
            logger.error("cannot list the hypervisor's domains at start-up (\(error)); reconciliation waits for the next power-state sync")
            domains = nil
        }
        await audit()
        var resuming: Set<String> = []
        for op in ops {
            guard let action = InstanceAction(rawValue: op.method) else {
                logger.error("journal holds an operation of unknown kind '\(op.method)'; marking it failed")
                var failed = op
                failed.state = .failed
                await persist([.putOperation(failed)], uuid: op.instanceUUID)
                continue
            }
            guard instances[op.instanceUUID] != nil, !resuming.contains(op.instanceUUID) else {
                var done = op
                done.state = .failed
                done.result = .object(["message": "no instance record to resume it on"])
                await persist([.putOperation(done)], uuid: op.instanceUUID)
                continue
            }
            resuming.insert(op.instanceUUID)
            openOperations[op.instanceUUID] = op
            let ticket = locks.ticket(op.instanceUUID)
            Task { await self.resume(action, op, ticket) }
        }
        if let domains {
            for (uuid, d) in domains where instances[uuid] == nil {
                unmanagedDomains[uuid] = d.name
                logger.warning("the hypervisor runs a domain this agent does not manage; left untouched",
                               metadata: ["domain_uuid": "\(uuid)", "domain_name": "\(d.name)"])
            }
            for uuid in instances.keys.sorted() where !resuming.contains(uuid) {
                await reconcile(uuid, hypervisorPower: domains[uuid]?.power, reason: "at start-up")
            }
        }
        await reconcileNetwork(skipping: resuming)
        // The store's rows and the start-up listing are freed: give their pages back.
        MemoryTrim.release()
        logger.info("recovered instance records", metadata: [
            "instances": "\(instances.count)", "resumed_operations": "\(resuming.count)",
            "unmanaged_domains": "\(unmanagedDomains.count)",
        ])
    }

    /// nova's image cache manager pass: the image plugin removes cached bases no instance
    /// of this host uses (image refs, and the real backing file of every disk), once older
    /// than their minimum age. A plugin without a cache has nothing to do.
    public func runImageCacheManager() async {
        let records = instances.values.filter { $0.vmState != .deleted }
        let refs = Set(records.compactMap(\.imageRef))
        let req: JSONValue = .object([
            "instances_path": .string(instancesPath), "in_use": .array(refs.sorted().map { .string($0) }),
            "instance_disks": .array(records.map { .string($0.diskPath) }),
            "remove_unused": .bool(settings.removeUnusedBaseImages),
            "original_min_age": .int(Int64(settings.originalMinimumAge)), "resized_min_age": .int(Int64(settings.resizedMinimumAge)),
        ])
        do {
            guard let result = try await plugins.imageFetcher.cleanupCache(req) else { return }
            if let bytes = result["bytes"]?.intValue {
                AgentMetrics.shared.set("compute_agent_image_cache_bytes", [], Double(bytes),
                                        help: "Bytes in the image plugin's cache of base images (at its last pass)")
            }
            let removed = result["removed"]?.arrayValue?.compactMap(\.stringValue) ?? []
            logger.log(level: removed.isEmpty ? .debug : .info, "image cache manager pass", metadata: [
                "removed": "\(removed.isEmpty ? "-" : removed.joined(separator: ","))",
                "kept": "\(result["kept"]?.intValue ?? 0)", "in_use": "\(result["in_use"]?.intValue ?? 0)",
                "bytes": "\(result["bytes"]?.intValue ?? 0)",
            ])
        } catch {
            AgentMetrics.shared.periodicFailed(task: "image_cache_manager")
            logger.error("image cache manager pass failed: \(error)")
        }
    }

    /// After a restart (a SIGKILL may have come between a plug and its record, or between
    /// an unplug and the record's deletion): plug again the VIFs of every instance the
    /// agent has (plugging is idempotent), then let the plugin remove what it made for
    /// ports no instance has. Instances whose operation is being resumed are left to it.
    func reconcileNetwork(skipping resuming: Set<String>) async {
        var ports: [String] = []
        for uuid in instances.keys.sorted() {
            guard var r = instances[uuid] else { continue }
            ports += r.vifs.compactMap { $0["id"]?.stringValue }
            guard !resuming.contains(uuid), !r.vifs.isEmpty, r.vmState != .deleted, r.vmState != .building else { continue }
            do { try await plugVIFs(&r, uuid: uuid) } catch {
                log(uuid).error("could not plug the instance's VIFs again at start-up: \(error)")
            }
        }
        do {
            if let result = try await plugins.network.reconcile(ports: ports),
               let removed = result["removed"]?.arrayValue, !removed.isEmpty
            {
                logger.warning("network: removed interfaces the agent had made for ports no instance has",
                               metadata: ["removed": "\(removed.compactMap(\.stringValue).joined(separator: ","))"])
            }
        } catch {
            logger.error("network reconciliation at start-up failed: \(error)")
        }
    }

    private func resume(_ action: InstanceAction, _ op: StoredOperation, _ ticket: KeyedFIFOLock.Ticket) async {
        await locks.acquire(ticket)
        defer { locks.release(ticket) }
        var op = op
        op.attempts += 1
        let l = log(op.instanceUUID)
        if op.attempts > settings.maxOperationAttempts {
            l.error("\(action.rpcMethod) was interrupted \(op.attempts - 1) times; giving up and setting the instance to ERROR")
            if var r = instances[op.instanceUUID] {
                if action == .build { await rollbackBuild(r); r.holdsResources = false }
                r.vmState = .error
                r.taskState = nil
                r.fault = "\(action.rpcMethod) interrupted by \(op.attempts - 1) agent restarts"
                instances[r.uuid] = r
                op.state = .failed
                openOperations[r.uuid] = nil
                await persist([.putOperation(op), .putInstance(uuid: r.uuid, body: r.storeJSON)], uuid: r.uuid)
                notify(action, "error", r, message: r.fault)
            }
            return
        }
        l.warning("resuming \(action.rpcMethod) interrupted by a restart", metadata: [
            "operation": "\(op.id)", "step": "\(op.step ?? "accepted")", "attempt": "\(op.attempts)",
        ])
        await persist([.putOperation(op)], uuid: op.instanceUUID)
        _ = try? await run(action, op: op, resuming: true)
    }

    /// uuid → power state and name of every domain, from one list call.
    func hypervisorDomains() async throws -> [String: (power: PowerState, name: String)] {
        let list = try await plugins.hypervisor.listDomains()
        var out: [String: (power: PowerState, name: String)] = [:]
        out.reserveCapacity(list.count)
        for d in list {
            out[d.uuid] = (d.powerState.flatMap(PowerState.init(rawValue:)) ?? .noState, d.name)
        }
        return out
    }

    // MARK: - Power-state sync

    /// `sync_power_states`: one list call, then nova's rules for each instance without a
    /// task in progress. Returns how many instances it looked at.
    @discardableResult
    public func syncPowerStates() async -> Int {
        let list: [DomainSummary]
        do { list = try await plugins.hypervisor.listDomains() } catch {
            AgentMetrics.shared.periodicFailed(task: "sync_power_states")
            logger.warning("sync_power_states: cannot list domains: \(error)")
            return 0
        }
        // One pass over the listing: most instances agree with their domain, which is
        // decided synchronously; only the others go through the full rules below.
        var differing: [(String, PowerState?)] = []
        var seen = 0
        var unmanaged: [String: String] = [:]
        for d in list {
            let uuid = d.uuid
            let power = d.powerState.flatMap(PowerState.init(rawValue:)) ?? .noState
            guard let r = instances[uuid] else {
                unmanaged[uuid] = d.name
                continue
            }
            seen += 1
            if !Self.inSync(r, hypervisorPower: power) { differing.append((uuid, power)) }
        }
        if seen < instances.count {
            // Some records have no domain: find them (rare, so the set is built only now).
            var listed = Set<String>(minimumCapacity: list.count)
            for d in list { listed.insert(d.uuid) }
            for (uuid, r) in instances where !listed.contains(uuid) && !Self.inSync(r, hypervisorPower: nil) {
                differing.append((uuid, nil))
            }
        }
        for (uuid, power) in differing {
            await reconcile(uuid, hypervisorPower: power, reason: "during sync_power_states")
        }
        for (uuid, name) in unmanaged where unmanagedDomains[uuid] == nil {
            logger.warning("the hypervisor runs a domain this agent does not manage; left untouched",
                           metadata: ["domain_uuid": "\(uuid)", "domain_name": "\(name)"])
        }
        unmanagedDomains = unmanaged
        return instances.count
    }

    /// A lifecycle event from the hypervisor plugin: check that instance now (its current
    /// power state is asked again, so a stale event cannot stop a rebooted instance).
    public func handleLifecycleEvent(uuid: String) async {
        let uuid = uuid.lowercased()
        guard instances[uuid] != nil else { return }
        let power = await currentPower(uuid)
        await reconcile(uuid, hypervisorPower: power == .noState ? nil : power, reason: "after a hypervisor event")
    }

    /// True when `reconcile` would change nothing: a task is running, the state is one the
    /// rules leave alone, or the domain reports the recorded power state and no rule fires.
    static func inSync(_ r: InstanceRecord, hypervisorPower power: PowerState?) -> Bool {
        if r.taskState != nil || [.building, .deleted, .error].contains(r.vmState) { return true }
        guard let power, power == r.powerState else { return false }
        switch r.vmState {
        case .active: return !(power == .shutdown || power == .crashed || power == .suspended)
        case .stopped, .softDeleted: return power.isOff
        case .paused: return !(power == .shutdown || power == .crashed)
        default: return true
        }
    }

    /// nova's `_sync_instance_power_state` for one instance, plus one rule of ours: a
    /// record whose domain has vanished goes to ERROR (nova only logs it, and the
    /// instance then fails every action).
    func reconcile(_ uuid: String, hypervisorPower: PowerState?, reason: String) async {
        guard var r = instances[uuid], r.taskState == nil, openOperations[uuid] == nil,
              ![.building, .deleted, .error].contains(r.vmState) else { return }
        let l = log(uuid)
        guard let power = hypervisorPower else {
            l.error("the instance's domain has vanished from the hypervisor (\(reason)); setting it to ERROR")
            r.vmState = .error
            r.powerState = .noState
            r.fault = "domain vanished from the hypervisor (\(reason))"
            await save(r)
            notify(.stop, "error", r, message: r.fault)
            return
        }
        if power != r.powerState {
            l.info("power_state in the record (\(r.powerState.name)) does not match the hypervisor's (\(power.name)); updating it")
            r.powerState = power
            await save(r)
        }
        switch r.vmState {
        case .active where power == .shutdown || power == .crashed:
            l.warning("instance shut down by itself (\(reason)); it is now STOPPED")
            r.vmState = .stopped
            await save(r)
            notify(.stop, "end", r, message: "stopped by itself")
        case .active where power == .suspended:
            l.warning("instance is suspended unexpectedly; stopping it")
            await forceStop(uuid, keep: .stopped)
        case .stopped where !power.isOff:
            l.warning("instance is not stopped (power_state \(power.name)); stopping it")
            await forceStop(uuid, keep: .stopped)
        case .paused where power == .shutdown || power == .crashed:
            l.warning("paused instance shut down by itself; it is now STOPPED")
            r.vmState = .stopped
            await save(r)
            notify(.stop, "end", r, message: "stopped by itself")
        case .softDeleted where !power.isOff:
            l.warning("instance is not (soft-)deleted; powering it off")
            await forceStop(uuid, keep: .softDeleted)
        default: break
        }
    }

    private func save(_ r: InstanceRecord) async {
        instances[r.uuid] = r
        await persist([.putInstance(uuid: r.uuid, body: r.storeJSON)], uuid: r.uuid)
    }

    /// Powers an instance off on the sync's behalf (nova's force_stop), under its lock.
    private func forceStop(_ uuid: String, keep state: VMState) async {
        let ticket = locks.ticket(uuid)
        Task {
            await self.locks.acquire(ticket)
            defer { self.locks.release(ticket) }
            await self.forceStopLocked(uuid, keep: state)
        }
    }

    private func forceStopLocked(_ uuid: String, keep state: VMState) async {
        guard var r = instances[uuid], r.taskState == nil else { return }
        do {
            try await plugins.hypervisor.perform(.powerOff, uuid: uuid)
            r = instances[uuid] ?? r
            r.vmState = state
            r.powerState = await currentPower(uuid) ?? .shutdown
            await save(r)
            notify(.stop, "end", r, message: "stopped by the power-state sync")
        } catch {
            log(uuid).error("could not power the instance off: \(error)")
        }
    }

    // MARK: - Resources

    /// Makes sure the tracker knows the host's totals before a claim.
    func ensureTotals() async {
        if tracker.totals == nil { await audit() }
    }

    /// `update_available_resource`: the host's totals, the records' usage and what the
    /// hypervisor runs, logged as nova logs them and kept for the capabilities.
    @discardableResult
    public func updateAvailableResource() async -> ResourceAudit? {
        await audit()
        do { try await store.pruneOperations(keep: settings.operationsKept) } catch {
            logger.warning("could not prune the operation journal: \(error)")
        }
        return lastAudit
    }

    /// One audit: the plugin's host figures, the instances file system and one list call.
    func audit() async {
        let started = monotonicSeconds()
        // The three questions go out at once (each on its own plugin-call thread).
        let hv = plugins.hypervisor
        async let hostInfo = hv.hostInfo()
        async let listing = hv.listDomains()
        async let diskFigures = diskGB()
        let info: JSONValue
        do { info = try await hostInfo } catch {
            AgentMetrics.shared.periodicFailed(task: "update_available_resource")
            logger.warning("resource audit: the hypervisor did not report its resources: \(error)")
            _ = try? await listing
            _ = await diskFigures
            return
        }
        let (disk, free) = await diskFigures
        // A plugin that answers with the wrong types must not turn into a host with zero
        // capacity: the audit is refused and the last good one (if any) stays.
        guard let vcpus = info["vcpus"]?.intValue, vcpus >= 0, let memoryMB = info["memory_mb"]?.intValue, memoryMB >= 0 else {
            AgentMetrics.shared.periodicFailed(task: "update_available_resource")
            logger.error("resource audit: the hypervisor plugin reported unusable resources (vcpus and memory_mb must be non-negative integers): vcpus=\(info["vcpus"]?.serialized() ?? "missing") memory_mb=\(info["memory_mb"]?.serialized() ?? "missing")")
            _ = try? await listing
            return
        }
        let totals = ResourceTracker.Totals(vcpus: vcpus, memoryMB: memoryMB, diskGB: disk, diskFreeGB: free)
        tracker.totals = totals
        let usage = self.usage
        let limits = tracker.limits(totals)
        var hvVCPUs = 0, hvMem = 0
        if let list = try? await listing {
            for d in list {
                // One lookup, and only the fields needed (no copy of the whole record).
                let u = d.uuid
                guard let i = instances.index(forKey: u) else { continue }
                let v = d.vcpus, m = d.memoryMB
                hvVCPUs += v
                hvMem += m
                let flavor = instances.values[i].flavor
                if v != flavor.vcpus || m != flavor.memoryMB, instances.values[i].taskState == nil,
                   instances.values[i].vmState != .resized
                {
                    log(u).warning("the domain's size differs from the instance's flavor", metadata: [
                        "domain_vcpus": "\(v)", "flavor_vcpus": "\(flavor.vcpus)", "domain_memory_mb": "\(m)",
                        "flavor_memory_mb": "\(flavor.memoryMB)",
                    ])
                }
            }
        }
        lastAudit = ResourceAudit(totals: totals, usage: usage, limits: limits, hypervisorVCPUs: hvVCPUs,
                                  hypervisorMemoryMB: hvMem, unmanagedDomains: unmanagedDomains.keys.sorted(),
                                  durationMS: (monotonicSeconds() - started) * 1000)
        lastHostInfo = info
        logger.info("Total usable vcpus: \(Int(limits.vcpus)), total allocated vcpus: \(usage.vcpus)")
        logger.info("Total usable memory: \(Int(limits.memoryMB)) MB, total allocated memory: \(usage.memoryMB) MB")
        logger.info("Total usable disk: \(Int(limits.diskGB)) GB, total allocated disk: \(usage.diskGB) GB")
        logger.debug("Final resource view", metadata: [
            "phys_ram_mb": "\(totals.memoryMB)", "used_ram_mb": "\(usage.memoryMB + settings.resources.reservedHostMemoryMB)",
            "phys_disk_gb": "\(totals.diskGB)", "used_disk_gb": "\(usage.diskGB)", "total_vcpus": "\(totals.vcpus)",
            "used_vcpus": "\(usage.vcpus)", "hypervisor_vcpus": "\(hvVCPUs)", "hypervisor_memory_mb": "\(hvMem)",
        ])
    }

    // MARK: - Soft-delete reclaim

    /// `_reclaim_queued_deletes`: terminates instances soft-deleted longer than `interval`
    /// seconds ago (journalled like any terminate).
    public func reclaimQueuedDeletes(olderThan interval: Double) async {
        let now = Double(time(nil))
        let due = instances.values.filter { $0.vmState == .softDeleted && $0.taskState == nil && now - ($0.softDeletedAt ?? now) >= interval }
        for r in due {
            log(r.uuid).info("reclaiming soft-deleted instance")
            _ = try? await execute(.terminate, uuid: r.uuid, args: ["instance_uuid": .string(r.uuid)],
                                   context: ["is_admin": true], uniqueID: "reclaim-\(r.uuid)-\(Int(r.softDeletedAt ?? 0))",
                                   delivery: .none)
        }
    }
}
