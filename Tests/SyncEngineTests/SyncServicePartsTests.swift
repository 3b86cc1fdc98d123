import Foundation
import SessionCrypto
@testable import SyncEngine
import TestSupport
import Testing

/// The decisions `SyncService` leaves to its parts, without the actor, a watcher or a clock.
@Suite("Upload queue")
struct UploadQueueTests {
    let a = SessionID("a")!
    let b = SessionID("b")!
    let c = SessionID("c")!

    @Test func sessionsStartInTheOrderQueuedEachOnceAndNoMoreThanTheLimitAtOnce() {
        var queue = UploadQueue(limit: 2)
        #expect(queue.isIdle)
        for id in [a, b, a, c] { queue.enqueue(id) }
        #expect(queue.waiting == [a, b, c])
        let first = queue.next()
        queue.started()
        let second = queue.next()
        queue.started()
        let beyondTheLimit = queue.next()
        #expect(first == a && second == b)
        #expect(beyondTheLimit == nil, "two run: the limit")
        queue.finished()
        let third = queue.next()
        #expect(third == c)
        #expect(!queue.isIdle)
    }

    @Test func aSessionTakenFromTheQueueCanBeQueuedAgain() {
        var queue = UploadQueue(limit: 1)
        queue.enqueue(a)
        let first = queue.next()
        // Not started (nothing to upload, or refused): the slot stays free.
        queue.enqueue(a)
        let again = queue.next()
        #expect(first == a && again == a)
        queue.started()
        queue.finished()
        #expect(queue.isIdle)
    }
}

@Suite("Session record")
struct SessionRecordTests {
    let start = ContinuousClock.now
    let quiet = Duration.milliseconds(250)
    func at(_ milliseconds: Int) -> ContinuousClock.Instant { start + .milliseconds(milliseconds) }

    @Test func anUploadTakesTheReportedPathsAndTheNextOneWhatCameMeanwhile() {
        var record = SessionRecord()
        let queuedAtOnce = record.changed(["creds.json"], since: at(0))
        #expect(queuedAtOnce)
        // A first upload compares everything: its paths stay nil until one started.
        let firstPaths = record.startUpload()
        #expect(firstPaths == nil)
        let queuedWhileUploading = record.changed(["pre-key-1.json"], since: at(10))
        #expect(!queuedWhileUploading)
        let queuedAgainWhileUploading = record.changed(["pre-key-2.json"], since: at(20))
        #expect(!queuedAgainWhileUploading)
        #expect(record.status(SessionID("s")!, watched: true, at: at(30)).state == .uploading)
        let afterUpload = record.uploadFinished(.succeeded(unsettled: false), unsettled: [], at: at(40), unsettledRetryDelay: quiet)
        #expect(afterUpload == .queue)
        let nextPaths = record.startUpload()
        #expect(nextPaths == ["pre-key-1.json", "pre-key-2.json"])
    }

    /// An upload its session's writer deferred takes what came meanwhile: nothing is left for
    /// another upload, unless what came says "the whole directory" (a flush), which the next keeps.
    @Test func aDeferredUploadJoinsWhatCameMeanwhileButNotAWholeComparison() {
        var record = SessionRecord()
        _ = record.changed(["creds.json"], since: at(0))
        _ = record.startUpload()
        _ = record.uploadFinished(.succeeded(unsettled: false), unsettled: [], at: at(5), unsettledRetryDelay: quiet)
        #expect(record.joinRunningUpload() == nil, "no upload runs")

        _ = record.changed(["creds.json"], since: at(10))
        #expect(record.startUpload() == ["creds.json"])
        _ = record.changed(["pre-key-1.json", "pre-key-2.json"], since: at(20))
        #expect(record.joinRunningUpload() == ["pre-key-1.json", "pre-key-2.json"])
        #expect(record.joinRunningUpload() == [], "taken once")
        #expect(record.uploadFinished(.succeeded(unsettled: false), unsettled: [], at: at(40), unsettledRetryDelay: quiet) == .idle)
        #expect(record.schedule.isSettled)

        _ = record.changed(["creds.json"], since: at(50))
        _ = record.startUpload()
        _ = record.changed(nil, since: at(60))
        #expect(record.joinRunningUpload() == nil)
        #expect(record.uploadFinished(.succeeded(unsettled: false), unsettled: [], at: at(70), unsettledRetryDelay: quiet) == .queue)
        #expect(record.startUpload() == nil)
    }

