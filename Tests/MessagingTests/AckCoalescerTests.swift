import Testing
@testable import Messaging

@Suite struct AckCoalescerTests {
    private func coalescer(delivered tags: ClosedRange<UInt64>) -> AckCoalescer {
        var c = AckCoalescer()
        for t in tags { c.delivered(t) }
        return c
    }

    @Test func aFinishedPrefixIsOneMultipleAck() {
        var c = coalescer(delivered: 1...5)
        #expect(c.flush([3, 1, 2]) == .init(multipleUpTo: 3, singles: []))
        #expect(c.outstanding == [4, 5])
    }

    @Test func finishedTagsBehindARunningOneAreAckedSinglyAtOnce() {
        // Delivery 2 is a long build: 3 and 5 must not wait for it (they count against
        // the prefetch window until acked), and 2 must not be acked by a multiple ack.
        var c = coalescer(delivered: 1...5)
        #expect(c.flush([1, 3, 5]) == .init(multipleUpTo: nil, singles: [1, 3, 5]))
        #expect(c.outstanding == [2, 4])
        // Once 2 finishes, 2 and 4 form the prefix; 3 and 5 are not acked twice.
        #expect(c.flush([4, 2]) == .init(multipleUpTo: 4, singles: []))
        #expect(c.outstanding.isEmpty)
    }

    @Test func aRejectedTagDoesNotBlockThePrefixAndIsNeverAcked() {
        var c = coalescer(delivered: 1...4)
        c.rejected(2)
        #expect(c.flush([1, 3, 4]) == .init(multipleUpTo: 4, singles: []))
        #expect(c.outstanding.isEmpty)
    }

    @Test func tagsNotOutstandingAreLeftOut() {
        var c = coalescer(delivered: 1...2)
        #expect(c.flush([1]) == .init(multipleUpTo: nil, singles: [1]))
        // A second ack of 1 (or of a tag never delivered) would close the channel.
        #expect(c.flush([1, 9]) == .init(multipleUpTo: nil, singles: []))
        #expect(c.outstanding == [2])
        #expect(c.flush([]) == .init())
    }

    @Test func everyAckedTagIsSettledExactlyOnceWhateverTheOrder() {
        // Random completion orders and round sizes: the frames settle each delivery once
        // and never cover a delivery still running.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let n = UInt64.random(in: 1...80, using: &rng)
            var c = coalescer(delivered: 1...n)
            var running = Set(1...n)
            var settled: [UInt64] = []
            var order = Array(1...n).shuffled(using: &rng)
            while !order.isEmpty {
                let k = Int.random(in: 1...min(order.count, 10), using: &rng)
                let round = Array(order.prefix(k))
                order.removeFirst(k)
                let stillRunningBefore = running
                running.subtract(round)
                let f = c.flush(round)
                if let m = f.multipleUpTo {
                    let covered = stillRunningBefore.filter { $0 <= m }
                    #expect(covered.allSatisfy { round.contains($0) }, "a multiple ack covered a running delivery")
                    settled += covered
                }
                settled += f.singles
            }
            #expect(settled.sorted() == Array(1...n))
            #expect(c.outstanding.isEmpty)
        }
    }
}
