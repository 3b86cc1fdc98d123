import SessionCrypto
import Foundation
import Logging
import S3Client
import SessionArchive
import StoreConformance
@testable import SyncEngine
import TestSupport
import Testing

/// The snapshot engine end to end on the filesystem store: chains of bases and deltas,
/// torn files, tombstones, fencing and tampering, checked by restoring into a new root.
@Suite("Snapshot chains")
struct SnapshotChainTests {
    let workspace: TemporaryDirectory
    let sessionsRoot: String
    let sessionStore: SessionStore
    let session = SessionID("4915112345678")!
    var directory: String { "\(sessionsRoot)/\(session.rawValue)" }

    init() throws {
        workspace = try TemporaryDirectory()
        sessionsRoot = workspace.file("sessions")
        try FileManager.default.createDirectory(atPath: sessionsRoot, withIntermediateDirectories: true)
        sessionStore = SessionStore(
            store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
    }

    func replicator(
        owner: String = "agent-a", claimsOwnership: Bool = true, store: (any ObjectStore)? = nil, conditionalWrites: Bool = true
    ) -> SessionReplicator {
        SessionReplicator(
            session: session, directory: directory,
            sessionStore: store.map { SessionStore(store: $0, keyring: sessionStore.keyring) } ?? sessionStore, owner: owner,
            conditionalWrites: conditionalWrites, claimsOwnership: claimsOwnership, logger: Logger(label: "test"))
    }

    func copyFixture(_ name: String) throws {
        try FileManager.default.copyItem(atPath: Fixtures.path("sessions/\(name)"), toPath: directory)
    }

    /// Restores the session into a fresh root and returns that directory's files.
    func restored(target: SnapshotLabel? = nil) async throws -> (RestoreOutcome, [String: [UInt8]]) {
        let root = workspace.file("restored-\(randomHex(4))")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let outcome = try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root, target: target)
        return (outcome, try directoryContents("\(root)/\(session.rawValue)"))
    }

    /// Two syncs called at once on one replicator take turns: the second builds on the first's
    /// commit. Interleaved at the snapshot build, both wrote the sequence after the same head
    /// (unconditional writes: nothing catches it later).
    @Test func concurrentSyncsOfOneReplicatorCommitConsecutiveSnapshots() async throws {
        try copyFixture("small")
        let writer = replicator(conditionalWrites: false)
        try await writer.claim()
        async let first = writer.sync(forceBase: true)
        async let second = writer.sync(forceBase: true)
        let sequences = try await [first, second].map { result -> UInt64? in
            guard case .uploaded(let id, _, _, _) = result else { return nil }
            return id.sequence
        }
        #expect(sequences.compactMap { $0 }.sorted() == [1, 2])
        #expect(try await sessionStore.snapshots(session).map(\.id.sequence).sorted() == [1, 2])
    }

    @Test func baseThenDeltasRestoreExactlyEachTime() async throws {
        try copyFixture("small")
        let writer = replicator()
        guard case .uploaded(let first, .base, _, let unsettled) = try await writer.sync() else {
            Issue.record("the first snapshot should be a base")
            return
        }
        #expect(unsettled.isEmpty)
        #expect(try await restored().1 == directoryContents(directory))

        try write("{\"rewritten\":true}", to: "creds.json")
        try write("{\"id\":1}", to: "pre-key-9999.json")
        try FileManager.default.removeItem(atPath: "\(directory)/app-state-sync-version-regular.json")
        guard case .uploaded(let second, .delta, let bytes, _) = try await writer.sync() else {
            Issue.record("a change should upload a delta")
            return
        }
        #expect(bytes < 2_000)
        let (outcome, files) = try await restored()
        #expect(outcome.status == .restored)
        #expect(outcome.snapshot == second)
        #expect(files == (try directoryContents(directory)))

        #expect(try await writer.sync() == .unchanged(unsettled: []))
        // An earlier point is still there.
        let (old, oldFiles) = try await restored(target: first.label)
        #expect(old.snapshot == first)
        #expect(oldFiles["creds.json"] != Array("{\"rewritten\":true}".utf8))
    }

    @Test func oneSmallChangeInALargeSessionUploadsOnlyTheChange() async throws {
        try copyFixture("medium")
        let writer = replicator()
        guard case .uploaded(_, .base, let baseBytes, _) = try await writer.sync() else {
            Issue.record("expected a base")
            return
        }
        try write(String(repeating: "{\"k\":\"v\"}", count: 1) + String(repeating: " ", count: 5_000), to: "session-changed.json")
        guard case .uploaded(_, .delta, let deltaBytes, _) = try await writer.sync() else {
            Issue.record("expected a delta")
            return
        }
        #expect(deltaBytes < 3_000, "a 5 KB change uploaded \(deltaBytes) bytes (base \(baseBytes))")
    }