    @Test func aChangeOfTheWholeDirectoryOrTwoCanonicallyEquivalentNamesCompareEverything() {
        var record = SessionRecord()
        _ = record.changed(nil, since: at(0))
        _ = record.startUpload()
        _ = record.changed(["caf\u{E9}.json"], since: at(10))
        _ = record.changed(["cafe\u{301}.json"], since: at(20))
        _ = record.uploadFinished(.succeeded(unsettled: false), unsettled: [], at: at(30), unsettledRetryDelay: quiet)
        let pathsAfterTwins = record.startUpload()
        #expect(pathsAfterTwins == nil)
    }

    @Test func aFailedUploadComparesEverythingNextAndShowsFailingUntilOneSucceeds() {
        var record = SessionRecord()
        _ = record.changed(["creds.json"], since: at(0))
        _ = record.startUpload()
        record.uploadFailed(StoreError.unavailable("down"))
        let afterFailure = record.uploadFinished(.failed(backoff: .seconds(1)), unsettled: [], at: at(10), unsettledRetryDelay: quiet)
        #expect(afterFailure == .retry(at: at(1010)))
        let status = record.status(SessionID("s")!, watched: true, at: at(20))
        #expect(status.state == .failing)
        #expect(status.consecutiveFailures == 1)
        #expect(status.lastError == "store unavailable: down")
        #expect(status.lagSeconds == 0.02)
        let pathsAfterFailure = record.startUpload()
        #expect(pathsAfterFailure == nil)
    }

    @Test func filesMidWriteGoWithTheNextUploadAndLeaveTheSessionPending() {
        var record = SessionRecord()
        _ = record.changed(nil, since: at(0))
        _ = record.startUpload()
        let afterUnsettled = record.uploadFinished(.succeeded(unsettled: true), unsettled: ["creds.json"], at: at(10), unsettledRetryDelay: quiet)
        #expect(afterUnsettled == .retry(at: at(260)))
        #expect(record.status(SessionID("s")!, watched: false, at: at(20)).state == .pending)
        let retryDue = record.schedule.retryDue(at: at(260))
        #expect(retryDue)
        let pathsAfterUnsettled = record.startUpload()
        #expect(pathsAfterUnsettled == ["creds.json"])
    }

    @Test func aRemovalUnderTheTombstonePolicyUploadsAndUnderTheOthersForgetsThePendingRetry() {
        var failing = SessionRecord()
        _ = failing.changed(["creds.json"], since: at(0))
        _ = failing.startUpload()
        failing.uploadFailed(StoreError.unavailable("down"))
        _ = failing.uploadFinished(.failed(backoff: .seconds(6)), unsettled: [], at: at(10), unsettledRetryDelay: quiet)
        failing.skippedFiles = [SkippedFile(name: "media.bin", reason: "larger than the 64 MiB limit")]

        var tombstoned = failing
        let uploadsTombstone = tombstoned.directoryRemoved(policy: .tombstone)
        #expect(uploadsTombstone)
        #expect(tombstoned.loggedOut)
        #expect(tombstoned.schedule.retryAt != nil, "the tombstone waits out the backoff like any change")

        for policy in [DeletePolicy.keep, .purge] {
            var forgotten = failing
            let uploads = forgotten.directoryRemoved(policy: policy)
            #expect(!uploads)
            #expect(!forgotten.loggedOut)
            #expect(forgotten.schedule.retryAt == nil && forgotten.schedule.isSettled && forgotten.schedule.failures == 0)
            let status = forgotten.status(SessionID("s")!, watched: true, at: at(20))
            #expect(status.lastError == nil && status.skippedFiles.isEmpty && status.consecutiveFailures == 0)
            // The directory back: it uploads at once, not after a retry that never comes.
            let queuedWhenBack = forgotten.changed(nil, since: at(30))
            #expect(queuedWhenBack)
        }
    }

