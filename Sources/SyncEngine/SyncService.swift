import FoundationEssentials
import Glibc
import Logging
import SessionArchive

/// What to do with a session's snapshots when its directory disappears (a logout).
public enum DeletePolicy: String, Sendable, CaseIterable {
    /// Write a tombstone so no restore brings the logged-out session back.
    case tombstone
    /// Leave the snapshots as they are.
    case keep
    /// Delete every object of the session.
    case purge
}

public struct WatchSettings: Sendable {
    public var watcher = SessionWatcher.Configuration()
    /// Sessions uploading at once.
    public var concurrency = 8
    public var onDelete = DeletePolicy.tombstone
    /// Backoff between attempts while the store is down.
    public var retryBaseDelay: Duration = .milliseconds(500)
    public var retryMaxDelay: Duration = .seconds(30)
    public var compaction = CompactionPolicy()
    /// How often to apply `compaction.retention` to every session this agent serves, beside the
    /// pruning after each new base (which alone never trims a session that only gets deltas).
    public var pruneInterval: Duration?
    public var compressionLevel = 3
    /// How often the store is asked whether it answers, for readiness, besides what uploads say.
    public var storeProbeInterval: Duration = .seconds(10)

    public init() {}
}

/// The sidecar's engine: watches every session under the root and keeps each one's
/// snapshots current, one upload in flight per session (the newest state wins), a global
/// limit on concurrent uploads, and retries with backoff while the store is down, so an
/// outage delays uploads but never drops them.
public actor SyncService {
    private struct Session {
        let replicator: SessionReplicator
        /// When its uploads run: pending, running, failures, the retry awaited.
        var schedule = UploadSchedule()
        /// In `waiting`. Not the same as pending: a failed or unsettled upload leaves the
        /// session pending but waiting for its retry, not queued.
        var queued = false
        /// What the watcher reported since the running or last upload started; nil means the
        /// next upload compares the whole directory (first upload, rescans, after a failure).
        var changedPaths: Set<String>?
        /// Sleeps until `schedule.retryAt`; cancelled whenever the schedule drops that retry.
        var retryTimer: Task<Void, Never>?

        mutating func cancelRetryTimer() {
            retryTimer?.cancel()
            retryTimer = nil
        }
        var fenced = false
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
    }

    /// What the store last said, by a probe or an upload.
    private enum StoreHealth {
        case unknown
        case answered
        case failed(String)
    }

    public nonisolated let root: String
    private let sessionStore: SessionStore
    private let owner: String
    private let mode: StorageMode
    private let conditionalWrites: Bool
    private let settings: WatchSettings
    /// Hybrid mode: copies each committed session from the local store to S3.
    private let mirror: SessionMirror?
    /// One base built at a time, whatever `settings.concurrency`: building is CPU work (the
    /// uploads around it still overlap), and each build in progress holds zstd's buffers.
    /// Measured at an agent's first start on 50 sessions of 1,000 files: 3.4 MiB less at the peak.
    private let baseBuilds = ConcurrencyLimit(1)
    private let logger: Logger
    private var sessions: [SessionID: Session] = [:]
    private var waiting: [SessionID] = []
    private var runningCount = 0
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    /// The sessions the start-up scan found that have not had their first upload yet; nil until
    /// the watcher's first scan.
    private var startupComparison: Set<SessionID>?
    private var storeHealth = StoreHealth.unknown
    /// Names under the root that look like sessions and are not backed up, with why.
    private var refused: [String: Refusal] = [:]
    /// Sessions with a directory the watcher could not watch (the inotify watch limit): it
    /// compares them every `maxDelay` instead.
    private var unwatched: Set<String> = []

    /// `mode` labels the upload metrics.
    public init(
        root: String, sessionStore: SessionStore, owner: String, mode: StorageMode, conditionalWrites: Bool,
        settings: WatchSettings = WatchSettings(), mirror: SessionMirror? = nil, logger: Logger
    ) {
        self.root = root
        self.sessionStore = sessionStore
        self.owner = owner
        self.mode = mode
        self.conditionalWrites = conditionalWrites
        self.settings = settings
        self.mirror = mirror
        self.logger = logger
    }

    /// Watches and uploads until the task is cancelled (SIGTERM), then stops taking events
    /// and flushes every pending change. Returns what is left not backed up.
    public func run(shutdownTimeout: Duration) async throws -> ShutdownReport {
        // A restore killed mid-swap leaves working directories; finish or undo them first.
        try DirectorySwap.recoverLeftovers(in: root)
        // The watcher's first event is a rescan once every watch is in place, so changes
        // made while no agent ran are uploaded and none made during the scan is missed.
        let watcher = try SessionWatcher(root: root, configuration: settings.watcher)
        // Not a child task: iterating an AsyncStream in a cancelled task ends the stream at
        // once, dropping the pending changes `stop()` reports on its way out (SIGTERM exited
        // 0 "every change uploaded" without them). This task ends when the stream finishes.
        let events = Task {
            for await event in watcher.events {
                handle(event)
            }
        }
        let prober = Task { await probeStorePeriodically() }
        let surveyor = Task { await surveyPeriodically() }
        let pruning = settings.pruneInterval.map { interval in Task { await prunePeriodically(every: interval) } }
        await withTaskCancellationHandler {
            await events.value
        } onCancel: {
            watcher.stop()
        }
        prober.cancel()
        surveyor.cancel()
        pruning?.cancel()
        let unflushed = await flush(timeout: shutdownTimeout)
        return ShutdownReport(
            unflushed: unflushed,
            refused: refused.map { ShutdownReport.Refused(name: Refusal.printed($0.key), refusal: $0.value) }.sorted { $0.name < $1.name },
            skippedFiles: sessions.filter { !$0.value.skippedFiles.isEmpty }.mapValues(\.skippedFiles))
    }

    private func handle(_ event: WatchEvent) {
        switch event {
        case .changed(let name, let paths, let since):
            // No paths: the directory itself changed (created, swapped in by a restore).
            if let id = accepted(name) { schedule(id, changedPaths: paths.isEmpty ? nil : paths, since: since) }
        case .sessionRemoved(let name):
            if refused.removeValue(forKey: name) != nil {
                logger.notice("refused session directory removed", metadata: ["name": "\(Refusal.printed(name))"])
            }
            if let id = SessionID(name) { removed(id) }
        case .rescanNeeded(let reason):
            logger.notice("rescanning every session", metadata: ["reason": "\(reason)"])
            EngineMetrics.rescan(reason.metricLabel)
            let found = rescan()
            if reason == .started { startupComparison = found }
        case .watchFailed(let error):
            // A directory the agent may not read is a refused session, said once by the survey;
            // comparing every session again would find nothing new (one rescan per such directory).
            if case .system("inotify_add_watch", EACCES) = error.reason {
                scheduleAcceptedBySurvey()
                return
            }
            logger.error("watching failed; rescanning", metadata: ["error": "\(error)"])
            EngineMetrics.rescan("watch_failed")
            rescan()
        case .unwatched(let sessions, let cause):
            // One line when the limit is first reached and one when it is no more, not one per directory.
            if unwatched.isEmpty, let cause {
                logger.error("\(cause); until then the sessions without a watch are compared every \(settings.watcher.maxDelay)", metadata: [
                    "unwatched_sessions": "\(sessions.count)",
                ])
            } else if sessions.isEmpty, !unwatched.isEmpty {
                logger.notice("every session directory is watched again")
            }
            unwatched = sessions
        }
    }

    /// The session of a name the watcher reported, or nil when it is refused (and recorded so).
    private func accepted(_ name: String) -> SessionID? {
        if let refusal = Refusal.of(name, inRoot: root) {
            refuse(name, refusal)
            return nil
        }
        return accept(name)
    }

    /// The session of a name found acceptable.
    private func accept(_ name: String) -> SessionID? {
        if refused.removeValue(forKey: name) != nil {
            logger.notice("session directory accepted again", metadata: ["name": "\(Refusal.printed(name))"])
        }
        return SessionID(name)
    }

    /// Records a name as not backed up; logged once, when it is first refused or for another reason.
    private func refuse(_ name: String, _ refusal: Refusal) {
        guard refused.updateValue(refusal, forKey: name) != refusal else { return }
        logger.warning("session directory \(refusal.message)", metadata: [
            "name": "\(Refusal.printed(name))", "reason": "\(refusal.rawValue)",
        ])
    }

    /// Lists the root for sessions refused or accepted since the last look: the watcher reports
    /// session directories, not symbolic links nor a directory's mode becoming unreadable.
    /// Returns the sessions accepted.
    @discardableResult
    private func survey() throws(WatcherError) -> [SessionID] {
        var accepted: [SessionID] = []
        var stillRefused: Set<String> = []
        for entry in try SessionFiles.entries(of: root) where SessionFiles.isSessionDirectoryName(entry.name) {
            if let refusal = Refusal.of(entry.name, inRoot: root) {
                refuse(entry.name, refusal)
                stillRefused.insert(entry.name)
            } else if entry.kind == .directory, let id = accept(entry.name) {
                accepted.append(id)
            }
        }
        for name in refused.keys where !stillRefused.contains(name) {
            refused[name] = nil
            logger.notice("refused session directory gone", metadata: ["name": "\(Refusal.printed(name))"])
        }
        return accepted.sorted()
    }

    private func surveyPeriodically() async {
        while (try? await Task.sleep(for: settings.watcher.maxDelay)) != nil {
            scheduleAcceptedBySurvey()
        }
    }

    /// Surveys the root and schedules each session it accepts that was refused before (its mode
    /// fixed, say), compared whole: once out of `refused`, no later survey would schedule it.
    private func scheduleAcceptedBySurvey() {
        let before = Set(refused.keys)
        guard let accepted = try? survey() else { return }
        for id in accepted where before.contains(id.rawValue) { schedule(id) }
    }

    /// Schedules every session and returns those found under the root.
    @discardableResult
    private func rescan() -> Set<SessionID> {
        if mirror != nil {
            // Sessions whose directories are gone may still have snapshots S3 lacks.
            Task {
                do {
                    for id in try await sessionStore.sessions() { self.schedule(id) }
                } catch {
                    logger.error("cannot list the local store", metadata: ["error": "\(error)"])
                }
            }
        }
        var found: Set<SessionID> = []
        do {
            for id in try survey() {
                found.insert(id)
                schedule(id)
            }
        } catch {
            logger.error("cannot list the sessions directory", metadata: ["root": "\(root)", "error": "\(error)"])
        }
        return found
    }

    private func session(_ id: SessionID) -> Session {
        if let existing = sessions[id] { return existing }
        var remoteGeneration: (@Sendable () async throws -> UInt64?)?
        if let mirror {
            remoteGeneration = { try await mirror.remoteGeneration(id) }
        }
        let created = Session(replicator: SessionReplicator(
            session: id, directory: "\(root)/\(id.rawValue)", sessionStore: sessionStore, owner: owner,
            conditionalWrites: conditionalWrites, compressionLevel: settings.compressionLevel,
            policy: settings.compaction, remoteGeneration: remoteGeneration, baseBuilds: baseBuilds, logger: logger))
        sessions[id] = created
        return created
    }

    /// Marks the session dirty and starts its upload when a slot is free. A session already
    /// uploading runs once more afterwards, so the newest state always gets uploaded.
    /// `changedPaths` nil: compare the whole directory. `since`: when the change was made.
    ///
    /// A session waiting out the backoff of a failed upload keeps waiting: its new changes go
    /// with the retry. Restarting at each change made a busy session retry at its write rate
    /// against a store that was down, refusing or asking to slow down (13 failures in 6 s
    /// under a 403, FaultInjectionTests).
    private func schedule(_ id: SessionID, changedPaths: Set<String>? = nil, since: ContinuousClock.Instant = .now) {
        guard refused[id.rawValue] == nil else { return }
        var entry = session(id)
        guard !entry.fenced else { return }
        entry.waitingChanges.record(changedPaths ?? [], at: since)
        if let changedPaths, entry.changedPaths != nil {
            // Nil (scan it whole) rather than merge two canonically equivalent names into one.
            entry.changedPaths = entry.changedPaths!.addingReportedPaths(changedPaths)
        } else {
            entry.changedPaths = nil
        }
        let startNow = entry.schedule.changed()
        if entry.schedule.retryAt == nil {
            entry.cancelRetryTimer()
        }
        sessions[id] = entry
        if startNow { enqueue(id) }
        startWaiting()
    }

    private func enqueue(_ id: SessionID) {
        guard sessions[id]?.queued == false else { return }
        sessions[id]?.queued = true
        waiting.append(id)
    }

    private func startWaiting() {
        while runningCount < settings.concurrency, !waiting.isEmpty {
            let id = waiting.removeFirst()
            sessions[id]?.queued = false
            // A retry or the shutdown's flush may come after the session was refused (its directory
            // now a link, say): nothing of it is uploaded until it is accepted again.
            guard var entry = sessions[id], refused[id.rawValue] == nil, entry.schedule.pending, !entry.schedule.running
            else { continue }
            let changedPaths = entry.changedPaths
            entry.changedPaths = []
            entry.uploadingChanges.absorb(entry.waitingChanges)
            entry.waitingChanges = ChangeBacklog()
            entry.schedule.started()
            entry.cancelRetryTimer()
            sessions[id] = entry
            runningCount += 1
            let replicator = entry.replicator
            Task { await self.upload(id, replicator, changedPaths: changedPaths) }
        }
    }

    private func upload(_ id: SessionID, _ replicator: SessionReplicator, changedPaths: Set<String>?) async {
        let started = ContinuousClock.now
        var outcome = UploadSchedule.Outcome.succeeded(unsettled: false)
        var unsettled: [String] = []
        // Whether the primary store took the commit: a failure after it (the mirror's) says
        // nothing about the primary store's health.
        var committed = false
        do {
            // A directory gone since it was scheduled is no upload's business unless it logged
            // out; what the local store already holds is still mirrored.
            if SessionFiles.isDirectory(replicator.directory) {
                sessions[id]?.loggedOut = false
                let result = try await replicator.sync(
                    changedPaths: changedPaths, pause: WritePause(quietPeriod: settings.watcher.quietPeriod, maxDelay: settings.watcher.maxDelay))
                committed = true
                switch result {
                case .uploaded(let snapshot, let kind, let bytes, let stillWriting):
                    // Only a write proves the store answers: an unchanged directory may ask it nothing.
                    storeHealth = .answered
                    logger.info("uploaded", metadata: [
                        "session": "\(id)", "snapshot": "\(snapshot)", "kind": "\(kind.rawValue)", "bytes": "\(bytes)",
                        "duration": "\(ContinuousClock.now - started)",
                    ])
                    EngineMetrics.uploaded(mode: mode, store: sessionStore.store, bytes: bytes)
                    EngineMetrics.committed(lag: sessions[id]?.uploadingChanges.oldest.map { .now - $0 })
                    unsettled = stillWriting
                case .unchanged(let stillWriting):
                    unsettled = stillWriting
                }
                sessions[id]?.uploadingChanges.keepOnly(unsettled)
                sessions[id]?.tombstoned = false
                // Read before the assignment: `sessions[id]?.x = await …` opens its access to the
                // dictionary entry first and holds it across the suspension, while other calls
                // on this actor (new changes arriving) replace the entry. The access then wrote
                // into storage that was no longer the dictionary's: memory corruption, seen as
                // agents crashing (SIGSEGV) under `scripts/asan-kill-loop` and the crash loop.
                let lastCommit = await replicator.lastCommit
                sessions[id]?.lastCommit = lastCommit
                let skippedFiles = await replicator.skippedFiles
                recordSkippedFiles(id, skippedFiles)
                // Files caught mid-write kept their last good version; look at them again shortly.
                outcome = .succeeded(unsettled: !unsettled.isEmpty)
            } else if sessions[id]?.loggedOut == true {
                // Checked now, not when the removal was seen: a restore falling back to two renames
                // leaves the name missing for an instant, and only a directory still gone is a logout.
                try await replicator.tombstone()
                sessions[id]?.loggedOut = false
                sessions[id]?.tombstoned = true
                sessions[id]?.uploadingChanges = ChangeBacklog()
                logger.info("session directory removed", metadata: ["session": "\(id)", "on_delete": "tombstone"])
            } else {
                sessions[id]?.uploadingChanges = ChangeBacklog()
            }
            if let mirror {
                for entry in try await mirror.mirror(id) {
                    EngineMetrics.uploaded(mode: mode, store: mirror.remote.store, bytes: entry.size)
                }
            }
            sessions[id]?.lastError = nil
        } catch let error as SnapshotError {
            if case .fenced = error {
                fence(id, error)
                outcome = .fenced
            } else {
                outcome = .failed(backoff: failed(id, error, committed: committed))
            }
        } catch {
            outcome = .failed(backoff: failed(id, error, committed: committed))
        }
        startupComparison?.remove(id)
        runningCount -= 1
        if var entry = sessions[id] {
            // The files mid-write go with the next upload, whatever starts it.
            entry.changedPaths = Self.pathsForNextUpload(reported: entry.changedPaths, unsettled: unsettled)
            switch entry.schedule.finished(outcome, at: .now, unsettledRetryDelay: settings.watcher.quietPeriod) {
            case .queue:
                sessions[id] = entry
                enqueue(id)
            case .retry(let instant):
                entry.retryTimer = Task {
                    try? await Task.sleep(until: instant, clock: .continuous)
                    self.retryFired(id)
                }
                sessions[id] = entry
            case .idle:
                sessions[id] = entry
            }
        }
        startWaiting()
        if runningCount == 0 && waiting.isEmpty { releaseIdleWaiters() }
    }

    /// What the next upload of a session reads: the paths reported since this upload started and
    /// the files it found mid-write; nil (the whole directory) when that was nil already or would
    /// merge two canonically equivalent names, which are two files.
    static func pathsForNextUpload(reported: Set<String>?, unsettled: [String]) -> Set<String>? {
        reported?.addingReportedPaths(unsettled)
    }

    private func retryFired(_ id: SessionID) {
        guard sessions[id]?.schedule.retryDue(at: .now) == true else { return }
        sessions[id]?.retryTimer = nil
        enqueue(id)
        startWaiting()
    }

    /// Keeps what the replicator reports left out, logging each file once as it is left out and
    /// once as it is taken again, not at every attempt.
    private func recordSkippedFiles(_ id: SessionID, _ skippedFiles: [SkippedFile]) {
        let before = Set(sessions[id]?.skippedFiles ?? [])
        for file in skippedFiles where !before.contains(file) {
            logger.warning("file not backed up; its last good version is kept and it is tried again at its next change", metadata: [
                "session": "\(id)", "file": "\(file.name)", "reason": "\(file.reason)",
            ])
        }
        let now = Set(skippedFiles.map(\.name))
        for file in before where !now.contains(file.name) {
            logger.notice("file backed up again", metadata: ["session": "\(id)", "file": "\(file.name)"])
        }
        sessions[id]?.skippedFiles = skippedFiles
    }

    /// Fenced is final: the session's changes are the new owner's to upload, none is pending here.
    private func fence(_ id: SessionID, _ error: SnapshotError) {
        sessions[id]?.fenced = true
        sessions[id]?.waitingChanges = ChangeBacklog()
        sessions[id]?.uploadingChanges = ChangeBacklog()
        sessions[id]?.lastError = "\(error)"
        logger.error("stopped writing a session another agent claimed", metadata: [
            "session": "\(id)", "error": "\(error)",
        ])
    }

    /// Records a failed upload and returns how long to wait before the next attempt.
    /// `committed`: the primary store took the snapshot and something after it failed.
    private func failed(_ id: SessionID, _ error: any Error, committed: Bool) -> Duration {
        if !committed, let storeError = error as? StoreError {
            switch storeError {
            case .unavailable, .rejected: storeHealth = .failed("\(storeError)")
            case .preconditionFailed, .io, .invalidObject: break
            }
        }
        let failures = (sessions[id]?.schedule.failures ?? 0) + 1
        sessions[id]?.lastError = "\(error)"
        // What the failed upload had taken is not committed: compare everything next time.
        sessions[id]?.changedPaths = nil
        let delay = UploadSchedule.backoff(
            failures: failures, base: settings.retryBaseDelay, ceiling: settings.retryMaxDelay, jitter: .random(in: 0...1))
        logger.warning("upload failed; will retry", metadata: [
            "session": "\(id)", "error": "\(error)", "attempt": "\(failures)", "retry_in": "\(delay)",
        ])
        return delay
    }

    private func removed(_ id: SessionID) {
        var entry = session(id)
        if settings.onDelete == .tombstone {
            // The session's uploads write the tombstone (see `upload`), so it is retried with
            // backoff while the store fails and flushed on SIGTERM like any change. Written here
            // once, a failure was only logged, and a restore brought the logged-out session back.
            entry.loggedOut = true
            sessions[id] = entry
            schedule(id)
            return
        }
        // Nothing is retried for a directory that is gone: the retry's timer is cancelled and the
        // schedule forgets it. A retry cancelled but still recorded made the directory, once back,
        // wait for a retry that never came: the session never uploaded again.
        entry.cancelRetryTimer()
        entry.schedule.removed()
        entry.waitingChanges = ChangeBacklog()
        entry.lastError = nil
        entry.skippedFiles = []
        sessions[id] = entry
        startupComparison?.remove(id)
        guard settings.onDelete == .purge else { return }
        let directory = entry.replicator.directory
        Task {
            do {
                // A restore that falls back to two renames leaves the name missing for an instant;
                // only a directory still gone now is a logout.
                guard !SessionFiles.isDirectory(directory) else { return }
                let keys = try await sessionStore.store.list(prefix: SessionLayout.sessionPrefix(id)).map(\.key)
                try await sessionStore.store.delete(keys)
                logger.info("session directory removed", metadata: ["session": "\(id)", "on_delete": "purge"])
            } catch {
                self.sessions[id]?.lastError = "\(error)"
                logger.error("could not record the removed session", metadata: ["session": "\(id)", "error": "\(error)"])
            }
        }
    }

    /// Applies the retention policy to each session now and then, one session at a time.
    /// Sessions another agent claimed are that agent's to prune.
    private func prunePeriodically(every interval: Duration) async {
        let pruner = SnapshotPruner(sessionStore: sessionStore, mirror: mirror)
        while (try? await Task.sleep(for: interval)) != nil {
            for id in sessions.filter({ !$0.value.fenced }).keys.sorted() where !Task.isCancelled {
                do {
                    let outcome = try await pruner.prune(id, policy: settings.compaction.retention)
                    let deleted = outcome.plan.deletedCount
                    if deleted > 0 {
                        logger.info("pruned", metadata: ["session": "\(id)", "deleted": "\(deleted)", "kept": "\(outcome.plan.kept.count)"])
                    }
                } catch {
                    logger.warning("scheduled prune failed", metadata: ["session": "\(id)", "error": "\(error)"])
                }
            }
        }
    }

    /// Runs every pending upload now, without the debounce, until all are done or the
    /// timeout passes; returns the sessions still not uploaded.
    private func flush(timeout: Duration) async -> [SessionID] {
        // Backoffs and retries of files mid-write run now, once: one still failing or mid-write
        // after it is named unflushed.
        for id in sessions.keys {
            sessions[id]?.cancelRetryTimer()
            if sessions[id]?.schedule.stop() == true { enqueue(id) }
        }
        startWaiting()
        let deadline = Task {
            try? await Task.sleep(for: timeout)
            self.releaseIdleWaiters()
        }
        await waitUntilIdle()
        deadline.cancel()
        return sessions.filter { !$0.value.schedule.isSettled }.map(\.key).sorted()
    }

    private func releaseIdleWaiters() {
        for waiter in idleWaiters { waiter.resume() }
        idleWaiters = []
    }

    private func waitUntilIdle() async {
        if runningCount == 0 && waiting.isEmpty { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }
}

// MARK: - Status

extension SyncService {
    /// Every session the agent has seen, by id.
    public func status() -> [SessionStatus] {
        let now = ContinuousClock.now
        let backedUp = sessions.filter { refused[$0.key.rawValue] == nil }.map { id, entry in
            var backlog = entry.uploadingChanges
            backlog.absorb(entry.waitingChanges)
            return SessionStatus(
                sessionId: id.description, state: state(of: entry, backlog: backlog),
                lastSnapshot: entry.lastCommit.map { "\($0.snapshot)" },
                lastSnapshotAt: entry.lastCommit.map { $0.at.formatted(.iso8601) },
                lagSeconds: backlog.oldest.map { EngineMetrics.seconds(now - $0) } ?? 0,
                pendingChanges: backlog.paths.count, lastError: entry.lastError,
                consecutiveFailures: entry.schedule.failures, watched: !unwatched.contains(id.rawValue),
                skippedFiles: entry.skippedFiles)
        }
        // A refused session may have had snapshots before (its directory became a link, say).
        let refusedSessions = refused.map { name, refusal in
            let lastCommit = SessionID(name).flatMap { sessions[$0]?.lastCommit }
            return SessionStatus(
                sessionId: Refusal.printed(name), state: .refused,
                lastSnapshot: lastCommit.map { "\($0.snapshot)" }, lastSnapshotAt: lastCommit.map { $0.at.formatted(.iso8601) },
                lagSeconds: 0, pendingChanges: 0, lastError: refusal.message, consecutiveFailures: 0, watched: false,
                refusal: refusal)
        }
        return (backedUp + refusedSessions).sorted { $0.sessionId < $1.sessionId }
    }

    private func state(of entry: Session, backlog: ChangeBacklog) -> SessionStatus.State {
        if entry.fenced { return .fenced }
        if entry.tombstoned && entry.schedule.isSettled { return .tombstoned }
        // A retry in flight is still failing until it succeeds: a heartbeat should not flicker.
        if entry.schedule.failures > 0 { return .failing }
        if entry.schedule.running { return .uploading }
        if entry.schedule.pending || !backlog.isEmpty { return .pending }
        if !entry.skippedFiles.isEmpty { return .partial }
        return .synced
    }

    /// Ready once the start-up scan has had every session it found compared (uploaded, found
    /// unchanged, or failed) and the store answered its last probe or upload.
    public func readiness() -> Readiness {
        switch storeHealth {
        case .unknown: return Readiness(isReady: false, reason: "waiting for the store's first answer")
        case .failed(let reason): return Readiness(isReady: false, reason: "the store does not answer: \(reason)")
        case .answered: break
        }
        guard let remaining = startupComparison else {
            return Readiness(isReady: false, reason: "starting: watching the sessions directory")
        }
        guard remaining.isEmpty else {
            return Readiness(isReady: false, reason: "starting: \(remaining.count) session(s) to compare with the store")
        }
        return Readiness(isReady: true, reason: (["ready"] + notBackedUp()).joined(separator: "; "))
    }

    /// What readiness names beside "ready": none of it is fixed by waiting, so it does not make
    /// the agent unready (and its pod leave service), but it is never left unsaid.
    private func notBackedUp() -> [String] {
        var notes: [String] = []
        if !refused.isEmpty {
            let named = refused.keys.sorted().prefix(5).map { "\(Refusal.printed($0)) (\(refused[$0]!.rawValue))" }
            notes.append("\(refused.count) session(s) not backed up: \(named.joined(separator: ", "))\(refused.count > 5 ? ", …" : "")")
        }
        let partial = sessions.filter { !$0.value.skippedFiles.isEmpty && refused[$0.key.rawValue] == nil }
        if !partial.isEmpty {
            let files = partial.values.map(\.skippedFiles.count).reduce(0, +)
            notes.append("\(files) file(s) not backed up in \(partial.count) session(s) (see /sessions)")
        }
        if !unwatched.isEmpty {
            notes.append("\(unwatched.count) session(s) without an inotify watch (fs.inotify.max_user_watches reached), "
                + "compared every \(settings.watcher.maxDelay)")
        }
        return notes
    }

    /// Refreshes the gauges that summarise the sessions. Ages grow without any event, so an
    /// exporter calls this before each scrape rather than the engine on each change.
    public func publishGauges() {
        let statuses = status()
        let pending = statuses.filter { [.pending, .uploading, .failing].contains($0.state) }
        EngineMetrics.sessions(
            pending: pending.count, oldestPendingChangeAge: pending.map(\.lagSeconds).max() ?? 0,
            fenced: statuses.filter { $0.state == .fenced }.count,
            failing: statuses.filter { $0.state == .failing }.count,
            skippedFiles: statuses.map(\.skippedFiles.count).reduce(0, +),
            refused: Dictionary(grouping: refused.values, by: { $0 }).mapValues(\.count))
    }

    /// Asks the store every `storeProbeInterval` whether it answers, so readiness follows an
    /// outage and the recovery even when no session changes.
    private func probeStorePeriodically() async {
        while !Task.isCancelled {
            do {
                try await sessionStore.probe()
                storeHealth = .answered
            } catch {
                storeHealth = .failed("\(error)")
            }
            try? await Task.sleep(for: settings.storeProbeInterval)
        }
    }
}

extension RescanReason {
    var metricLabel: String {
        switch self {
        case .started: "started"
        case .queueOverflow: "queue_overflow"
        case .watchLost: "watch_lost"
        }
    }
}
