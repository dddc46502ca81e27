import AgentSupport
import Testing
@testable import Compute
@testable import InstanceStore

#if canImport(Glibc)
import Glibc
#endif

@Suite struct NovaStateTableTests {
    /// nova 34's check_instance_state lists, action by action.
    @Test func allowedStatesAreNovas() {
        let expected: [InstanceAction: Set<VMState>] = [
            .stop: [.active, .error], .start: [.stopped], .softReboot: [.active],
            .hardReboot: [.active, .stopped, .paused, .suspended, .error],
            .pause: [.active], .unpause: [.paused], .suspend: [.active], .resume: [.suspended],
            .rescue: [.active, .stopped, .error], .unrescue: [.rescued],
            .snapshot: [.active, .stopped, .paused, .suspended], .rebuild: [.active, .stopped, .error],
            .resize: [.active, .stopped], .confirmResize: [.resized], .revertResize: [.resized], .restore: [.softDeleted],
        ]
        for (action, states) in expected {
            #expect(action.allowedFrom == states, "\(action)")
            for s in VMState.allCases {
                let refused = action.refusal(uuid: "u", vmState: s, taskState: nil) != nil
                #expect(refused == !states.contains(s), "\(action) from \(s)")
            }
        }
    }

    @Test func hardRebootMayInterruptASoftRebootButNotABuild() {
        #expect(InstanceAction.hardReboot.refusal(uuid: "u", vmState: .active, taskState: .rebooting) == nil)
        #expect(InstanceAction.hardReboot.refusal(uuid: "u", vmState: .active, taskState: .spawning)?.code == .invalidState)
        #expect(InstanceAction.softReboot.refusal(uuid: "u", vmState: .active, taskState: .rebooting)?.code == .invalidState)
    }

    @Test func snapshotIgnoresTheLockLikeNova() {
        #expect(!InstanceAction.snapshot.checksLock)
        #expect(InstanceAction.stop.checksLock && InstanceAction.terminate.checksLock)
    }

    @Test func everyRPCMethodMapsToOneAction() {
        #expect(InstanceAction.byMethod["reboot_instance"] == .softReboot)
        #expect(InstanceAction.byMethod["soft_delete_instance"] == .softDelete)
        #expect(InstanceAction.byMethod.count == InstanceAction.allCases.count - 1)
    }
}

@Suite struct ResourceTrackerTests {
    func record(_ uuid: String, vcpus: Int, mem: Int, disk: Int, state: VMState = .active) -> InstanceRecord {
        InstanceRecord(uuid: uuid, name: uuid, flavor: Flavor(vcpus: vcpus, memoryMB: mem, rootGB: disk), imageRef: nil,
                       imageChecksum: nil, vifs: [], vmState: state, taskState: nil, powerState: .running, diskPath: "/x")
    }

    @Test func ratiosAndReservationAreNovas() {
        var t = ResourceTracker(settings: .init())
        t.totals = .init(vcpus: 2, memoryMB: 2560, diskGB: 10, diskFreeGB: 10)
        let l = t.limits(t.totals!)
        #expect(l.vcpus == 32)
        #expect(l.memoryMB == 3072)  // (2560 - 512) * 1.5
        #expect(l.diskGB == 10)
    }

    @Test func aBuildThatDoesNotFitIsRefusedNamingTheResource() {
        var t = ResourceTracker(settings: .init())
        t.totals = .init(vcpus: 2, memoryMB: 2560, diskGB: 10, diskFreeGB: 10)
        let used = ResourceTracker.usage(of: [record("a", vcpus: 30, mem: 1000, disk: 4)])
        #expect(throws: Never.self) { try t.check(Flavor(vcpus: 2, memoryMB: 2072, rootGB: 6), used: used) }
        do {
            try t.check(Flavor(vcpus: 3, memoryMB: 64, rootGB: 0), used: used)
            Issue.record("an oversize build was accepted")
        } catch {
            #expect(error.code == .resourcesUnavailable)
            #expect(error.message == "Insufficient compute resources: Free vcpu 2.00 VCPU < requested 3 VCPU.")
        }
        #expect(throws: ComputeError.self) { try t.check(Flavor(vcpus: 1, memoryMB: 2073, rootGB: 0), used: used) }
        #expect(throws: ComputeError.self) { try t.check(Flavor(vcpus: 1, memoryMB: 1, rootGB: 7), used: used) }
    }

