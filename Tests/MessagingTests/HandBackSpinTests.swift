import AgentSupport
import Testing
@testable import Messaging

@Suite struct HandBackSpinTests {
    /// The decisions for rounds that delivered `counts`, each wait ending as `found` says
    /// (nil: the round did not wait, so nothing to report).
    private func decisions(_ s: inout HandBackSpin, _ counts: [Int], found: Bool = false) -> [Bool] {
        counts.map { n in
            let w = s.shouldWait(delivered: n)
            if w { s.waited(found: found) }
            return w
        }
    }

    @Test func waitsOnlyAfterARoundThatDeliveredSomething() {
        var s = HandBackSpin()
        let d = decisions(&s, [0, 1, 200], found: true)
        #expect(d == [false, true, true], "an idle connection thread must sleep in poll, not spin")
    }

    @Test func aZeroBudgetNeverWaits() {
        var s = HandBackSpin()
        s.budget = 0
        let d = decisions(&s, [5, 1])
        #expect(d == [false, false])
    }

    @Test func emptyWaitsInARowRestTheSpinThenItTriesAgain() {
        // Slow handlers (plugin calls, builds): waiting awake for them only burns a core.
        var s = HandBackSpin()
        s.missesToRest = 3
        s.restRounds = 5
        let d = decisions(&s, Array(repeating: 1, count: 9))
        #expect(d == [true, true, true, false, false, false, false, false, true])
    }

    @Test func aHitClearsTheMisses() {
        var s = HandBackSpin()
        s.missesToRest = 3
        var d: [Bool] = []
        for _ in 0..<10 {
            d += decisions(&s, [1, 1], found: false)
            d += decisions(&s, [1], found: true)
        }
        #expect(d.allSatisfy { $0 })
        #expect(s.misses == 0 && s.resting == 0)
    }

    @Test func roundsWithoutDeliveriesDoNotShortenARest() {
        var s = HandBackSpin()
        s.missesToRest = 1
        s.restRounds = 2
        s.waited(found: false)
        let d = decisions(&s, Array(repeating: 0, count: 10) + [1, 1, 1], found: true)
        #expect(d == Array(repeating: false, count: 12) + [true])
    }

    @Test func aWaitThatCaughtSomethingIsFollowedByAnotherUpToTheStreakLimit() {
        // A call's handler hands back its ack, then its reply: the thread waits for both.
        var s = HandBackSpin()
        s.streakLimit = 3
        var d = decisions(&s, [1, 0, 0], found: true)
        d += decisions(&s, [0, 0], found: true)
        #expect(d == [true, true, true, false, false], "a streak ends at its limit, then the thread polls")
        var t = HandBackSpin()
        let first = decisions(&t, [1], found: true)
        let missed = decisions(&t, [0], found: false)
        let after = decisions(&t, [0], found: true)
        #expect(first + missed + after == [true, true, false], "an empty wait ends the streak")
    }

    @Test func theConnectionSettingsTakeTheOptionInMicroseconds() {
        var c = AgentConfiguration.defaults()
        #expect(AMQPWorker.ConnectionSettings(configuration: c).handBackWait == 0.000_2)
        c.handBackWaitMicroseconds = 0
        #expect(AMQPWorker.ConnectionSettings(configuration: c).handBackWait == 0)
    }
}
