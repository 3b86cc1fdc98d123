import SessionCrypto
import Foundation
import Logging
import Synchronization
@testable import SyncEngine
import TestSupport
import Testing

/// The engine as `watch` runs it, on the filesystem store, with a store that can be taken down.
@Suite("Sync service")
struct SyncServiceTests {
    let workspace: TemporaryDirectory
    let sessionsRoot: String
    let store: SwitchableStore
    let sessionStore: SessionStore

    init() throws {
        workspace = try TemporaryDirectory()
        sessionsRoot = workspace.file("sessions")
        try FileManager.default.createDirectory(atPath: sessionsRoot, withIntermediateDirectories: true)
        store = SwitchableStore(store: try FileSystemStore(root: workspace.file("store")))
        sessionStore = SessionStore(store: store, keyring: Keyring(primary: .generate()))
    }

    func service(lease: LeaseHolder? = nil, _ configure: (inout WatchSettings) -> Void = { _ in }) -> SyncService {
        var settings = WatchSettings()
        settings.watcher.quietPeriod = .milliseconds(50)
        settings.watcher.maxDelay = .milliseconds(500)
        settings.watcher.rescanInterval = .milliseconds(500)
        settings.storeProbeInterval = .milliseconds(100)
        configure(&settings)
        return SyncService(
            root: sessionsRoot, sessionStore: sessionStore, owner: lease?.agent.instance ?? "agent-test", mode: .local,
            conditionalWrites: true, settings: settings, lease: lease, logger: Logger(label: "test"))
    }

    func makeSession(_ name: String, files: [String: String]) throws {
        try FileManager.default.createDirectory(atPath: "\(sessionsRoot)/\(name)", withIntermediateDirectories: true)
        for (file, text) in files { try Data(text.utf8).write(to: URL(fileURLWithPath: "\(sessionsRoot)/\(name)/\(file)")) }
    }

