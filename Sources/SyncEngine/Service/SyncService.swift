import FoundationEssentials
import Glibc
import Logging
import SessionArchive

public struct WatchSettings: Sendable {
    public var watcher = SessionWatcher.Configuration()
    /// A snapshot is cut between its writer's transactions, not through one.
    public var writePause = WritePause.standard
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
    /// What the agent knows of a session's files: its identity, recorded in each snapshot.
    public var sessionFormat = SessionFormat.opaque
    /// How often the store is asked whether it answers, for readiness, besides what uploads say.
    public var storeProbeInterval: Duration = .seconds(10)
    /// Where each session's committed state is kept between runs (`StateCache`), so a restart
    /// reads it rather than every chain; nil: no cache.
    public var stateDirectory: String?

    public init() {}
}

/// The sidecar's engine: watches every session under the root and keeps each one's
/// snapshots current, one upload in flight per session (the newest state wins), a global
/// limit on concurrent uploads, and retries with backoff while the store is down, so an
/// outage delays uploads but never drops them.
public actor SyncService {
    public nonisolated let root: String
    private let sessionStore: SessionStore
    private let owner: String
    /// This agent's lease, renewed every TTL/3 while it runs; its id names the holder of every
    /// session it claims. Nil: no lease, and claims name no holder.
    private let lease: LeaseHolder?
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
    private var sessions: [SessionID: SessionRecord] = [:]
    /// Beside each record: what uploads the session.
    private var replicators: [SessionID: SessionReplicator] = [:]
    /// Sleeps until `schedule.retryAt`; cancelled whenever the schedule drops that retry.
    private var retryTimers: [SessionID: Task<Void, Never>] = [:]
    private var queue: UploadQueue
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    /// The sessions the start-up scan found that have not had their first upload yet; nil until
    /// the watcher's first scan.
    private var startupComparison: Set<SessionID>?
    private var storeHealth = StoreHealth.unknown
    /// Sessions under the root that are not backed up, with why.
    private var refused: [SessionID: Refusal] = [:]
    /// Sessions with a directory the watcher could not watch (the inotify watch limit): it
    /// compares them every `rescanInterval` instead.
    private var unwatched: Set<SessionID> = []
    /// Sessions an acquire is restoring: the directory swap is not a change to upload.
    private var acquiring: Set<SessionID> = []
    /// Nil without `settings.stateDirectory`, or when it cannot be used.
    private var stateCache: StateCache?
    /// The running watcher (nil before and after `run`), and the uploads waiting for it to
    /// catch up (`changesDuringUpload`), by token.
    private var watcher: SessionWatcher?
    private var catchUps: [UInt64: CheckedContinuation<Void, Never>] = [:]
    private var lastCatchUpToken: UInt64 = 0

    /// `mode` labels the upload metrics.
    public init(
        root: String, sessionStore: SessionStore, owner: String, mode: StorageMode, conditionalWrites: Bool,
        settings: WatchSettings = WatchSettings(), mirror: SessionMirror? = nil, lease: LeaseHolder? = nil, logger: Logger
    ) {
        self.root = root
        self.sessionStore = sessionStore
        self.owner = owner
        self.lease = lease
        self.mode = mode
        self.conditionalWrites = conditionalWrites
        self.settings = settings
        queue = UploadQueue(limit: settings.concurrency)
        self.mirror = mirror
        self.logger = logger
    }

    /// Watches and uploads until the task is cancelled (SIGTERM), then stops taking events
    /// and flushes every pending change. Returns what is left not backed up.
    public func run(shutdownTimeout: Duration) async throws -> ShutdownReport {
        // A restore killed mid-swap leaves working directories; finish or undo them first.
        try DirectorySwap.recoverLeftovers(in: root)
        stateCache = preparedStateCache()
        // Written before anything can claim a session: a head naming this agent whose lease is not
        // there yet looks expired, and an acquirer took a session from this live agent so (at its
        // start, when its first uploads were quicker than the renewing task's first write). A
        // failure here is the renewing task's to report.
        if let lease { try? await lease.renew() }
        let renewing = lease.map { lease in Task { await renewPeriodically(lease) } }
        // The watcher's first event is a rescan once every watch is in place, so changes
        // made while no agent ran are uploaded and none made during the scan is missed.
        let watcher = try SessionWatcher(root: root, configuration: settings.watcher)
        self.watcher = watcher
        // Not a child task: iterating an AsyncStream in a cancelled task ends the stream at
        // once, dropping the pending changes `stop()` reports on its way out (SIGTERM exited
        // 0 "every change uploaded" without them). This task ends when the stream finishes.
        let events = Task {
            for await event in watcher.events {
                handle(event)
            }
            watcherEnded()
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
        // Every session in the store as it is on disk is handed over, so the next acquire need not
        // wait; one not flushed stays held, and its lease expires.
        let released = lease == nil ? [] : await releaseFlushed(except: Set(unflushed))
        // The state of the last commits in the state cache, for the next start.
        for replicator in replicators.values { await replicator.stateCacheSaved() }
        renewing?.cancel()
        return ShutdownReport(
            unflushed: unflushed, released: released,
            refused: refused.map { ShutdownReport.Refused(name: $0.key.description, refusal: $0.value) }.sorted { $0.name < $1.name },
            skippedFiles: sessions.filter { !$0.value.skippedFiles.isEmpty }.mapValues(\.skippedFiles))
    }

    private func handle(_ event: WatchEvent) {
        switch event {
        case .changed(let id, let paths, let since):
            // No paths: the directory itself changed (created, swapped in by a restore).
            if isAccepted(id) { schedule(id, changedPaths: paths.isEmpty ? nil : paths, since: since) }
        case .sessionRemoved(let id):
            if refused.removeValue(forKey: id) != nil {
                logger.notice("refused session directory removed", metadata: ["name": "\(id)"])
            }
            removed(id)
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
                logger.error("\(cause); until then the sessions without a watch are compared every \(settings.watcher.rescanInterval)", metadata: [
                    "unwatched_sessions": "\(sessions.count)",
                ])
            } else if sessions.isEmpty, !unwatched.isEmpty {
                logger.notice("every session directory is watched again")
            }
            unwatched = sessions
        case .caughtUp(let token):
            catchUps.removeValue(forKey: token)?.resume()
        }
    }

    /// No more events: an upload waiting for the watcher to catch up compares the whole directory.
    private func watcherEnded() {
        watcher = nil
        for waiting in catchUps.values { waiting.resume() }
        catchUps = [:]
    }

    /// The changes made in `id` since its running upload started, which that upload takes: it
    /// was deferred while the session was written, and reading only the paths it started with
    /// could take part of a transaction that began during its reads (`WritePause`). The watcher
    /// first reports every change made before this call. Nil: compare the whole directory.
    private func changesDuringUpload(of id: SessionID, by replicator: SessionReplicator) async -> Set<String>? {
        // A session with a directory past the watch limit has changes the watcher cannot see.
        guard let watcher, !unwatched.contains(id) else { return nil }
        lastCatchUpToken += 1
        let token = lastCatchUpToken
        await withCheckedContinuation { continuation in
            catchUps[token] = continuation
            if !watcher.reportPending(of: id, then: token) {
                catchUps[token] = nil
                continuation.resume()
            }
        }
        guard self.watcher != nil, replicators[id] === replicator else { return nil }
        return sessions[id]?.joinRunningUpload()
    }

    /// Whether a session the watcher reported is backed up; false when it is refused (and recorded so).
    private func isAccepted(_ id: SessionID) -> Bool {
        if isRefusedNow(id) { return false }
        accept(id)
        return true
    }

    /// Whether the session's name is now something the agent refuses (its directory replaced by
    /// a link, made unreadable), recorded so: such a session is not backed up, and never taken
    /// for one that logged out.
    private func isRefusedNow(_ id: SessionID) -> Bool {
        guard let refusal = Refusal.of(id.rawValue, inRoot: root) else { return false }
        refuse(id, refusal)
        return true
    }

    /// Records a session found acceptable.
    private func accept(_ id: SessionID) {
        if refused.removeValue(forKey: id) != nil {
            logger.notice("session directory accepted again", metadata: ["name": "\(id)"])
        }
    }

    /// Records a session as not backed up; logged once, when it is first refused or for another reason.
    private func refuse(_ id: SessionID, _ refusal: Refusal) {
        guard refused.updateValue(refusal, forKey: id) != refusal else { return }
        logger.warning("session directory \(refusal.message)", metadata: [
            "name": "\(id)", "reason": "\(refusal.rawValue)",
        ])
    }

    /// Lists the root for sessions refused or accepted since the last look: the watcher reports
    /// session directories, not symbolic links nor a directory's mode becoming unreadable.
    /// Returns the sessions accepted.
    @discardableResult
    private func survey() throws(WatcherError) -> [SessionID] {
        var accepted: [SessionID] = []
        var stillRefused: Set<SessionID> = []
        for entry in try SessionFiles.entries(of: root) {
            guard let id = SessionID(entry.name) else { continue }
            if let refusal = Refusal.of(entry.name, inRoot: root) {
                refuse(id, refusal)
                stillRefused.insert(id)
            } else if entry.kind == .directory {
                accept(id)
                accepted.append(id)
            }
        }
        for id in refused.keys where !stillRefused.contains(id) {
            refused[id] = nil
            logger.notice("refused session directory gone", metadata: ["name": "\(id)"])
        }
        return accepted.sorted()
    }

    private func surveyPeriodically() async {
        while (try? await Task.sleep(for: settings.watcher.rescanInterval)) != nil {
            scheduleAcceptedBySurvey()
        }
    }

    /// Surveys the root and schedules each session it accepts that was refused before (its mode
    /// fixed, say), compared whole: once out of `refused`, no later survey would schedule it.
    private func scheduleAcceptedBySurvey() {
        let before = Set(refused.keys)
        guard let accepted = try? survey() else { return }
        for id in accepted where before.contains(id) { schedule(id) }
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

    /// The session's record, created with its replicator when the session is new; `acquired`:
    /// the session was just acquired (its replicator shortens a long chain at once).
    private func session(_ id: SessionID, acquired: Bool = false) -> SessionRecord {
        if let existing = sessions[id] { return existing }
        var remoteGeneration: (@Sendable () async throws -> UInt64?)?
        if let mirror {
            remoteGeneration = { try await mirror.remoteGeneration(id) }
        }
        replicators[id] = SessionReplicator(
            session: id, directory: directory(of: id), sessionStore: sessionStore, owner: owner, agent: lease?.agent.id,
            conditionalWrites: conditionalWrites, compressionLevel: settings.compressionLevel,
            format: settings.sessionFormat, policy: settings.compaction, remoteGeneration: remoteGeneration, baseBuilds: baseBuilds,
            stateCache: stateCache, acquired: acquired, logger: logger)
        sessions[id] = SessionRecord()
        return SessionRecord()
    }

    /// The state cache, its directory made; nil, said once, when it cannot be: the agent works
    /// as well without it, reading each session's chain from the store when it claims it.
    private func preparedStateCache() -> StateCache? {
        guard let directory = settings.stateDirectory else { return nil }
        let cache = StateCache(directory: directory, keyring: sessionStore.keyring)
        do {
            try cache.prepare()
            return cache
        } catch {
            logger.warning("no state cache: a restart reads every session's snapshots from the store (set --state-dir to a writable directory)", metadata: [
                "state_dir": "\(directory)", "error": "\(error)",
            ])
            return nil
        }
    }

    private func directory(of id: SessionID) -> String {
        "\(root)/\(id.rawValue)"
    }

    private func cancelRetryTimer(_ id: SessionID) {
        retryTimers.removeValue(forKey: id)?.cancel()
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
        guard refused[id] == nil else { return }
        guard !acquiring.contains(id) else { return }
        var entry = session(id)
        guard !entry.fenced, entry.released == nil, !entry.releasing else { return }
        let startNow = entry.changed(changedPaths, since: since)
        if entry.schedule.retryAt == nil {
            cancelRetryTimer(id)
        }
        sessions[id] = entry
        if startNow { queue.enqueue(id) }
        startWaiting()
    }

    private func startWaiting() {
        while let id = queue.next() {
            // A retry or the shutdown's flush may come after the session was refused (its directory
            // now a link, say): nothing of it is uploaded until it is accepted again.
            guard var entry = sessions[id], let replicator = replicators[id], refused[id] == nil,
                entry.schedule.pending, !entry.schedule.running
            else { continue }
            let changedPaths = entry.startUpload()
            cancelRetryTimer(id)
            sessions[id] = entry
            queue.started()
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
        /// The session's record was replaced meanwhile (an acquire restored it anew, with a
        /// replicator of its own): what this upload learned belongs to a record that is gone. (A
        /// release drops the replicator and keeps the record, which this upload still finishes.)
        struct Superseded: Error {}
        func isSuperseded() -> Bool { replicators[id].map { $0 !== replicator } ?? false }
        func stillCurrent() throws {
            if isSuperseded() { throw Superseded() }
        }
        var superseded = false
        do {
            // A directory gone since it was scheduled is no upload's business unless it logged
            // out; what the local store already holds is still mirrored.
            if SessionFiles.isDirectory(replicator.directory) {
                sessions[id]?.loggedOut = false
                // A release commits now: the worker stopped writing the session before it asked,
                // and waiting out a pause after its last write would only hold the move up.
                let pause =
                    sessions[id]?.releasing == true
                    ? nil : settings.writePause
                let result = try await replicator.sync(changedPaths: changedPaths, pause: pause) {
                    await self.changesDuringUpload(of: id, by: replicator)
                }
                committed = true
                // Read before the assignments: `sessions[id]?.x = await …` opens its access to the
                // dictionary entry first and holds it across the suspension, while other calls
                // on this actor (new changes arriving) replace the entry. The access then wrote
                // into storage that was no longer the dictionary's: memory corruption, seen as
                // agents crashing (SIGSEGV) under `scripts/asan-kill-loop` and the crash loop.
                let aftermath = await replicator.aftermath
                try stillCurrent()
                switch result {
                case .uploaded(let snapshot, let kind, let bytes, let stillWriting):
                    // Only a write proves the store answers: an unchanged directory may ask it nothing.
                    storeHealth = .answered
                    let duration = ContinuousClock.now - started
                    // `read_after`: the snapshot holds every write made before that point of the upload.
                    let readAfter = max((aftermath.snapshotReadsStarted ?? started) - started, .zero)
                    logger.info("uploaded", metadata: [
                        "session": "\(id)", "snapshot": "\(snapshot)", "kind": "\(kind.rawValue)", "bytes": "\(bytes)",
                        "duration": "\(duration)", "read_after": "\(readAfter)",
                    ])
                    EngineMetrics.uploaded(mode: mode, store: sessionStore.store, bytes: bytes)
                    EngineMetrics.committed(lag: sessions[id]?.uploadingChanges.oldest.map { .now - $0 })
                    unsettled = stillWriting
                case .unchanged(let stillWriting):
                    unsettled = stillWriting
                }
                // Without a suspension from here: a flush waiting for this upload sees it complete
                // and its commit at once. Marked complete first, with the commit read after an
                // await, a flush could answer the snapshot before it (LeaseTests, once in a full run).
                sessions[id]?.synced(unsettled: unsettled)
                sessions[id]?.lastCommit = aftermath.lastCommit
                sessions[id]?.health = aftermath.health
                recordSkippedFiles(id, aftermath.skippedFiles)
                // Files caught mid-write kept their last good version; look at them again shortly.
                outcome = .succeeded(unsettled: !unsettled.isEmpty)
            } else if sessions[id]?.loggedOut == true, !isRefusedNow(id) {
                // Checked now, not when the removal was seen: a restore falling back to two renames
                // leaves the name missing for an instant, and only a directory still gone is a logout.
                try await replicator.tombstone()
                try stillCurrent()
                sessions[id]?.tombstoneWritten()
                logger.info("session directory removed", metadata: ["session": "\(id)", "on_delete": "tombstone"])
            } else {
                sessions[id]?.uploadingChanges = ChangeBacklog()
            }
            if let mirror {
                for entry in try await mirror.mirror(id) {
                    EngineMetrics.uploaded(mode: mode, store: mirror.remote.store, bytes: entry.size)
                }
                try stillCurrent()
            }
            sessions[id]?.lastError = nil
        } catch where error is Superseded || isSuperseded() {
            superseded = true
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
        queue.finished()
        // The record that scheduled this upload is gone; the new one schedules its own.
        if superseded { return }
        startupComparison?.remove(id)
        if var entry = sessions[id] {
            let next = entry.uploadFinished(outcome, unsettled: unsettled, at: .now, unsettledRetryDelay: settings.watcher.quietPeriod)
            sessions[id] = entry
            switch next {
            case .queue:
                queue.enqueue(id)
            case .retry(let instant):
                retryTimers[id] = Task {
                    try? await Task.sleep(until: instant, clock: .continuous)
                    self.retryFired(id)
                }
            case .idle:
                break
            }
        }
        startWaiting()
        if queue.isIdle { releaseIdleWaiters() }
    }

    private func retryFired(_ id: SessionID) {
        guard sessions[id]?.schedule.retryDue(at: .now) == true else { return }
        retryTimers[id] = nil
        queue.enqueue(id)
        startWaiting()
    }

    /// Keeps what the replicator reports left out, logging each file once as it is left out and
    /// once as it is taken again, not at every attempt.
    private func recordSkippedFiles(_ id: SessionID, _ skippedFiles: [SkippedFile]) {
        guard let (leftOut, takenAgain) = sessions[id]?.recordSkippedFiles(skippedFiles) else { return }
        for file in leftOut {
            logger.warning("file not backed up; its last good version is kept and it is tried again at its next change", metadata: [
                "session": "\(id)", "file": "\(file.name)", "reason": "\(file.reason)",
            ])
        }
        for file in takenAgain {
            logger.notice("file backed up again", metadata: ["session": "\(id)", "file": "\(file.name)"])
        }
    }

    private func fence(_ id: SessionID, _ error: SnapshotError) {
        sessions[id]?.fence(error)
        logger.error("stopped writing a session another agent claimed", metadata: [
            "session": "\(id)", "error": "\(error)",
        ])
    }

    /// Records a failed upload and returns how long to wait before the next attempt.
    /// `committed`: the primary store took the snapshot and something after it failed.
    private func failed(_ id: SessionID, _ error: any Error, committed: Bool) -> Duration {
        storeHealth.uploadFailed(error, committed: committed)
        let failures = (sessions[id]?.schedule.failures ?? 0) + 1
        sessions[id]?.uploadFailed(error)
        let delay = UploadSchedule.backoff(
            failures: failures, base: settings.retryBaseDelay, ceiling: settings.retryMaxDelay, jitter: .random(in: 0...1))
        logger.warning("upload failed; will retry", metadata: [
            "session": "\(id)", "error": "\(error)", "attempt": "\(failures)", "retry_in": "\(delay)",
        ])
        return delay
    }

    private func removed(_ id: SessionID) {
        // A session handed over, or held by another agent (fenced), is that agent's: its local
        // copy going away says nothing, and must never tombstone or purge what that agent writes.
        guard !acquiring.contains(id), sessions[id]?.released == nil, sessions[id]?.fenced != true else { return }
        var entry = session(id)
        let uploads = entry.directoryRemoved(policy: settings.onDelete)
        sessions[id] = entry
        if uploads {
            schedule(id)
            return
        }
        cancelRetryTimer(id)
        startupComparison?.remove(id)
        guard settings.onDelete == .purge else { return }
        let purge = SessionPurge(sessionStore: sessionStore)
        let directory = directory(of: id)
        Task {
            do {
                guard try await purge.purge(id, directory: directory, agent: lease?.agent.id) else { return }
                logger.info("session directory removed", metadata: ["session": "\(id)", "on_delete": "purge"])
            } catch {
                self.sessions[id]?.lastError = "\(error)"
                logger.error("could not record the removed session", metadata: ["session": "\(id)", "error": "\(error)"])
            }
        }
    }

    /// Sessions another agent claimed are that agent's to prune.
    private func prunePeriodically(every interval: Duration) async {
        let pruning = PeriodicPruning(
            pruner: SnapshotPruner(sessionStore: sessionStore, mirror: mirror), policy: settings.compaction.retention, logger: logger)
        while (try? await Task.sleep(for: interval)) != nil {
            await pruning.prune(sessions.filter { !$0.value.fenced && $0.value.released == nil }.keys.sorted())
        }
    }

    /// Runs every pending upload now, without the debounce, until all are done or the
    /// timeout passes; returns the sessions still not uploaded.
    private func flush(timeout: Duration) async -> [SessionID] {
        // Backoffs and retries of files mid-write run now, once: one still failing or mid-write
        // after it is named unflushed.
        for id in sessions.keys {
            cancelRetryTimer(id)
            if sessions[id]?.schedule.stop() == true { queue.enqueue(id) }
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
        if queue.isIdle { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }
}

// MARK: - Control (moves between agents)

extension SyncService: SessionControl {
    /// How often a flush looks whether its upload finished.
    private static let flushPollInterval: Duration = .milliseconds(10)
    /// Releases of `releaseAll` waiting at once (each polls its upload).
    private static let releasesAtOnce = 64

    public func flush(_ id: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot {
        try heldSession(id)
        return try await flushSession(id, deadline: .now + timeout)
    }

    public func release(_ id: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot {
        try await release(id, deadline: .now + timeout)
    }

    private func release(_ id: SessionID, deadline: ContinuousClock.Instant) async throws(SessionControlError) -> CommittedSnapshot {
        if let released = sessions[id]?.released { return answer(id, released) }
        try heldSession(id)
        // The flush's upload is the last this session gets: changes after the call are not ours.
        let started = ContinuousClock.now
        let flushing = startFlush(id)
        sessions[id]?.releasing = true
        do throws(SessionControlError) {
            try await waitForUpload(flushing, of: id, deadline: deadline)
            let flushed = ContinuousClock.now
            guard let replicator = replicators[id] else { throw SessionControlError(.released, "session \(id) was released meanwhile") }
            let head = try await controlStep(id, "release") { try await replicator.release() }
            logger.debug("release timing", metadata: [
                "session": "\(id)", "flush": "\(flushed - started)", "head": "\(ContinuousClock.now - flushed)",
            ])
            let release = head.released!
            cancelRetryTimer(id)
            sessions[id]?.releasing = false
            sessions[id]?.released = release
            sessions[id]?.lastCommit = head.latest.map { ($0, head.updatedAt) }
            replicators[id] = nil
            logger.info("session released", metadata: ["session": "\(id)", "snapshot": "\(release.snapshot.map { "\($0)" } ?? "-")"])
            return answer(id, release)
        } catch {
            // Still held: what was written meanwhile goes in the next upload, which compares everything.
            sessions[id]?.releasing = false
            schedule(id)
            throw error
        }
    }

    public func releaseAll(timeout: Duration) async -> ReleaseReport {
        let held = sessions.filter { $0.value.released == nil && !$0.value.fenced && refused[$0.key] == nil && replicators[$0.key] != nil }
        let ids = held.keys.sorted()
        let deadline = ContinuousClock.now + timeout
        // One deadline for all; the uploads they wait for take turns under the upload limit anyway.
        let outcomes = (try? await ids.concurrentMap(limit: Self.releasesAtOnce) { id -> (SessionID, Result<CommittedSnapshot, SessionControlError>) in
            do throws(SessionControlError) {
                return (id, .success(try await self.release(id, deadline: deadline)))
            } catch {
                return (id, .failure(error))
            }
        }) ?? []
        var report = ReleaseReport()
        for (id, outcome) in outcomes {
            switch outcome {
            case .success(let snapshot): report.preservedSessions.append(snapshot)
            case .failure(let error):
                report.failedSessions.append(.init(sessionId: id.description, error: error.message, reason: error.reason.rawValue))
            }
        }
        return report
    }

    public func acquire(_ id: SessionID, options: AcquireOptions) async throws(SessionControlError) -> RestoreReport {
        guard let lease else { throw SessionControlError(.restoreFailed, "this agent runs without a lease: it cannot acquire sessions") }
        if let record = sessions[id], !record.fenced, record.released == nil, replicators[id] != nil, SessionFiles.isDirectory(directory(of: id)) {
            // Held and watched here already: restoring would replace the directory the worker runs.
            var report = RestoreReport()
            report.recoveredSessions.append(.init(
                sessionId: id.description, status: RestoreOutcome.Status.present.rawValue,
                snapshot: record.lastCommit.map { "\($0.snapshot)" }, files: record.health?.files ?? 0, bytes: record.health?.bytes ?? 0,
                registered: record.health?.identity?.registered, acquired: Acquisition.sameHolder.rawValue))
            return report
        }
        acquiring.insert(id)
        defer { acquiring.remove(id) }
        let restore = SessionsRestore(
            sources: RestoreSources(primary: sessionStore, mirror: mirror), root: root,
            request: RestoreRequest(
                sessions: .named([id]), format: settings.sessionFormat,
                acquiring: RestoreRequest.Acquiring(lease: lease, options: options, conditionalWrites: conditionalWrites)),
            logger: logger)
        let result: RestoreResult
        do {
            result = try await restore.run(try await restore.plan()) { _ in }
        } catch {
            throw SessionControlError(.restoreFailed, "session \(id): \(error)")
        }
        if let failed = result.report.failedSessions.first {
            let reason: SessionControlError.Reason =
                switch failed.reason {
                case SessionControlError.Reason.heldElsewhere.rawValue: .heldElsewhere
                case RestoreOutcome.Status.notFound.rawValue: .unknownSession
                default: .restoreFailed
                }
            throw SessionControlError(reason, failed.error)
        }
        // A new record and replicator: the replicator claims again (this agent holds it) and loads
        // the restored snapshot's state, so comparing the directory finds nothing to upload; but
        // a long chain gets a base now, while nothing waits for it, so the next move's is short.
        cancelRetryTimer(id)
        sessions[id] = nil
        replicators[id] = nil
        acquiring.remove(id)
        _ = session(id, acquired: true)
        schedule(id)
        logger.info("session acquired", metadata: [
            "session": "\(id)", "acquired": "\(result.report.recoveredSessions.first?.acquired ?? "-")",
        ])
        return result.report
    }

    public func logout(_ id: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot {
        guard sessions[id] != nil || SessionFiles.isDirectory(directory(of: id)) else {
            throw SessionControlError(.unknownSession, "no session \(id) in \(root)")
        }
        if sessions[id]?.fenced == true { throw fencedError(id) }
        if sessions[id]?.released != nil || replicators[id] == nil {
            // Released here before, or not seen yet: a replicator of its own claims it for the logout.
            sessions[id] = nil
            replicators[id] = nil
        }
        _ = session(id)
        let replicator = replicators[id]!
        acquiring.insert(id)
        defer { acquiring.remove(id) }
        try await controlStep(id, "logout") { try await replicator.tombstone() }
        sessions[id]?.tombstoneWritten()
        let lastCommit = await replicator.lastCommit
        sessions[id]?.lastCommit = lastCommit
        do {
            let directory = directory(of: id)
            if SessionFiles.isDirectory(directory) { try FileManager.default.removeItem(atPath: directory) }
        } catch {
            throw SessionControlError(.notCommitted, "session \(id): the logout is recorded, but its directory could not be removed: \(error)")
        }
        logger.info("session logged out", metadata: ["session": "\(id)"])
        return CommittedSnapshot(sessionId: id.description, snapshot: lastCommit.map { "\($0.snapshot)" }, committedAt: lastCommit?.at)
    }

    /// Throws unless this agent writes the session: it is under the root or known, not fenced, not released.
    private func heldSession(_ id: SessionID) throws(SessionControlError) {
        guard sessions[id] != nil || SessionFiles.isDirectory(directory(of: id)) else {
            throw SessionControlError(.unknownSession, "no session \(id) in \(root)")
        }
        if sessions[id]?.fenced == true { throw fencedError(id) }
        if sessions[id]?.released != nil {
            throw SessionControlError(.released, "session \(id) was released by this agent and not acquired again")
        }
    }

    private func fencedError(_ id: SessionID) -> SessionControlError {
        SessionControlError(.fenced, "session \(id) was claimed by another agent; this agent no longer writes it (\(sessions[id]?.lastError ?? "fenced"))")
    }

    /// Commits everything written to the session before the call, or throws `notCommitted` at the deadline.
    private func flushSession(_ id: SessionID, deadline: ContinuousClock.Instant) async throws(SessionControlError) -> CommittedSnapshot {
        let flushing = startFlush(id)
        try await waitForUpload(flushing, of: id, deadline: deadline)
        let lastCommit = sessions[id]?.lastCommit
        return CommittedSnapshot(sessionId: id.description, snapshot: lastCommit.map { "\($0.snapshot)" }, committedAt: lastCommit?.at)
    }

    /// Schedules a comparison of the whole directory (what the watcher has not reported yet is in
    /// it too) and returns the number of the upload that will carry it.
    private func startFlush(_ id: SessionID) -> Int {
        let upload = (sessions[id]?.uploadsStarted ?? 0) + 1
        if sessions[id]?.schedule.retryAt != nil, sessions[id]?.schedule.failures == 0 {
            // Files mid-write waiting for a look: look now.
            cancelRetryTimer(id)
        }
        schedule(id)
        return upload
    }

    /// Waits until upload `number` (or a later one) of the session committed everything it read.
    private func waitForUpload(_ number: Int, of id: SessionID, deadline: ContinuousClock.Instant) async throws(SessionControlError) {
        while (sessions[id]?.lastCompleteUpload ?? 0) < number {
            if sessions[id]?.fenced == true { throw fencedError(id) }
            // Released meanwhile (a release that raced this flush): nothing more is uploaded.
            if sessions[id]?.released != nil {
                throw SessionControlError(.released, "session \(id) was released by this agent while the call waited")
            }
            guard ContinuousClock.now < deadline else {
                let cause = sessions[id]?.lastError.map { ": \($0)" } ?? ""
                throw SessionControlError(.notCommitted, "session \(id): not committed within the timeout\(cause); still held")
            }
            do {
                try await Task.sleep(for: Self.flushPollInterval)
            } catch {
                throw SessionControlError(.notCommitted, "session \(id): cancelled before it was committed; still held")
            }
        }
    }

    /// A replicator call of a control route, its failure said as the route's.
    private func controlStep<Value: Sendable>(
        _ id: SessionID, _ what: String, _ body: () async throws -> Value
    ) async throws(SessionControlError) -> Value {
        do {
            return try await body()
        } catch SnapshotError.fenced(let session, let by) {
            fence(id, SnapshotError.fenced(session: session, by: by))
            throw fencedError(id)
        } catch {
            throw SessionControlError(.notCommitted, "session \(id): the \(what) was not committed: \(error)")
        }
    }

    private func answer(_ id: SessionID, _ release: SessionHead.Release) -> CommittedSnapshot {
        CommittedSnapshot(sessionId: id.description, snapshot: release.snapshot.map { "\($0)" }, committedAt: sessions[id]?.lastCommit?.at)
    }

    /// At shutdown, after the final flush: releases every held session but those in `unflushed`.
    private func releaseFlushed(except unflushed: Set<SessionID>) async -> [SessionID] {
        var released: [SessionID] = []
        for (id, replicator) in replicators.sorted(by: { $0.key < $1.key })
        where !unflushed.contains(id) && sessions[id]?.fenced == false && sessions[id]?.released == nil && refused[id] == nil {
            do {
                let head = try await replicator.release()
                sessions[id]?.released = head.released
                released.append(id)
            } catch {
                logger.warning("could not release a session at shutdown; it stays held until its lease expires", metadata: [
                    "session": "\(id)", "error": "\(error)",
                ])
            }
        }
        return released
    }

    /// Rewrites the lease every TTL/3: one request per interval, whatever the number of sessions.
    private func renewPeriodically(_ lease: LeaseHolder) async {
        var failing = false
        while !Task.isCancelled {
            do {
                try await lease.renew()
                if failing { logger.notice("lease renewed again") }
                failing = false
            } catch {
                // The sessions stay this agent's to write; an acquirer that sees the lease unchanged
                // for a TTL claims them, and the next commit here is fenced by the condition.
                if !failing { logger.warning("could not renew the lease", metadata: ["error": "\(error)"]) }
                failing = true
            }
            try? await Task.sleep(for: lease.interval)
        }
    }
}

// MARK: - Status

extension SyncService {
    /// Every session the agent has seen, by id.
    public func status() -> [SessionStatus] {
        let now = ContinuousClock.now
        let backedUp = sessions.filter { refused[$0.key] == nil }.map { id, entry in
            entry.status(id, watched: !unwatched.contains(id), at: now)
        }
        let refusedSessions = refused.map { id, refusal in SessionStatus.refused(id, refusal, lastCommit: sessions[id]?.lastCommit) }
        return (backedUp + refusedSessions).sorted { $0.sessionId < $1.sessionId }
    }

    /// Ready once the start-up scan has had every session it found compared and the store answered
    /// its last probe or upload (`Readiness.of`).
    public func readiness() -> Readiness {
        let skippedFiles = sessions.filter { refused[$0.key] == nil }.map(\.value.skippedFiles)
        let identityChanged = sessions.values.filter(\.hasLostItsIdentity).count
        return Readiness.of(
            store: storeHealth, startupComparison: startupComparison,
            notBackedUp: Readiness.notBackedUp(
                refused: refused, skippedFiles: skippedFiles, identityChanged: identityChanged, unwatched: unwatched.count,
                comparedEvery: settings.watcher.rescanInterval))
    }

    /// Refreshes the gauges that summarise the sessions. Ages grow without any event, so an
    /// exporter calls this before each scrape rather than the engine on each change.
    public func publishGauges() {
        let statuses = status()
        let pending = statuses.filter { [.pending, .uploading, .failing].contains($0.state) }
        EngineMetrics.sessions(
            pending: pending.count, oldestPendingChangeAge: pending.map(\.lagSeconds).max() ?? 0,
            fenced: statuses.filter { $0.state == .fenced }.count,
            released: statuses.filter { $0.state == .released }.count,
            failing: statuses.filter { $0.state == .failing }.count,
            skippedFiles: statuses.map(\.skippedFiles.count).reduce(0, +),
            refused: Dictionary(grouping: refused.values, by: { $0 }).mapValues(\.count))
        EngineMetrics.sessionHealth(statuses)
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
