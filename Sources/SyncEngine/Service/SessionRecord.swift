import FoundationEssentials

/// What `SyncService` knows of one session, and what it decides from that alone: which changes an
/// upload takes, what its end leaves for the next one, what a removed directory drops, and the
/// session's status. Time is passed in; the actor holds one per session beside its replicator.
struct SessionRecord {
    /// When its uploads run: pending, running, failures, the retry awaited.
    var schedule = UploadSchedule()
    /// What the watcher reported since the running or last upload started; nil means the
    /// next upload compares the whole directory (first upload, rescans, after a failure).
    var changedPaths: Set<String>?
    var fenced = false
    /// A release is under way: changes from now on are not this agent's to upload.
    var releasing = false
    /// This agent released the session (its head says so), naming the final snapshot; until it
    /// is acquired again nothing of it is uploaded.
    var released: SessionHead.Release?
    /// How many uploads started, and the number of the last one that committed everything it
    /// read (nothing mid-write): a flush waits for an upload started after its call.
    var uploadsStarted = 0
    var lastCompleteUpload = 0
    /// The running upload's number.
    var runningUpload = 0
    /// Changes no upload has taken yet, and those the running (or last failed) upload took.
    var waitingChanges = ChangeBacklog()
    var uploadingChanges = ChangeBacklog()
    var lastCommit: (snapshot: SnapshotID, at: Date)?
    var lastError: String?
    /// The directory is gone and its logout recorded; cleared when a directory is synced again.
    var tombstoned = false
    /// Its directory went away under the tombstone policy: its uploads write the tombstone,
    /// so a store that fails delays it (with the same backoff and SIGTERM flush) but never
    /// drops it.
    var loggedOut = false
    /// Files its uploads leave out (too large, unreadable), as the replicator last reported them.
    var skippedFiles: [SkippedFile] = []
    /// What its latest snapshot holds, as the replicator last reported it; nil before its first sync.
    var health: SessionHealth?

    /// Its registered identity was replaced, and it has not logged out since.
    var hasLostItsIdentity: Bool { health?.identityChangedAt != nil && !tombstoned }

    /// Records changes made at `since` (`paths` nil: compare the whole directory). True when the
    /// session should be queued now (see `UploadSchedule.changed`).
    mutating func changed(_ paths: Set<String>?, since: ContinuousClock.Instant) -> Bool {
        waitingChanges.record(paths ?? [], at: since)
        if let paths, let reported = changedPaths {
            // Nil (scan it whole) rather than merge two canonically equivalent names into one.
            changedPaths = reported.addingReportedPaths(paths)
        } else {
            changedPaths = nil
        }
        return schedule.changed()
    }

    /// The queued upload starts with every change waiting; returns the paths it reads (nil: the
    /// whole directory).
    mutating func startUpload() -> Set<String>? {
        let paths = changedPaths
        changedPaths = []
        uploadingChanges.absorb(waitingChanges)
        waitingChanges = ChangeBacklog()
        schedule.started()
        uploadsStarted += 1
        runningUpload = uploadsStarted
        return paths
    }

    /// The running upload, deferred while the session was written (`WritePause`), takes the
    /// changes reported since it started and reads them too. Nil when those say "the whole
    /// directory" (a flush, a rescan): they then go to the next upload, as usual.
    mutating func joinRunningUpload() -> Set<String>? {
        guard schedule.running, let paths = changedPaths else { return nil }
        changedPaths = []
        uploadingChanges.absorb(waitingChanges)
        waitingChanges = ChangeBacklog()
        schedule.changesJoinedRunningUpload()
        return paths
    }

    /// The upload ended; `unsettled`: the files it found mid-write, which go with the next upload,
    /// whatever starts it.
    mutating func uploadFinished(
        _ outcome: UploadSchedule.Outcome, unsettled: [String], at now: ContinuousClock.Instant, unsettledRetryDelay: Duration
    ) -> UploadSchedule.Next {
        changedPaths = Self.pathsForNextUpload(reported: changedPaths, unsettled: unsettled)
        return schedule.finished(outcome, at: now, unsettledRetryDelay: unsettledRetryDelay)
    }

    /// The directory was compared with the store (a commit, or nothing new): only the changes of
    /// the files it found mid-write (`unsettled`) are still not in the store.
    mutating func synced(unsettled: [String]) {
        uploadingChanges.keepOnly(unsettled)
        tombstoned = false
        if unsettled.isEmpty { lastCompleteUpload = runningUpload }
    }

