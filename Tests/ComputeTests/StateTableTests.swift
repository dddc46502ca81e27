import Testing
@testable import Compute

@Suite struct StateTableTests {
    @Test func pauseOnlyFromActive() {
        #expect(InstanceAction.pause.refusal(uuid: "u", vmState: .active, taskState: nil) == nil)
        for s in VMState.allCases where s != .active {
            #expect(InstanceAction.pause.refusal(uuid: "u", vmState: s, taskState: nil) != nil)
        }
    }

    @Test func pauseFromStoppedIsRefusedWithNovasMessage() {
        let e = InstanceAction.pause.refusal(uuid: "abc", vmState: .stopped, taskState: nil)
        #expect(e?.code == .invalidState)
        #expect(e?.message == "Cannot 'pause_instance' instance abc while it is in vm_state stopped")
        #expect(e?.remoteFailure.className == "InstanceInvalidState")
        #expect(e?.remoteFailure.module == "nova.exception")
    }

    @Test func anActionInProgressBlocksOthersButNotTerminate() {
        let e = InstanceAction.stop.refusal(uuid: "u", vmState: .active, taskState: .rebooting)
        #expect(e?.message == "Cannot 'stop_instance' instance u while it is in task_state rebooting")
        #expect(InstanceAction.terminate.refusal(uuid: "u", vmState: .active, taskState: .rebooting) == nil)
    }

    @Test func everyStateMayBeTerminated() {
        for s in VMState.allCases {
            #expect(InstanceAction.terminate.refusal(uuid: "u", vmState: s, taskState: nil) == nil)
        }
    }

    @Test func transitionsLandWhereNovaPutsThem() {
        #expect(InstanceAction.stop.resultingState == .stopped)
        #expect(InstanceAction.start.resultingState == .active)
        #expect(InstanceAction.suspend.resultingState == .suspended)
        #expect(InstanceAction.resume.resultingState == .active)
        #expect(InstanceAction.unpause.resultingState == .active)
        #expect(InstanceAction.terminate.resultingState == .deleted)
        #expect(InstanceAction.start.allowedFrom == [.stopped])
        #expect(InstanceAction.resume.allowedFrom == [.suspended])
        #expect(InstanceAction.softReboot.allowedFrom == [.active])
    }

    @Test func buildRequestRejectsWrongTypes() {
        #expect(throws: ComputeError.self) { try BuildRequest(args: [:]) }
        #expect(throws: ComputeError.self) { try BuildRequest(args: ["instance": "x"]) }
        #expect(throws: ComputeError.self) {
            try BuildRequest(args: ["instance": ["uuid": "not-a-uuid", "vcpus": 1, "memory_mb": 64]])
        }
        #expect(throws: ComputeError.self) {
            try BuildRequest(args: ["instance": ["uuid": "6f1c1a5e-8a4b-4c1e-9a53-0b0a8e8f0c11", "vcpus": "two", "memory_mb": 64]])
        }
        let ok = try? BuildRequest(args: ["instance": ["uuid": "6F1C1A5E-8A4B-4C1E-9A53-0B0A8E8F0C11", "vcpus": 2, "memory_mb": 64],
                                          "flavor": ["root_gb": 1]])
        #expect(ok?.uuid == "6f1c1a5e-8a4b-4c1e-9a53-0b0a8e8f0c11")
        #expect(ok?.flavor.rootGB == 1)
    }
}

@Suite struct PeriodicScheduleTests {
    @Test func nextDeadlineDoesNotDrift() {
        let s = PeriodicSchedule(interval: 10)
        // A run that took 3 s still leaves the next deadline 10 s after the previous one.
        #expect(s.nextDeadline(after: 100, now: 103) == 110)
    }

    @Test func missedDeadlinesAreSkippedNotStacked() {
        let s = PeriodicSchedule(interval: 10)
        #expect(s.nextDeadline(after: 100, now: 135) == 140)
        #expect(s.nextDeadline(after: 100, now: 110) == 120)
    }

    @Test func initialDelayIsBelowTheCap() {
        let s = PeriodicSchedule(interval: 10)
        for _ in 0..<100 {
            let d = s.initialDelay(cap: 1)
            #expect(d >= 0 && d < 1)
        }
    }

    @Test func runsNeverOverlapAndRecordDurations() async {
        actor Counter {
            var running = 0, maxRunning = 0, runs = 0
            func enter() { running += 1; maxRunning = max(maxRunning, running); runs += 1 }
            func leave() { running -= 1 }
        }
        let c = Counter()
        let task = Task {
            await runPeriodically(schedule: { PeriodicSchedule(interval: 0.01) }, initialDelay: 0) {
                await c.enter()
                try? await Task.sleep(for: .milliseconds(30))  // longer than the interval
                await c.leave()
            }
        }
        try? await Task.sleep(for: .milliseconds(200))
        task.cancel()
        await task.value
        #expect(await c.maxRunning == 1)
        #expect(await c.runs >= 2)
    }
}