    @Test func failedBuildsAndDeletedInstancesHoldNothingAndResizesHoldBoth() {
        var failed = record("f", vcpus: 4, mem: 100, disk: 1, state: .error)
        failed.holdsResources = false
        var resized = record("r", vcpus: 2, mem: 200, disk: 1, state: .resized)
        resized.oldFlavor = Flavor(vcpus: 1, memoryMB: 100, rootGB: 1)
        let u = ResourceTracker.usage(of: [failed, resized, record("d", vcpus: 8, mem: 8, disk: 8, state: .deleted)])
        #expect(u.vcpus == 3 && u.memoryMB == 300 && u.diskGB == 2 && u.instances == 1)
    }
}

@Suite struct InstanceStoreTests {
    func tempPath() -> String {
        var t = Array("/tmp/ca-store-XXXXXX".utf8CString)
        let dir = t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        return dir + "/store.sqlite"
    }

    @Test func recordsAndOperationsSurviveReopening() async throws {
        let path = tempPath()
        do {
            let s = try InstanceStore(path: path)
            var r = InstanceRecord(uuid: "6f1c1a5e-8a4b-4c1e-9a53-0b0a8e8f0c11", name: "vm", flavor: Flavor(vcpus: 1, memoryMB: 64, rootGB: 0),
                                   imageRef: "file:///i", imageChecksum: nil, vifs: [["bridge": "br0"]], vmState: .building,
                                   taskState: .spawning, powerState: .noState, diskPath: "/d")
            r.locked = true
            r.lockedBy = "admin"
            let op = StoredOperation(id: "m1", instanceUUID: r.uuid, method: "build", args: ["args": [:]], state: .running,
                                     step: "plug", attempts: 1)
            try await s.write([.putInstance(uuid: r.uuid, body: r.storeJSON), .putOperation(op)])
        }
        let s = try InstanceStore(path: path)
        let docs = try await s.instances()
        #expect(docs.count == 1)
        let back = InstanceRecord(stored: docs[0])
        #expect(back?.taskState == .spawning && back?.locked == true && back?.lockedBy == "admin" && back?.vifs.count == 1)
        let open = try await s.openOperations()
        #expect(open.count == 1 && open[0].step == "plug" && open[0].attempts == 1)
        var done = open[0]
        done.state = .done
        done.result = ["ok": true]
        try await s.write([.putOperation(done), .deleteInstance(uuid: back!.uuid)])
        #expect(try await s.openOperations().isEmpty)
        #expect(try await s.operation(id: "m1")?.result == ["ok": true])
        #expect(try await s.instances().isEmpty)
    }

    @Test func pruningKeepsOpenOperations() async throws {
        let s = try InstanceStore(path: tempPath())
        for i in 0..<20 {
            try await s.write([.putOperation(StoredOperation(id: "op\(i)", instanceUUID: "u", method: "stop", args: .null,
                                                             state: i == 0 ? .running : .done))])
        }
        try await s.pruneOperations(keep: 5)
        #expect(try await s.operation(id: "op0") != nil)
        #expect(try await s.operation(id: "op5") == nil)
        #expect(try await s.operation(id: "op19") != nil)
    }

    @Test func aFileThatIsNotADatabaseIsRefusedWithItsPath() throws {
        let path = tempPath()
        let fd = open(path, O_WRONLY | O_CREAT, 0o600)
        _ = "this is not sqlite at all, just text that fills the header page".withCString { write(fd, $0, strlen($0)) }
        close(fd)
        do {
            _ = try InstanceStore(path: path)
            Issue.record("a garbage store was opened")
        } catch {
            #expect(error.message.contains(path))
        }
    }
}

@Suite struct KeyedFIFOLockTests {
    @Test func holdersOfOneKeyRunOneAtATimeInTicketOrder() async {
        let lock = KeyedFIFOLock()
        actor Log { var order: [Int] = []; var inside = 0; var maxInside = 0
            func enter(_ i: Int) { order.append(i); inside += 1; maxInside = max(maxInside, inside) }
            func leave() { inside -= 1 }
        }
        let log = Log()
        let tickets = (0..<20).map { _ in lock.ticket("k") }
        await withTaskGroup(of: Void.self) { g in
            for (i, t) in tickets.enumerated().reversed() {
                g.addTask {
                    await lock.acquire(t)
                    await log.enter(i)
                    try? await Task.sleep(for: .milliseconds(1))
                    await log.leave()
                    lock.release(t)
                }
            }
        }
        #expect(await log.order == Array(0..<20))
        #expect(await log.maxInside == 1)
        #expect(lock.busyKeys == 0)
    }

    @Test func differentKeysDoNotWaitForEachOther() async {
        let lock = KeyedFIFOLock()
        let a = lock.ticket("a")
        await lock.acquire(a)
        let b = lock.ticket("b")
        await lock.acquire(b)  // would hang if keys shared a queue
        lock.release(b)
        lock.release(a)
        #expect(lock.busyKeys == 0)
    }
}
