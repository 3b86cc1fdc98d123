/// Where a snapshot may be cut in a session that is being written: between two of its writer's
/// transactions, not through one. Baileys writes a transaction (one `keys.set`: a few dozen files,
/// each as `name.tmp` and two renames) within a few milliseconds, and a snapshot whose reads
/// overlap one would hold part of it. So a snapshot is taken when nothing in its session was
/// written for `length` before its reads began nor while they ran (the mtimes of the files it
/// reads and of the session directory, which renames and deletions move, say so); otherwise it is
/// tried again once that much time has passed since the last write seen. After `patience` it is
/// taken as it is (every file whole, as always), so a session never quiet that long is still
/// backed up.
///
/// Pure: times are passed in, in nanoseconds since the epoch as mtimes are, or as durations.
public struct WritePause: Sendable, Equatable {
    public var length: Duration
    public var patience: Duration

    public init(length: Duration, patience: Duration) {
        self.length = length
        self.patience = patience
    }

    /// 75 ms (a transaction takes a few milliseconds, more on a busy machine), awaited for at most
    /// 5 s after the watcher reported the session, so a session written without such a pause is
    /// still taken at least every 5 s plus `--max-delay`. The pause is most of a change's wait
    /// once `--max-delay` has passed: with Baileys-like writes (2 a second per session, 50
    /// sessions), a pause of 125 ms (half the old quiet period) alone put the 99th percentile of
    /// the replication lag past 0.4 s.
    public static let standard = WritePause(length: .milliseconds(75), patience: .seconds(5))

    /// Whether something modified at `modification` was written in the pause before reads that
    /// began at `start`, or since (up to `now`). A modification time in the future (a clock set
    /// back, `touch -d`) says nothing about a writer at work.
    func isRecent(_ modification: Int64, readsStartedAt start: Int64, now: Int64) -> Bool {
        modification > start - Self.nanoseconds(length) && modification <= now
    }

    /// How long from `now` until a pause after a write at `lastWrite` is over.
    func remaining(afterWriteAt lastWrite: Int64, now: Int64) -> Duration {
        .nanoseconds(max(lastWrite + Self.nanoseconds(length) - now, 0)) + .milliseconds(1)
    }

    /// Whether a snapshot that has waited `waited` for a pause may wait on.
    func isPatient(after waited: Duration) -> Bool {
        waited < patience
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
