/// When one session's uploads run: one in flight, the newest state always uploaded after it,
/// backoff after a failure that new changes do not cut short, a prompt retry of files caught
/// mid-write, and everything waiting run at shutdown. Decisions only, with the time passed in:
/// `SyncService` holds one per session (in its `SessionRecord`), queues the session when a call
/// says so, and sleeps until `retryAt` (a timer that fires for a retry since dropped finds none due).
struct UploadSchedule: Equatable {
    enum RetryReason: Equatable {
        /// The last upload failed: wait out the backoff, whatever changes meanwhile.
        case backoff
        /// The last upload found files mid-write: look again shortly, or at the next change.
        case unsettled
    }

    /// What the engine does after an upload ended.
    enum Next: Equatable {
        /// Queue the session again: changes came while it uploaded.
        case queue
        /// Come back at this time (`retryDue`).
        case retry(at: ContinuousClock.Instant)
        case idle
    }

    enum Outcome: Equatable {
        /// Committed, or nothing to commit; `unsettled`: files mid-write kept their last good version.
        case succeeded(unsettled: Bool)
        case failed(backoff: Duration)
        /// Another agent claimed the session: nothing more is this agent's to upload.
        case fenced
    }

    /// Changes (or files mid-write) no upload has taken yet.
    private(set) var pending = false
    private(set) var running = false
    private(set) var failures = 0
    private(set) var retryAt: ContinuousClock.Instant?
    private(set) var retryReason: RetryReason?
    /// Shutting down: every pending upload runs once now, nothing is retried later.
    private(set) var stopping = false

    /// Nothing the store lacks is known, and nothing runs.
    var isSettled: Bool { !pending && !running }

    /// New changes. True when the session should be queued now: not while it uploads (it runs
    /// again after), nor while it waits out a failure's backoff (the changes go with the retry;
    /// restarting at each change retried a failing store at the session's write rate).
    mutating func changed() -> Bool {
        pending = true
        guard !running else { return false }
        if retryReason == .backoff && !stopping { return false }
        dropRetry()
        return true
    }

    /// The queued upload starts with everything pending.
    mutating func started() {
        pending = false
        running = true
        dropRetry()
    }

    /// The running upload took the changes that came while it ran (a snapshot its session's
    /// writer deferred reads them too): nothing is left for another.
    mutating func changesJoinedRunningUpload() {
        if running { pending = false }
    }

    mutating func finished(_ outcome: Outcome, at now: ContinuousClock.Instant, unsettledRetryDelay: Duration) -> Next {
        running = false
        switch outcome {
        case .fenced:
            pending = false
            failures = 0
            return .idle
        case .failed(let backoff):
            failures += 1
            pending = true
            return stopping ? .idle : wait(until: now + backoff, .backoff)
        case .succeeded(let unsettled):
            failures = 0
            if unsettled {
                // Pending until a later upload takes them: named at shutdown if none does.
                let changesWaiting = pending
                pending = true
                // Changes that came during the upload run now, at shutdown too; the files mid-write alone wait.
                if changesWaiting { return .queue }
                return stopping ? .idle : wait(until: now + unsettledRetryDelay, .unsettled)
            }
            return pending ? .queue : .idle
        }
    }

    /// A retry timer fired. True when a retry is due and the session should be queued; false
    /// for a timer whose retry was dropped or replaced since.
    mutating func retryDue(at now: ContinuousClock.Instant) -> Bool {
        guard let retryAt, retryAt <= now else { return false }
        dropRetry()
        return pending && !running
    }

    /// The directory went away and nothing is to be written for it (`--on-delete keep|purge`):
    /// its pending changes and any retry are dropped, so the directory coming back starts afresh.
    mutating func removed() {
        pending = false
        failures = 0
        dropRetry()
    }

    /// Shutdown: true when the session has something waiting (a backoff, a retry of files
    /// mid-write, changes) and should be queued now. Failures after this are not retried.
    mutating func stop() -> Bool {
        stopping = true
        dropRetry()
        return pending && !running
    }

    private mutating func wait(until instant: ContinuousClock.Instant, _ reason: RetryReason) -> Next {
        retryAt = instant
        retryReason = reason
        return .retry(at: instant)
    }

    private mutating func dropRetry() {
        retryAt = nil
        retryReason = nil
    }

    /// The wait before attempt `failures + 1`: doubling from `base` up to `ceiling`, the second
    /// half jittered by `jitter` (0...1), so agents that failed together do not retry together.
    static func backoff(failures: Int, base: Duration, ceiling: Duration, jitter: Double) -> Duration {
        let limit = min(ceiling, base * (1 << min(max(failures - 1, 0), 16)))
        return limit / 2 + (limit / 2) * jitter
    }
}