    /// The logout is recorded: nothing of the directory that went away is pending any more.
    mutating func tombstoneWritten() {
        loggedOut = false
        tombstoned = true
        uploadingChanges = ChangeBacklog()
    }

    /// Keeps the files the replicator reports left out; returns those left out since the last
    /// report and those taken again, each said once rather than at every attempt.
    mutating func recordSkippedFiles(_ files: [SkippedFile]) -> (leftOut: [SkippedFile], takenAgain: [SkippedFile]) {
        let before = Set(skippedFiles)
        let names = Set(files.map(\.name))
        defer { skippedFiles = files }
        return (files.filter { !before.contains($0) }, skippedFiles.filter { !names.contains($0.name) })
    }

    /// What the next upload of a session reads: the paths reported since this upload started and
    /// the files it found mid-write; nil (the whole directory) when that was nil already or would
    /// merge two canonically equivalent names, which are two files.
    static func pathsForNextUpload(reported: Set<String>?, unsettled: [String]) -> Set<String>? {
        reported?.addingReportedPaths(unsettled)
    }

    /// An upload failed with `error`: what it had taken is not committed, so the next one compares
    /// everything.
    mutating func uploadFailed(_ error: any Error) {
        lastError = "\(error)"
        changedPaths = nil
    }

    /// Fenced is final: the session's changes are the new owner's to upload, none is pending here.
    mutating func fence(_ error: SnapshotError) {
        fenced = true
        waitingChanges = ChangeBacklog()
        uploadingChanges = ChangeBacklog()
        lastError = "\(error)"
    }

    /// Its directory went away. True when an upload should be scheduled: under the tombstone
    /// policy the session's uploads write the tombstone (see `SyncService.upload`), so it is
    /// retried with backoff while the store fails and flushed on SIGTERM like any change (written
    /// once at the removal, a failure was only logged, and a restore brought the logged-out
    /// session back).
    ///
    /// Otherwise nothing is retried for a directory that is gone: the schedule forgets its retry
    /// (the caller cancels the timer). A retry cancelled but still recorded made the directory,
    /// once back, wait for a retry that never came: the session never uploaded again.
    mutating func directoryRemoved(policy: DeletePolicy) -> Bool {
        if policy == .tombstone {
            loggedOut = true
            return true
        }
        schedule.removed()
        waitingChanges = ChangeBacklog()
        lastError = nil
        skippedFiles = []
        return false
    }

    /// The session as `/sessions` shows it. `watched`: every directory of it has an inotify watch.
    func status(_ id: SessionID, watched: Bool, at now: ContinuousClock.Instant) -> SessionStatus {
        var backlog = uploadingChanges
        backlog.absorb(waitingChanges)
        var status = SessionStatus(
            sessionId: id.description, state: state(backlog: backlog),
            lastSnapshot: lastCommit.map { "\($0.snapshot)" },
            lastSnapshotAt: lastCommit.map { $0.at.formatted(.iso8601) },
            lagSeconds: backlog.oldest.map { EngineMetrics.seconds(now - $0) } ?? 0,
            pendingChanges: backlog.paths.count, lastError: lastError,
            consecutiveFailures: schedule.failures, watched: watched,
            skippedFiles: skippedFiles)
        if let health, !tombstoned { status.describe(health) }
        return status
    }

    private func state(backlog: ChangeBacklog) -> SessionStatus.State {
        if fenced { return .fenced }
        if released != nil { return .released }
        if tombstoned && schedule.isSettled { return .tombstoned }
        // A retry in flight is still failing until it succeeds: a heartbeat should not flicker.
        if schedule.failures > 0 { return .failing }
        if schedule.running { return .uploading }
        if schedule.pending || !backlog.isEmpty { return .pending }
        if hasLostItsIdentity { return .identityChanged }
        if !skippedFiles.isEmpty { return .partial }
        return .synced
    }
}

extension SessionStatus {
    /// A session not backed up at all. It may have had snapshots before (its directory became a
    /// link, say): `lastCommit` is the last of them this agent knows.
    static func refused(_ id: SessionID, _ refusal: Refusal, lastCommit: (snapshot: SnapshotID, at: Date)?) -> SessionStatus {
        SessionStatus(
            sessionId: id.description, state: .refused,
            lastSnapshot: lastCommit.map { "\($0.snapshot)" }, lastSnapshotAt: lastCommit.map { $0.at.formatted(.iso8601) },
            lagSeconds: 0, pendingChanges: 0, lastError: refusal.message, consecutiveFailures: 0, watched: false,
            refusal: refusal)
    }
}
