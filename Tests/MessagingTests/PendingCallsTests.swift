import AgentSupport
import Testing
@testable import Messaging

/// The deadlines of calls waiting for replies: one sweeper thread per client, no timer
/// task per call. These pin what callers rely on: a call past its deadline ends with the
/// timeout, a call completed first gets its reply, and a later, shorter call is not held
/// back by an earlier, longer one.
@Suite struct PendingCallsTests {
    private func wait(_ pending: PendingCalls, _ id: String, seconds: Double) async -> PendingCalls.Outcome {
        await withCheckedContinuation { c in pending.register(id, deadline: monotonicSeconds() + seconds, c) }
    }

    @Test func aCallPastItsDeadlineEndsWithTheTimeout() async {
        let pending = PendingCalls()
        let outcome = await wait(pending, "a", seconds: 0.05)
        #expect(outcome == .failure(PendingCalls.timedOut))
        #expect(pending.count == 0)
    }

    @Test func aReplyBeforeTheDeadlineIsWhatTheCallerGets() async {
        let pending = PendingCalls()
        async let outcome = wait(pending, "b", seconds: 60)
        while pending.count == 0 { await Task.yield() }
        pending.complete("b", .success(.string("pong")))
        #expect(await outcome == .success(.string("pong")))
        // A late reply (or a second timeout) for the same call finds nobody.
        pending.complete("b", .success(.string("late")))
        #expect(pending.count == 0)
    }

    @Test func aShorterCallRegisteredLaterIsNotHeldBackByALongerOne() async {
        let pending = PendingCalls()
        async let long = wait(pending, "long", seconds: 3600)
        while pending.count == 0 || pending.sweeps == 0 { await Task.yield() }
        // The sweeper has seen the long call and sleeps until its deadline; this one must wake
        // it. If it does not, the watchdog answers the call after 20 s and the test fails.
        let watchdog = Task {
            try await Task.sleep(for: .seconds(20))
            pending.complete("short", .success(.string("not timed out")))
        }
        let short = await wait(pending, "short", seconds: 0.05)
        watchdog.cancel()
        #expect(short == .failure(PendingCalls.timedOut))
        #expect(pending.count == 1)
        pending.complete("long", .success(.null))
        #expect(await long == .success(.null))
    }

    @Test func afterStopTheWaitingCallsStillTimeOutAndANewCallStillGetsItsDeadline() async {
        let pending = PendingCalls()
        async let first = wait(pending, "first", seconds: 0.05)
        while pending.count == 0 { await Task.yield() }
        pending.stop()
        #expect(await first == .failure(PendingCalls.timedOut))
        let second = await wait(pending, "second", seconds: 0.05)
        #expect(second == .failure(PendingCalls.timedOut))
    }
}
