/// Turns the acks that finished handlers hand to the connection thread into as few
/// `basic.ack` frames as AMQP allows.
///
/// Handlers finish out of order, so the acks of one round of the connection thread are not
/// a contiguous range. `basic.ack(multiple: true, tag: T)` settles *every* unacked delivery
/// up to T on the channel, which is only right when all of them are finished. So the
/// coalescer keeps the channel's outstanding delivery tags (delivered, not yet acked or
/// rejected, ascending) and, for one round of acks, answers: one multiple ack for the
/// longest finished prefix of the outstanding tags, and single acks for the finished tags
/// behind a delivery that is still running. Nothing waits: every ack handed in goes out in
/// the same round. During a backlog drain most rounds are one frame instead of dozens,
/// which saves the broker most of its per-ack work.
///
/// Lives on the connection thread, with the connection it describes (a new connection
/// starts a new coalescer: delivery tags are per channel).
struct AckCoalescer {
    /// Delivered and neither acked nor rejected, ascending (the broker numbers deliveries
    /// on a channel 1, 2, 3, …). At most the prefetch window of each consumer.
    private(set) var outstanding: [UInt64] = []

    /// The frames to send for one round of acks.
    struct Frames: Equatable {
        /// `basic.ack(multiple: true)` with this tag settles the finished prefix.
        var multipleUpTo: UInt64?
        /// Single `basic.ack`s, ascending.
        var singles: [UInt64] = []
    }

    /// A delivery arrived with `tag`.
    mutating func delivered(_ tag: UInt64) {
        outstanding.append(tag)
    }

    /// `tag` was rejected (the reject frame is sent at once by the caller).
    mutating func rejected(_ tag: UInt64) {
        if let i = outstanding.firstIndex(of: tag) { outstanding.remove(at: i) }
    }

    /// The frames that settle `acked`, the tags finished since the last round. A tag that
    /// is not outstanding (already settled) is left out: acking it again would make the
    /// broker close the channel with PRECONDITION_FAILED.
    mutating func flush(_ acked: [UInt64]) -> Frames {
        guard !acked.isEmpty else { return Frames() }
        let done = Set(acked)
        var prefix = 0
        while prefix < outstanding.count && done.contains(outstanding[prefix]) { prefix += 1 }
        var frames = Frames()
        if prefix == 1 {
            frames.singles.append(outstanding[0])
        } else if prefix > 1 {
            frames.multipleUpTo = outstanding[prefix - 1]
        }
        for tag in outstanding[prefix...] where done.contains(tag) { frames.singles.append(tag) }
        outstanding.removeAll { done.contains($0) }
        return frames
    }
}