    /// Polls the service until `condition` holds for the session's status. The engine shares Swift's
    /// pool with every other test of the run, which two loaded cores can hold up for many seconds:
    /// the timeout only bounds a failing test, so it is long. (A whole `SyncEngineTests` run under a
    /// load of 20 held the pool for 60 to 90 s at its start, failing every wait of 60 s here.)
    /// `session` is compared by its bytes: two canonically equivalent names are two sessions.
    func waitFor(
        _ service: SyncService, _ session: String, _ what: String, timeout: Duration = .seconds(180),
        _ condition: (SessionStatus) -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = await service.status().first(where: { $0.sessionId.utf8.elementsEqual(session.utf8) }), condition(status) {
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let last = await service.status().first { $0.sessionId.utf8.elementsEqual(session.utf8) }
        throw ProgramFailure("\(session) never became \(what); last status: \(String(describing: last))")
    }

    @Test func aSessionWhoseRetryWasCancelledByItsRemovalUploadsWhenItComesBack() async throws {
        let sync = service {
            $0.onDelete = .keep
            // Long enough that the removal arrives while the retry waits.
            $0.retryBaseDelay = .seconds(6)
            $0.retryMaxDelay = .seconds(6)
        }
        store.isDown = true
        try makeSession("s1", files: ["creds.json": "{\"a\":1}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "failing") { $0.state == .failing }
        try FileManager.default.removeItem(atPath: "\(sessionsRoot)/s1")
        try await Task.sleep(for: .milliseconds(300))
        store.isDown = false
        try makeSession("s1", files: ["creds.json": "{\"a\":2}"])
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        running.cancel()
        _ = try await running.value
    }

    /// "café" in NFC and in NFD are two directories on Linux and one Swift `String`: the watcher's
    /// and the service's maps keyed by `String` merged the two sessions' changes, and one session's
    /// change was uploaded to the other (or not at all) until a rescan.
    @Test func twoCanonicallyEquivalentSessionsChangedTogetherAreEachUploaded() async throws {
        let (composed, decomposed) = ("caf\u{E9}", "cafe\u{301}")
        let sync = service()
        try makeSession(composed, files: ["creds.json": "{\"nfc\":1}"])
        try makeSession(decomposed, files: ["creds.json": "{\"nfd\":1}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, composed, "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        try await waitFor(sync, decomposed, "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        let before = await sync.status().map(\.lastSnapshot)

        try makeSession(composed, files: ["creds.json": "{\"nfc\":2}"])
        try makeSession(decomposed, files: ["creds.json": "{\"nfd\":2}"])
        try await waitFor(sync, composed, "uploaded again") { !before.contains($0.lastSnapshot) && $0.state == .synced }
        try await waitFor(sync, decomposed, "uploaded again") { !before.contains($0.lastSnapshot) && $0.state == .synced }
        running.cancel()
        #expect(try await running.value.isComplete)
        let restored = workspace.file("restored")
        try FileManager.default.createDirectory(atPath: restored, withIntermediateDirectories: true)
        for (name, text) in [(composed, "{\"nfc\":2}"), (decomposed, "{\"nfd\":2}")] {
            _ = try await SessionRestorer(sessionStore: sessionStore).restore(SessionID(name)!, into: restored)
            #expect(try String(contentsOfFile: "\(restored)/\(name)/creds.json", encoding: .utf8) == text)
        }
    }

    @Test func aFileOverTheSizeLimitIsLeftOutWhileTheRestOfItsSessionIsStillBackedUp() async throws {
        let sync = service()
        try makeSession("s1", files: ["creds.json": "{\"a\":1}"])
        // Sparse: the limit is checked on the size, before any byte is read.
        let large = "\(sessionsRoot)/s1/media.bin"
        #expect(FileManager.default.createFile(atPath: large, contents: nil))
        #expect(truncate(large, 65 << 20) == 0)
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "partial") { $0.state == .partial }
        let first = await sync.status()[0]
        #expect(first.skippedFiles == [SkippedFile(name: "media.bin", reason: "larger than the 64 MiB limit")])

        try makeSession("s1", files: ["creds.json": "{\"a\":2}"])
        try await waitFor(sync, "s1", "a new snapshot") { $0.lastSnapshot != first.lastSnapshot && $0.state == .partial }
        #expect(await sync.readiness().reason.contains("1 file(s) not backed up in 1 session(s)"))
        running.cancel()
        let report = try await running.value
        #expect(report.skippedFiles[SessionID("s1")!] == first.skippedFiles)
        #expect(!report.isComplete)
    }

    @Test func changesToSessionsPastTheWatchLimitAreUploadedAndTheirSessionsShownUnwatched() async throws {
        let sync = service { $0.watcher.watchLimit = 3 }
        for session in ["s1", "s2", "s3", "s4"] { try makeSession(session, files: ["creds.json": "{\"a\":1}"]) }
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        for session in ["s1", "s2", "s3", "s4"] {
            try await waitFor(sync, session, "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        }
        #expect(await sync.status().map(\.watched) == [true, true, false, false])
        #expect(await sync.readiness().reason.contains("2 session(s) without an inotify watch"))
        let uploaded = await sync.status()[3].lastSnapshot

        try makeSession("s4", files: ["creds.json": "{\"a\":2}"])
        try await waitFor(sync, "s4", "uploaded again") { $0.lastSnapshot != uploaded }
        // Written just before the stop: the stop's last comparison takes it.
        try makeSession("s3", files: ["creds.json": "{\"a\":3}"])
        running.cancel()
        #expect(try await running.value.isComplete)
        let restored = workspace.file("restored")
        try FileManager.default.createDirectory(atPath: restored, withIntermediateDirectories: true)
        _ = try await SessionRestorer(sessionStore: sessionStore).restore(SessionID("s3")!, into: restored)
        #expect(try String(contentsOfFile: "\(restored)/s3/creds.json", encoding: .utf8) == "{\"a\":3}")
    }

    /// Refused names are printed as sessions are, in `/sessions`, `/readyz` and the shutdown report:
    /// `~` and the hex of a name that cannot be printed as it is (they were escaped another way).
    @Test func aSymlinkedSessionIsShownRefusedByItsPrintedName() async throws {
        let sync = service()
        try makeSession("s1", files: ["creds.json": "{}"])
        let elsewhere = workspace.file("elsewhere")
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(sessionsRoot)/s2", withDestinationPath: elsewhere)
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s2", "refused") { $0.state == .refused && $0.refusal == .symlink }
        // One made while the agent runs is found too.
        try FileManager.default.createSymbolicLink(atPath: "\(sessionsRoot)/s3", withDestinationPath: "\(sessionsRoot)/s1")
        try await waitFor(sync, "s3", "refused") { $0.state == .refused && $0.refusal == .symlink }
        try FileManager.default.createSymbolicLink(atPath: "\(sessionsRoot)/link\nname", withDestinationPath: elsewhere)
        let printed = "~6c696e6b0a6e616d65"
        try await waitFor(sync, printed, "refused") { $0.state == .refused && $0.refusal == .symlink }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced }
        let readiness = await sync.readiness()
        #expect(readiness.isReady)
        #expect(readiness.reason.contains("3 session(s) not backed up: \(printed) (symlink), s2 (symlink), s3 (symlink)"), "\(readiness.reason)")

        try FileManager.default.removeItem(atPath: "\(sessionsRoot)/s3")
        let deadline = ContinuousClock.now + .seconds(60)
        while await sync.status().contains(where: { $0.sessionId == "s3" }), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        running.cancel()
        let report = try await running.value
        #expect(report.refused.map(\.name) == ["s2", printed])
        #expect(!report.isComplete)
    }

    /// A session refused while its upload waits for a retry (its directory replaced by a link)
    /// is not uploaded by that retry: it wrote a tombstone for a session that is still there.
    @Test func aRetryDueAfterItsSessionWasRefusedUploadsNothing() async throws {
        let sync = service {
            $0.retryBaseDelay = .seconds(4)
            $0.retryMaxDelay = .seconds(4)
        }
        try makeSession("s1", files: ["creds.json": "{\"a\":1}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        store.isDown = true
        try makeSession("s1", files: ["creds.json": "{\"a\":2}"])
        try await waitFor(sync, "s1", "failing") { $0.state == .failing }
        let elsewhere = workspace.file("elsewhere")
        #expect(rename("\(sessionsRoot)/s1", elsewhere) == 0)
        try FileManager.default.createSymbolicLink(atPath: "\(sessionsRoot)/s1", withDestinationPath: elsewhere)
        try await waitFor(sync, "s1", "refused") { $0.state == .refused }
        store.isDown = false
        // The retry is due within 4 s of the failure.
        try await Task.sleep(for: .seconds(5))
        #expect(try await sessionStore.head(SessionID("s1")!)?.head.isTombstoned == false)
        #expect(await sync.status().first { $0.sessionId == "s1" }?.state == .refused)
        running.cancel()
        _ = try await running.value
    }

    /// "é" as one code point and as "e" + U+0301 are two files on Linux and one `String`: a file
    /// found mid-write and a twin reported during the upload were merged, and one's change was
    /// never read.
    @Test func filesMidWriteJoinTheReportedPathsWithoutMergingCanonicallyEquivalentNames() {
        let (composed, decomposed) = ("caf\u{E9}.json", "cafe\u{301}.json")
        #expect(SessionRecord.pathsForNextUpload(reported: [decomposed], unsettled: [composed]) == nil)
        #expect(SessionRecord.pathsForNextUpload(reported: [decomposed], unsettled: [decomposed]) == [decomposed])
        #expect(SessionRecord.pathsForNextUpload(reported: ["creds.json"], unsettled: []) == ["creds.json"])
        #expect(SessionRecord.pathsForNextUpload(reported: ["creds.json"], unsettled: ["a/b.json"]) == ["creds.json", "a/b.json"])
        #expect(SessionRecord.pathsForNextUpload(reported: nil, unsettled: ["a/b.json"]) == nil)
    }

    @Test func aFileStillMidWriteAtShutdownNamesItsSessionAsUnflushed() async throws {
        // The retry of the file mid-write would come after a quiet period: longer than the test.
        let sync = service {
            $0.watcher.quietPeriod = .seconds(30)
            $0.watcher.maxDelay = .seconds(30)
        }
        try makeSession("s1", files: ["creds.json": "{\"noiseKey\":", "pre-key-1.json": "{}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "uploaded") { $0.lastSnapshot != nil }
        running.cancel()
        let report = try await running.value
        #expect(report.unflushed.map(\.rawValue) == ["s1"])
    }
}

/// The filesystem store, failing every request while `isDown`, as a store that does not answer.
final class SwitchableStore: ObjectStore {
    let store: any ObjectStore
    private let down = Mutex(false)
    private let writes = Mutex<[String]>([])

    /// The key of every put, in order.
    var keysWritten: [String] { writes.withLock { $0 } }

    init(store: any ObjectStore) { self.store = store }

    var isDown: Bool {
        get { down.withLock { $0 } }
        set { down.withLock { $0 = newValue } }
    }

    private func answer() throws(StoreError) {
        if isDown { throw .unavailable("injected: the store is down") }
    }

    var location: String { store.location }

    func put(_ key: String, body: ObjectBody, condition: WriteCondition?) async throws(StoreError) -> String {
        try answer()
        writes.withLock { $0.append(key) }
        return try await store.put(key, body: body, condition: condition)
    }

    func get(_ key: String, maxSize: Int64) async throws(StoreError) -> StoredObject? {
        try answer()
        return try await store.get(key, maxSize: maxSize)
    }

    func download(_ key: String, toFileAt path: String, maxSize: Int64) async throws(StoreError) -> StoredObjectInfo? {
        try answer()
        return try await store.download(key, toFileAt: path, maxSize: maxSize)
    }

    func head(_ key: String) async throws(StoreError) -> StoredObjectInfo? {
        try answer()
        return try await store.head(key)
    }

    func list(prefix: String) async throws(StoreError) -> [StoredObjectInfo] {
        try answer()
        return try await store.list(prefix: prefix)
    }

    func delete(_ keys: [String]) async throws(StoreError) {
        try answer()
        try await store.delete(keys)
    }

    func probeConditionalWrites() async throws(StoreError) -> Bool { try await store.probeConditionalWrites() }
}