    @Test func aFencedSessionKeepsNothingPendingAndShowsWhoFencedIt() {
        var record = SessionRecord()
        _ = record.changed(["creds.json"], since: at(0))
        _ = record.startUpload()
        _ = record.changed(["pre-key-1.json"], since: at(5))
        record.fence(.fenced(session: "s", by: "agent-2"))
        _ = record.uploadFinished(.fenced, unsettled: [], at: at(10), unsettledRetryDelay: quiet)
        let status = record.status(SessionID("s")!, watched: true, at: at(20))
        #expect(status.state == .fenced)
        #expect(status.pendingChanges == 0 && status.lagSeconds == 0)
        #expect(status.lastError?.contains("agent-2") == true)
    }

    @Test func aTombstonedSessionShowsSoOnceSettledAndAPartialOneNamesWhatItLeftOut() {
        var record = SessionRecord()
        record.tombstoned = true
        #expect(record.status(SessionID("s")!, watched: true, at: at(0)).state == .tombstoned)
        record.tombstoned = false
        record.skippedFiles = [SkippedFile(name: "media.bin", reason: "larger than the 64 MiB limit")]
        #expect(record.status(SessionID("s")!, watched: true, at: at(0)).state == .partial)
        let refused = SessionStatus.refused(SessionID("link\nname")!, .symlink, lastCommit: nil)
        #expect(refused.sessionId == "~6c696e6b0a6e616d65" && refused.state == .refused && !refused.watched)
    }
}

@Suite("Store health and readiness")
struct ReadinessTests {
    @Test func onlyAStoreThatDoesNotAnswerOrRefusesBeforeTheCommitMakesItUnhealthy() {
        var health = StoreHealth.answered
        health.uploadFailed(StoreError.unavailable("down"), committed: true)
        #expect(health == .answered, "a failure after the primary store's commit (the mirror's) says nothing of it")
        health.uploadFailed(StoreError.preconditionFailed(key: "k"), committed: false)
        health.uploadFailed(StoreError.io("disk"), committed: false)
        health.uploadFailed(SnapshotError.corrupt("x"), committed: false)
        #expect(health == .answered)
        health.uploadFailed(StoreError.rejected("403"), committed: false)
        #expect(health == .failed("store refused the request: 403"))
        health.uploadFailed(StoreError.unavailable("down"), committed: false)
        #expect(health == .failed("store unavailable: down"))
    }

    @Test func readyOnceTheStoreAnsweredAndTheStartUpComparisonIsOver() {
        let s1 = SessionID("s1")!
        #expect(Readiness.of(store: .unknown, startupComparison: [], notBackedUp: [])
            == Readiness(isReady: false, reason: "waiting for the store's first answer"))
        #expect(Readiness.of(store: .failed("down"), startupComparison: [], notBackedUp: [])
            == Readiness(isReady: false, reason: "the store does not answer: down"))
        #expect(Readiness.of(store: .answered, startupComparison: nil, notBackedUp: [])
            == Readiness(isReady: false, reason: "starting: watching the sessions directory"))
        #expect(Readiness.of(store: .answered, startupComparison: [s1], notBackedUp: [])
            == Readiness(isReady: false, reason: "starting: 1 session(s) to compare with the store"))
        #expect(Readiness.of(store: .answered, startupComparison: [], notBackedUp: ["1 thing"])
            == Readiness(isReady: true, reason: "ready; 1 thing"))
    }

    @Test func whatIsNotBackedUpIsNamedWithoutMakingTheAgentUnready() {
        let refused = Dictionary(uniqueKeysWithValues: (1...6).map { (SessionID("s\($0)")!, Refusal.symlink) })
        let skipped = SkippedFile(name: "media.bin", reason: "larger than the 64 MiB limit")
        let notes = Readiness.notBackedUp(
            refused: refused, skippedFiles: [[skipped, skipped], [], [skipped]], identityChanged: 1, unwatched: 2,
            comparedEvery: .seconds(5))
        #expect(notes == [
            "6 session(s) not backed up: s1 (symlink), s2 (symlink), s3 (symlink), s4 (symlink), s5 (symlink), …",
            "3 file(s) not backed up in 2 session(s) (see /sessions)",
            "1 session(s) whose registered identity was replaced (identity_changed, see /sessions)",
            "2 session(s) without an inotify watch (fs.inotify.max_user_watches reached), compared every 5.0 seconds",
        ])
        #expect(Readiness.notBackedUp(refused: [:], skippedFiles: [[]], identityChanged: 0, unwatched: 0, comparedEvery: .seconds(5)).isEmpty)
    }
}