    /// A delta reads only the paths the watcher reported; the next full comparison (start-up,
    /// rescan, after a failure) catches anything a report missed.
    @Test func reportedPathsAreAllADeltaReads() async throws {
        try copyFixture("small")
        let writer = replicator()
        _ = try await writer.sync()
        try write("{\"reported\":1}", to: "creds.json")
        try write("{\"unreported\":1}", to: "pre-key-1.json")
        try FileManager.default.removeItem(atPath: "\(directory)/app-state-sync-version-regular.json")
        try FileManager.default.createDirectory(atPath: "\(directory)/keys", withIntermediateDirectories: false)
        try write("{\"nested\":1}", to: "keys/a.json")
        _ = try await writer.sync(changedPaths: ["creds.json", "app-state-sync-version-regular.json", "keys", "never-existed.json"])
        var files = try await restored().1
        #expect(files["creds.json"] == Array("{\"reported\":1}".utf8))
        #expect(files["pre-key-1.json"] != Array("{\"unreported\":1}".utf8))
        #expect(files["app-state-sync-version-regular.json"] == nil)
        #expect(files["keys/a.json"] == Array("{\"nested\":1}".utf8))

        try FileManager.default.removeItem(atPath: "\(directory)/keys")
        _ = try await writer.sync(changedPaths: ["keys"])
        #expect(try await restored().1["keys/a.json"] == nil)

        _ = try await writer.sync()
        files = try await restored().1
        #expect(files == (try directoryContents(directory)))
    }

    @Test func aFileGrownPastTheSizeLimitKeepsItsLastGoodVersionUntilItCanBeTakenAgain() async throws {
        try copyFixture("small")
        let writer = replicator()
        _ = try await writer.sync()
        let good = try directoryContents(directory)["creds.json"]
        #expect(truncate("\(directory)/creds.json", 65 << 20) == 0)
        try write("{\"fresh\":1}", to: "pre-key-1.json")
        guard case .uploaded = try await writer.sync(changedPaths: ["creds.json", "pre-key-1.json"]) else {
            Issue.record("the other change should upload")
            return
        }
        #expect(await writer.skippedFiles == [SkippedFile(name: "creds.json", reason: "larger than the 64 MiB limit")])
        #expect(try await restored().1["creds.json"] == good)
        // A base cannot leave it out: a delta stands in (empty here), keeping its last good version.
        #expect(try await writer.sync(forceBase: true) == .unchanged(unsettled: []))
        // A sync of other paths leaves it reported.
        try write("{\"fresh\":2}", to: "pre-key-1.json")
        _ = try await writer.sync(changedPaths: ["pre-key-1.json"])
        #expect(await writer.skippedFiles.map(\.name) == ["creds.json"])

        try write("{\"me\":2}", to: "creds.json")
        _ = try await writer.sync(changedPaths: ["creds.json"])
        #expect(await writer.skippedFiles.isEmpty)
        #expect(try await restored().1 == (try directoryContents(directory)))
    }

    /// "é" as one code point and as "e" + U+0301 are two names on Linux, though Swift's String
    /// takes them for one: both files go to the store and come back, from a full scan and from a
    /// reported directory holding both. (Reported paths that would merge them ask for a full
    /// scan instead: ChangeDebouncerTests.)
    @Test func canonicallyEquivalentNamesAreDifferentFiles() async throws {
        let (composed, decomposed) = ("\u{E9}.json", "e\u{301}.json")
        #expect(composed == decomposed && !composed.utf8.elementsEqual(decomposed.utf8))
        try copyFixture("small")
        try FileManager.default.createDirectory(atPath: "\(directory)/keys", withIntermediateDirectories: false)
        func contents(_ name: String, _ round: Int) -> String { "{\"\(Array(name.utf8))\":\(round)}" }
        func expectRestored(round: Int) async throws {
            let root = workspace.file("restored-\(randomHex(4))")
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            _ = try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root)
            for name in [composed, decomposed] {
                // Opened by the name's own bytes (FileManager's listings would merge the two).
                let restored = FileManager.default.contents(atPath: "\(root)/\(session.rawValue)/keys/\(name)")
                #expect(restored == Data(contents(name, round).utf8), "\(Array(name.utf8)), round \(round)")
            }
        }
        for name in [composed, decomposed] { try write(contents(name, 1), to: "keys/" + name) }
        let writer = replicator()
        _ = try await writer.sync()
        try await expectRestored(round: 1)