@Suite("Session purge")
struct SessionPurgeTests {
    @Test func aSessionWhoseDirectoryIsStillGoneLosesEveryObjectAndNoOtherSession() async throws {
        let workspace = try TemporaryDirectory()
        let store = try FileSystemStore(root: workspace.file("store"))
        let (gone, other) = (SessionID("gone")!, SessionID("gone2")!)
        for id in [gone, other] {
            _ = try await store.put(SessionPlace.plain(id).headKey, body: .bytes(Array("{}".utf8)), condition: nil)
            _ = try await store.put(SessionPlace.plain(id).snapshotsPrefix + "x", body: .bytes([1]), condition: nil)
        }
        let purge = SessionPurge(sessionStore: SessionStore(store: store, keyring: Keyring(primary: .generate())))
        let directory = workspace.file("sessions/gone")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        #expect(try await !purge.purge(gone, directory: directory, agent: nil), "back already: a restore's two renames")
        #expect(try await store.list(prefix: SessionPlace.plain(gone).prefix).count == 2)

        try FileManager.default.removeItem(atPath: directory)
        #expect(try await purge.purge(gone, directory: directory, agent: nil))
        #expect(try await store.list(prefix: SessionPlace.plain(gone).prefix).isEmpty)
        #expect(try await store.list(prefix: SessionPlace.plain(other).prefix).count == 2)
    }

    /// A fenced copy of a session (its head names another holder) going away deletes nothing of
    /// what that holder writes.
    @Test func aSessionAnotherAgentHoldsIsNotPurged() async throws {
        let workspace = try TemporaryDirectory()
        let sessionStore = SessionStore(store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
        let id = SessionID("held")!
        let head = SessionHead(generation: 1, owner: "b/1/1", latest: nil, latestKind: nil, base: nil, updatedAt: Date())
            .claimed(owner: "b/1/1", agent: "worker-b", at: Date())
        try await sessionStore.writeHead(head, session: id, condition: nil)
        let purge = SessionPurge(sessionStore: sessionStore)
        let gone = workspace.file("sessions/held")
        await #expect(throws: SnapshotError.self) { _ = try await purge.purge(id, directory: gone, agent: "worker-a") }
        #expect(try await sessionStore.head(id)?.head.agent == "worker-b")
        #expect(try await purge.purge(id, directory: gone, agent: "worker-b"))
        #expect(try await sessionStore.head(id) == nil)
    }
}

extension SessionRecordTests {
    @Test func aFileLeftOutIsSaidOnceWhenLeftOutAndOnceWhenTakenAgain() {
        var record = SessionRecord()
        let large = SkippedFile(name: "media.bin", reason: "larger than the 64 MiB limit")
        let unreadable = SkippedFile(name: "keys", reason: "cannot be read: Permission denied")
        let first = record.recordSkippedFiles([large])
        #expect(first.leftOut == [large] && first.takenAgain.isEmpty)
        let again = record.recordSkippedFiles([large, unreadable])
        #expect(again.leftOut == [unreadable] && again.takenAgain.isEmpty)
        let fixed = record.recordSkippedFiles([unreadable])
        #expect(fixed.leftOut.isEmpty && fixed.takenAgain == [large])
        #expect(record.skippedFiles == [unreadable])
    }

    @Test func aSyncKeepsOnlyTheChangesOfFilesMidWriteAndATombstoneNone() {
        var record = SessionRecord()
        _ = record.changed(["creds.json", "pre-key-1.json"], since: at(0))
        _ = record.startUpload()
        record.tombstoned = true
        record.synced(unsettled: ["creds.json"])
        #expect(!record.tombstoned)
        #expect(record.uploadingChanges.paths == ["creds.json"] && record.uploadingChanges.oldest == at(0))
        record.loggedOut = true
        record.tombstoneWritten()
        #expect(record.tombstoned && !record.loggedOut && record.uploadingChanges.isEmpty)
    }
}