        for name in [composed, decomposed] { try write(contents(name, 2), to: "keys/" + name) }
        _ = try await writer.sync(changedPaths: ["keys"])
        try await expectRestored(round: 2)
    }

    /// A path the archive cannot hold (over 1,018 bytes below the session directory) fails the
    /// snapshot with an error naming it, rather than being left out of it.
    /// Linux allows paths of 4,096 bytes, a snapshot 1,018: such a file is left out and named,
    /// and the rest of its session is still backed up.
    @Test func aPathTooLongForTheArchiveIsLeftOutAndNamed() async throws {
        try copyFixture("small")
        var path = ""
        for level in 0..<5 {
            path += (level == 0 ? "" : "/") + String(repeating: "d", count: 201)
            try FileManager.default.createDirectory(atPath: "\(directory)/\(path)", withIntermediateDirectories: false)
        }
        path += "/long.json"
        #expect(path.utf8.count == 1019)
        try write("{}", to: path)
        let writer = replicator()
        guard case .uploaded = try await writer.sync() else {
            Issue.record("the rest of the session should upload")
            return
        }
        #expect(await writer.skippedFiles == [SkippedFile(name: path, reason: SkippedFile.pathTooLong)])
        var expected = try directoryContents(directory)
        expected[path] = nil
        #expect(try await restored().1 == expected)
    }

    @Test func aTornFileIsNeverCapturedAndItsLastGoodVersionIsKept() async throws {
        try copyFixture("small")
        let writer = replicator()
        _ = try await writer.sync()
        let good = try directoryContents(directory)["creds.json"]
        try write("{\"noiseKey\":{\"private\":", to: "creds.json")
        #expect(try await writer.sync() == .unchanged(unsettled: ["creds.json"]))
        try write("{\"fresh\":1}", to: "pre-key-1.json")
        guard case .uploaded(_, _, _, let unsettled) = try await writer.sync() else {
            Issue.record("the other change should upload")
            return
        }
        #expect(unsettled == ["creds.json"])
        #expect(try await restored().1["creds.json"] == good)
    }

    @Test func aRemovedSessionIsTombstonedAndNotRestored() async throws {
        try copyFixture("small")
        let writer = replicator()
        _ = try await writer.sync()
        try FileManager.default.removeItem(atPath: directory)
        try await writer.tombstone()
        let (outcome, _) = try await restoredOutcomeOnly()
        #expect(outcome.status == .loggedOut)
    }

    private func restoredOutcomeOnly() async throws -> (RestoreOutcome, Void) {
        let root = workspace.file("restored-\(randomHex(4))")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return (try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root), ())
    }

    @Test func aSecondAgentFencesTheFirstWhichThenNeverOverwrites() async throws {
        try copyFixture("small")
        let first = replicator(owner: "agent-a")
        _ = try await first.sync()
        let second = replicator(owner: "agent-b")
        try await second.claim()
        try write("{\"by\":\"b\"}", to: "creds.json")
        _ = try await second.sync()
        let newest = try await restored().1

        try write("{\"by\":\"a, stale\"}", to: "creds.json")
        let error = await #expect(throws: SnapshotError.self) { try await first.sync() }
        guard case .fenced(_, let owner) = error else {
            Issue.record("expected fencing, got \(String(describing: error))")
            return
        }
        #expect(owner == "agent-b")
        #expect(try await restored().1 == newest)
    }

    @Test func aBackupBesideTheWatcherDoesNotFenceIt() async throws {
        try copyFixture("small")
        let watcher = replicator(owner: "watch")
        _ = try await watcher.sync()
        let backup = replicator(owner: "backup", claimsOwnership: false)
        guard case .uploaded(_, .base, _, _) = try await backup.sync(forceBase: true) else {
            Issue.record("the backup should write a base")
            return
        }
        try write("{\"after\":\"backup\"}", to: "creds.json")
        guard case .uploaded = try await watcher.sync() else {
            Issue.record("the watcher should continue after the backup")
            return
        }
        #expect(try await restored().1 == directoryContents(directory))
    }

    /// `backup` beside `watch` (the same generation) both read the head at one sequence; the
    /// watcher commits the next, and the backup's upload for that same sequence lands after the
    /// commit. It must not replace the committed object: the store restores exactly what the
    /// watcher committed, the backup carries on from it, and so does the watcher after it.
    @Test func aBackupLosingTheRaceForASequenceLeavesTheWinnersSnapshotAsCommitted() async throws {
        try copyFixture("small")
        let watcher = replicator(owner: "watch")
        _ = try await watcher.sync()
        let backup = replicator(owner: "backup", claimsOwnership: false)
        try await backup.claim()

        try write("{\"by\":\"watch\"}", to: "creds.json")
        guard case .uploaded(let won, .delta, _, _) = try await watcher.sync() else {
            Issue.record("the watcher should commit a delta")
            return
        }
        let committed = try directoryContents(directory)
        // Created after the watcher's snapshot: only the backup's upload for that sequence has it.
        try write("{\"keyId\":7777}", to: "pre-key-7777.json")
        guard case .uploaded(let continued, .delta, _, _) = try await backup.sync() else {
            Issue.record("the backup should lose its sequence, load the watcher's snapshot and commit the next")
            return
        }
        #expect(continued.sequence == won.sequence + 1)
        #expect(try await restored(target: won.label).1 == committed)

        // The watcher is behind the backup's commit now; the file it never saw goes again.
        try FileManager.default.removeItem(atPath: "\(directory)/pre-key-7777.json")
        try write("{\"by\":\"watch\",\"again\":true}", to: "creds.json")
        guard case .uploaded(let next, _, _, _) = try await watcher.sync() else {
            Issue.record("the watcher should continue after the backup")
            return
        }
        #expect(next.sequence == continued.sequence + 1)
        #expect(try await restored().1 == directoryContents(directory))
        let checks = try await SnapshotVerifier(sessionStore: sessionStore).verify(session)
        #expect(checks.count == 4 && checks.allSatisfy(\.isOK), "\(checks)")
    }

    /// The head write of a commit lands but its reply is lost: the writer sees an error and its
    /// retry, for the same sequence and generation, is another kind of snapshot. The retry must
    /// not take the committed snapshot's place: each point restores exactly and verify passes.
    @Test func aRetryAfterALostHeadReplyLeavesTheCommittedSnapshotAsItWas() async throws {
        try copyFixture("small")
        let store = InjectedFaultsStore(store: sessionStore.store)
        let writer = replicator(store: store)
        _ = try await writer.sync()

        try write("{\"commit\":\"reply lost\"}", to: "creds.json")
        store.arm(.loseReply(keySuffix: "/head"))
        await #expect(throws: StoreError.self) { try await writer.sync() }
        let committed = try directoryContents(directory)
        let head = try #require(try await sessionStore.head(session)?.head)
        let landed = try #require(head.latest)
        #expect(head.latestKind == .delta)

        try write("{\"after\":\"retry\"}", to: "pre-key-1.json")
        guard case .uploaded(let retried, .base, _, _) = try await writer.sync(forceBase: true) else {
            Issue.record("the retry should find its delta committed and write a base after it")
            return
        }
        #expect(retried.sequence == landed.sequence + 1)
        #expect(try await restored(target: landed.label).1 == committed)
        #expect(try await restored().1 == directoryContents(directory))
        let checks = try await SnapshotVerifier(sessionStore: sessionStore).verify(session)
        #expect(checks.map(\.id.sequence) == [1, 2, 3] && checks.allSatisfy(\.isOK), "\(checks)")
    }

    /// On a store without conditional writes (rclone), where a `backup` beside `watch` is
    /// documented as unsafe: the backup reads head N and uploads its N+1; the watcher commits
    /// N+1 and N+2; a prune deletes the backup's object as an orphan; then the backup writes its
    /// head blindly. The head names a snapshot that is gone: every reader must say so, never
    /// restore another object in its place, and the watcher's next commit heals the session.
    @Test func aHeadNamingADeletedSnapshotFailsLoudlyUntilTheNextCommit() async throws {
        try copyFixture("small")
        let watcher = replicator(owner: "watch", conditionalWrites: false)
        _ = try await watcher.sync()
        let read = try #require(try await sessionStore.head(session)?.head)
        let first = try #require(read.latest)
        let lost = SnapshotEntry(
            id: SnapshotID(sequence: first.sequence + 1, generation: read.generation, tag: .random()), kind: .delta,
            parentTag: first.tag, size: 0, lastModified: nil)
        try await sessionStore.store.put(try await sessionStore.snapshotKeys(session, [lost])[0], body: .bytes([]), condition: nil)
        for change in 1...2 {
            try write("{\"change\":\(change)}", to: "creds.json")
            _ = try await watcher.sync()
        }
        let pruned = try await SnapshotPruner(sessionStore: sessionStore).prune(session, policy: RetentionPolicy(keepLast: 10))
        #expect(pruned.plan.orphans.map(\.id) == [lost.id])
        var blind = read
        blind.latest = lost.id
        blind.latestKind = .delta
        try await sessionStore.writeHead(blind, session: session, condition: nil)

        let missing = SnapshotError.notFound("the head of session \(session) names snapshot \(lost.id.tagged), which is not in the store")
        await #expect(throws: missing) { try await restored() }
        await #expect(throws: missing) { try await restored(target: first.label) }
        let restorer = SessionRestorer(sessionStore: sessionStore)
        await #expect(throws: missing) { try await restorer.plan(session, into: workspace.path, at: .time(Date())) }
        await #expect(throws: missing) {
            try await SnapshotPruner(sessionStore: sessionStore).prune(session, policy: RetentionPolicy(keepLast: 1))
        }
        let checks = try await SnapshotVerifier(sessionStore: sessionStore).verify(session)
        #expect(checks == [SnapshotCheck(id: lost.id, kind: .delta, defect: .missing(missing.description))])

        try write("{\"change\":\"heals\"}", to: "creds.json")
        _ = try await watcher.sync()
        #expect(try await restored().1 == directoryContents(directory))
    }

    /// The grammar `parseSnapshotKey` reads: the writer's spelling only, the parent's tag absent
    /// on a session's first snapshot.
    @Test func snapshotKeysParseOnlyInTheWritersSpelling() {
        let place = SessionPlace.plain(session)
        let prefix = place.snapshotsPrefix
        let tag = "5f0c3a9e7d21b846", parent = "0123456789abcdef"
        let first = SessionLayout.parseSnapshotKey(prefix + "00000000000000000001-0000000003-\(tag).base", place: place)
        #expect(first?.id == SnapshotID(sequence: 1, generation: 3, tag: SnapshotTag(tag)!))
        #expect(first?.kind == .base && first?.parentTag == nil)
        let next = SessionLayout.parseSnapshotKey(prefix + "00000000000000000042-0000000003-\(tag)-\(parent).delta", place: place)
        #expect(next?.id.sequence == 42 && next?.kind == .delta && next?.parentTag == SnapshotTag(parent))
        for malformed in [
            "00000000000000000001-0000000003.base",  // no tag
            "1-3-\(tag).base",  // unpadded
            "+0000000000000000001-0000000003-\(tag).base",
            "00000000000000000001-0000000003-\(tag.uppercased()).base",
            "00000000000000000001-0000000003-\(tag)-.delta",
            "00000000000000000001-0000000003-\(tag)-\(parent)-\(parent).delta",
            "00000000000000000001-0000000003-\(tag).snapshot",
            "00000000000000000001-0000000003-\(tag)",
        ] {
            #expect(SessionLayout.parseSnapshotKey(prefix + malformed, place: place) == nil, "\(malformed)")
        }
        #expect(SessionLayout.parseSnapshotKey(SessionPlace.plain(SessionID("other")!).snapshotsPrefix + "00000000000000000001-0000000003-\(tag).base", place: place) == nil)
    }

    /// A store written by format version 3 (`fixtures/stores/version-3`, byte for byte) restores
    /// and verifies; a writer of this version goes on with its chain in version 4 (the state
    /// digest a sum) without a new base; then the head restores the session as it is, verify
    /// passes on every snapshot, and a snapshot of version 3 in the mixed chain still restores,
    /// its digest checked by the version-3 rule.
    @Test func aChainOfVersion3ContinuedInVersion4RestoresAndVerifies() async throws {
        let session = SessionID("version-3")!
        let storeRoot = workspace.file("store-version-3")
        try FileManager.default.copyItem(atPath: Fixtures.path("stores/version-3/store"), toPath: storeRoot)
        let sessionStore = SessionStore(
            store: try FileSystemStore(root: storeRoot),
            keyring: Keyring(primary: try EncryptionKey(parsing: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")))
        let written = try directoryContents(Fixtures.path("stores/version-3/sessions/version-3"))
        func restored(_ target: SnapshotLabel? = nil) async throws -> [String: [UInt8]] {
            let root = workspace.file("restored-\(randomHex(4))")
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            #expect(try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root, target: target).status == .restored)
            return try directoryContents("\(root)/\(session.rawValue)")
        }
        func versions() async throws -> [UInt64: Int] {
            var versions: [UInt64: Int] = [:]
            for entry in try await sessionStore.snapshots(session) {
                versions[entry.id.sequence] = try #require(try await sessionStore.manifest(session, entry)).formatVersion
            }
            return versions
        }
        #expect(try await sessionStore.head(session)?.head.formatVersion == 3)
        #expect(Set(try await versions().values) == [3])
        #expect(try await restored() == written)
        #expect(try await SnapshotVerifier(sessionStore: sessionStore).verify(session).allSatisfy(\.isOK))

        // The session goes on where the store left it, in deltas of this version.
        let directory = workspace.file("sessions-version-3/version-3")
        try FileManager.default.createDirectory(atPath: workspace.file("sessions-version-3"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("stores/version-3/sessions/version-3"), toPath: directory)
        var policy = CompactionPolicy()
        policy.deltaToBaseRatio = 1000
        let writer = SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: "agent-4", conditionalWrites: true,
            policy: policy, logger: Logger(label: "test"))
        func expectDelta(_ result: SyncResult) {
            guard case .uploaded(_, .delta, _, _) = result else {
                Issue.record("not a delta: \(result)")
                return
            }
        }
        try TestSupport.write(#"{"version":4}"#, to: "\(directory)/creds.json")
        expectDelta(try await writer.sync(changedPaths: ["creds.json"]))
        try TestSupport.write(#"{"new":true}"#, to: "\(directory)/keys/pre-key-4.json")
        try FileManager.default.removeItem(atPath: "\(directory)/pre-key-1.json")
        expectDelta(try await writer.sync(changedPaths: ["keys/pre-key-4.json", "pre-key-1.json"]))

        let versionsAfter = try await versions()
        #expect(versionsAfter[24] == 4 && versionsAfter[25] == 4 && versionsAfter[23] == 3, "\(versionsAfter)")
        #expect(try await sessionStore.head(session)?.head.formatVersion == 4)
        #expect(try await restored() == directoryContents(directory))
        let checks = try await SnapshotVerifier(sessionStore: sessionStore).verify(session)
        #expect(checks.count == versionsAfter.count && checks.allSatisfy(\.isOK), "\(checks)")
        // Snapshot 23, the last of version 3, from its base 22 of version 3.
        #expect(try await restored(SnapshotLabel(sequence: 23, generation: 2)) == written)
    }

    /// Heads and manifests of format version 1 (untagged snapshot ids) or of a newer agent say
    /// which version they are, rather than failing on a field.
    @Test func aHeadOrManifestOfAnotherFormatVersionIsAClearError() throws {
        for version in [1, 5] {
            let head = Array(#"{"formatVersion":\#(version),"generation":1,"owner":"old","latest":{"generation":1,"sequence":1},"latestKind":"base","updatedAt":"2025-11-20T10:15:30Z"}"#.utf8)
            #expect(throws: SnapshotError.unsupportedFormat("the head has unsupported format version \(version) (this sync-agent reads versions 2 to 4)")) {
                try SessionHead.decode(head)
            }
            let manifest = Array(#"{"formatVersion":\#(version),"session":"s"}"#.utf8)
            #expect(throws: SnapshotError.unsupportedFormat("the manifest has unsupported format version \(version) (this sync-agent reads versions 2 to 4)")) {
                try SnapshotManifest.decode(manifest)
            }
        }
    }

    /// Keys as FORMAT.md ("Snapshots and heads") spells them, checked with the document's grammar
    /// rather than `SessionLayout`: each names its sequence, generation, tag and parent's tag, and
    /// the head names the newest by its tag. A key spelled any other way is not a snapshot.
    @Test func snapshotKeysAreSpelledAsTheFormatDocumentSays() async throws {
        try copyFixture("small")
        let writer = replicator()
        _ = try await writer.sync()
        try write("{\"id\":1}", to: "pre-key-9999.json")
        _ = try await writer.sync()
        let pattern = /snapshots\/(\d{20})-(\d{10})-([0-9a-f]{16})(?:-([0-9a-f]{16}))?\.(base|delta|tombstone)/
        let prefix = try await sessionStore.place(session).snapshotsPrefix
        let names = try await sessionStore.store.list(prefix: prefix).map { "snapshots/" + $0.key.dropFirst(prefix.count) }
        let keys = try names.map { try #require(try pattern.wholeMatch(in: $0), "\($0)").output }
        #expect(keys.map { "\($0.1).\($0.2).\($0.5)" } == ["00000000000000000001.0000000001.base", "00000000000000000002.0000000001.delta"])
        #expect(keys[0].4 == nil && keys[1].4 == keys[0].3)
        let head = try #require(try await sessionStore.head(session)?.head)
        #expect(head.latest?.tag.rawValue == String(keys[1].3))

        let format = try String(contentsOfFile: Fixtures.path("../FORMAT.md"), encoding: .utf8)
        let example = try #require(format.firstMatch(of: /`(snapshots\/[^`]+)`/)?.output.1)
        #expect(try pattern.wholeMatch(in: example) != nil, "FORMAT.md's example \(example)")

        let misspelled = prefix + "1-1-" + String(keys[0].3) + ".base"
        try await sessionStore.store.put(misspelled, body: .bytes([]), condition: nil)
        #expect(try await sessionStore.snapshots(session).count == 2)
    }

    @Test func aTamperedSnapshotFailsAndLeavesTheDirectoryUntouched() async throws {
        try copyFixture("small")
        _ = try await replicator().sync()
        let store = sessionStore.store
        let key = try #require(try await store.list(prefix: "sessions/").map(\.key).first { $0.hasSuffix(".base") })
        var bytes = try #require(try await store.get(key)).bytes
        bytes[bytes.count / 2] ^= 0x01
        try await store.put(key, body: .bytes(bytes), condition: nil)

        let root = workspace.file("existing")
        try FileManager.default.createDirectory(atPath: "\(root)/\(session.rawValue)", withIntermediateDirectories: true)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: "\(root)/\(session.rawValue)/creds.json"))
        let error = await #expect(throws: SnapshotError.self) {
            try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root)
        }
        guard case .corrupt = error else {
            Issue.record("expected corrupt, got \(String(describing: error))")
            return
        }
        #expect(try directoryContents("\(root)/\(session.rawValue)") == ["creds.json": Array("keep me".utf8)])
    }

    @Test func restoringOverAnIdenticalDirectoryLeavesItAlone() async throws {
        try copyFixture("small")
        _ = try await replicator().sync()
        let outcome = try await SessionRestorer(sessionStore: sessionStore).restore(session, into: sessionsRoot)
        #expect(outcome.status == .upToDate)
    }

    /// A compaction that meets a file mid-write falls back to a delta; the half-written base
    /// must not leave bytes in the object the delta is written to.
    @Test func aBaseThatMeetsATornFileFallsBackToAWholeReadableDelta() async throws {
        try copyFixture("medium")
        let writer = replicator()
        _ = try await writer.sync()
        let goodCreds = try directoryContents(directory)["creds.json"]
        try write("{\"rewritten\":true}", to: "pre-key-1.json")
        try write("{\"me\":{\"id\":", to: "creds.json")
        guard case .uploaded(_, .delta, _, let unsettled) = try await writer.sync(forceBase: true) else {
            Issue.record("a base blocked by a torn file should become a delta")
            return
        }
        #expect(unsettled == ["creds.json"])
        var expected = try directoryContents(directory)
        expected["creds.json"] = goodCreds
        #expect(try await restored().1 == expected)
    }

    /// Baileys replaces a file in three steps: `name.tmp` written, `name` renamed to `name.bak`,
    /// `name.tmp` renamed to `name`. Between the renames `name` was not deleted: reported or found
    /// by a scan, and in a base, it keeps its last good version until the replacement is done.
    @Test(arguments: ["reported", "scanned", "base"])
    func aFileBetweenTheRenamesOfItsReplacementKeepsItsLastGoodVersion(_ read: String) async throws {
        try copyFixture("small")
        let writer = replicator()
        _ = try await writer.sync()
        let good = try directoryContents(directory)["creds.json"]
        try write("{\"next\":1}", to: "creds.json.tmp")
        try FileManager.default.moveItem(atPath: "\(directory)/creds.json", toPath: "\(directory)/creds.json.bak")
        guard var files = try await syncBetweenTheRenames(writer, read, keeping: good) else { return }
        #expect(files["creds.json.tmp"] == nil)

        try FileManager.default.moveItem(atPath: "\(directory)/creds.json.tmp", toPath: "\(directory)/creds.json")
        _ = try await writer.sync(changedPaths: ["creds.json"])
        files = try await restored().1
        #expect(files == (try directoryContents(directory)))
        #expect(files["creds.json"] == Array("{\"next\":1}".utf8))
    }

    /// Between the renames, with no temporary yet or one written long before (a writer stalled
    /// between writing it and renaming): `name` was moved to `name.bak`, the first step of a
    /// replacement, so it keeps its last good version, whether reported, found by a scan, in a
    /// base, or by an agent started between the renames.
    @Test(arguments: ["no temporary", "stale temporary"], ["reported", "scanned", "base", "restarted"])
    func aFileMovedToItsBackupIsBeingReplacedWhateverItsTemporary(_ temporary: String, _ read: String) async throws {
        try copyFixture("small")
        let first = replicator()
        _ = try await first.sync()
        let good = try directoryContents(directory)["creds.json"]
        if temporary == "stale temporary" {
            try write("{\"next\":1}", to: "creds.json.tmp")
            try age("creds.json.tmp")
        }
        // A restarted agent knows only the store: a new replicator, comparing the whole directory.
        // It claims before the rename: its claim reads the store only, and a loaded machine can
        // take longer than the 10 s a rename to the backup is counted as a replacement.
        let writer = read == "restarted" ? replicator() : first
        if read == "restarted" { try await writer.claim() }
        try FileManager.default.moveItem(atPath: "\(directory)/creds.json", toPath: "\(directory)/creds.json.bak")
        guard var files = try await syncBetweenTheRenames(writer, read, keeping: good) else { return }

        try write("{\"next\":2}", to: "creds.json.tmp")
        try FileManager.default.moveItem(atPath: "\(directory)/creds.json.tmp", toPath: "\(directory)/creds.json")
        _ = try await writer.sync(changedPaths: ["creds.json"])
        files = try await restored().1
        #expect(files["creds.json"] == Array("{\"next\":2}".utf8))
        #expect(files == (try directoryContents(directory)))
    }

    /// Syncs while `creds.json` is between the two renames of its replacement (`read`: reported,
    /// scanned or in a base): a delta that keeps its last good version `good`, the name unsettled,
    /// the backup holding that version. The restored files, or nil after recording an issue.
    private func syncBetweenTheRenames(_ writer: SessionReplicator, _ read: String, keeping good: [UInt8]?) async throws -> [String: [UInt8]]? {
        let result = try await writer.sync(forceBase: read == "base", changedPaths: read == "reported" ? ["creds.json", "creds.json.bak"] : nil)
        guard case .uploaded(_, .delta, _, let unsettled) = result else {
            Issue.record("the backup should upload, as a delta: \(result)")
            return nil
        }
        #expect(unsettled == ["creds.json"])
        let files = try await restored().1
        #expect(files["creds.json"] == good)
        #expect(files["creds.json.bak"] == good)
        return files
    }

    /// A `null` write unlinks `name`, `name.tmp` and `name.bak`. Part way (`name` gone, the backup
    /// of an earlier version still there), and whatever stale temporary is left, `name` is deleted:
    /// the backup does not hold the version `name` had.
    @Test func aNameGoneWithoutABackupOfItsLastVersionIsDeleted() async throws {
        try copyFixture("small")
        try write("{\"version\":1}", to: "creds.json.bak")
        try write("{\"stale\":1}", to: "creds.json.tmp")
        try age("creds.json.tmp")
        let writer = replicator()
        _ = try await writer.sync()
        try FileManager.default.removeItem(atPath: "\(directory)/creds.json")
        #expect(try await writer.sync(changedPaths: ["creds.json"]) != .unchanged(unsettled: []))
        var files = try await restored().1
        #expect(files["creds.json"] == nil)
        #expect(files["creds.json.bak"] == Array("{\"version\":1}".utf8))

        try FileManager.default.removeItem(atPath: "\(directory)/creds.json.bak")
        #expect(try await writer.sync(changedPaths: ["creds.json.bak"]) != .unchanged(unsettled: []))
        files = try await restored().1
        #expect(files == (try directoryContents(directory)).filter { !$0.key.hasSuffix(".tmp") })
    }

    /// A session written just now is taken once a pause has passed since, the whole directory
    /// compared (what changed while it waited was not reported to it); past the pause's patience,
    /// as it is.
    @Test func aSessionBeingWrittenIsTakenAfterAPauseInItsWrites() async throws {
        try copyFixture("small")
        let writer = replicator()
        _ = try await writer.sync()
        try write("{\"reported\":1}", to: "creds.json")
        try write("{\"unreported\":1}", to: "pre-key-1.json")
        let started = ContinuousClock.now
        _ = try await writer.sync(changedPaths: ["creds.json"], pause: WritePause(length: .milliseconds(300), patience: .seconds(30)))
        #expect(ContinuousClock.now - started >= .milliseconds(250))
        #expect(try await restored().1 == (try directoryContents(directory)))

        try write("{\"impatient\":1}", to: "creds.json")
        let impatient = ContinuousClock.now
        _ = try await writer.sync(changedPaths: ["creds.json"], pause: WritePause(length: .seconds(30), patience: .zero))
        #expect(ContinuousClock.now - impatient < .seconds(10))
        #expect(try await restored().1["creds.json"] == Array("{\"impatient\":1}".utf8))
    }

    /// Past `SnapshotSpool.memoryLimit`, a snapshot is spooled through an unlinked temporary file.
    @Test func aSnapshotLargerThanTheMemorySpoolRestoresExactly() async throws {
        try copyFixture("medium")
        guard case .uploaded(_, .base, let bytes, _) = try await replicator().sync() else {
            Issue.record("the first snapshot should be a base")
            return
        }
        #expect(bytes > Int64(256 << 10))
        #expect(try await restored().1 == directoryContents(directory))
    }

    /// A restarted agent whose first load of the chain fails halfway (the store failing one
    /// read) must load it all again before its next delta: a delta against half a state names no
    /// deletion of what that half missed, and its chain restores a different session.
    @Test func aLoadFailingHalfwayIsRedoneBeforeTheNextDelta() async throws {
        try copyFixture("small")
        _ = try await replicator().sync()
        try write("{\"id\":1}", to: "pre-key-9999.json")
        _ = try await replicator().sync()
        try FileManager.default.removeItem(atPath: "\(directory)/pre-key-9999.json")

        let flaky = InjectedFaultsStore(store: sessionStore.store)
        flaky.arm(.failRead(keySuffix: ".delta"))
        let restarted = replicator(owner: "agent-b", store: flaky)
        await #expect(throws: StoreError.self) { try await restarted.sync() }
        guard case .uploaded(_, .delta, _, _) = try await restarted.sync() else {
            Issue.record("the deletion must be uploaded, as a delta")
            return
        }
        #expect(try await restored().1 == directoryContents(directory))
    }

    /// Sets the file's modification time past the replacement timeout.
    private func age(_ name: String) throws {
        let stale = Date().addingTimeInterval(-Double(MissingFile.replacementTimeout / 1_000_000_000) - 1)
        try FileManager.default.setAttributes([.modificationDate: stale], ofItemAtPath: "\(directory)/\(name)")
    }

    private func write(_ text: String, to name: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
    }
}

/// Every regular file below a directory, at any depth, name → content.
func directoryContents(_ directory: String) throws -> [String: [UInt8]] {
    var files: [String: [UInt8]] = [:]
    let enumerator = FileManager.default.enumerator(atPath: directory)
    while let name = enumerator?.nextObject() as? String {
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: "\(directory)/\(name)", isDirectory: &isDirectory)
        if !isDirectory.boolValue { files[name] = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name)"))) }
    }
    return files
}
