import SessionCrypto
import Foundation
import Logging
import S3Client
import S3Store
import Synchronization
import StoreConformance
import SyncEngine
import TestSupport
import Testing

/// Reading a session's objects when the store holds something no writer left there: heads too large
/// or not files at all, mutated, truncated or oversized objects, a head put back over a newer one,
/// objects gone between the listing and the download. Each is refused with a typed error naming
/// what is wrong, nothing hangs, and no local directory changes.
@Suite("store object reads")
struct StoreObjectReadTests {
    let session = SessionID("4915112345678")!

    /// A session of the small fixture written to `store` as a base and `deltas` deltas; the
    /// committed ids and the head object after each, oldest first.
    func history(in sessionStore: SessionStore, _ scratch: TemporaryDirectory, deltas: Int) async throws
        -> [(id: SnapshotID, head: [UInt8])]
    {
        let directory = scratch.file("source/\(session.rawValue)")
        try FileManager.default.createDirectory(atPath: scratch.file("source"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory)
        let writer = SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: "agent-a",
            conditionalWrites: true, logger: Logger(label: "test"))
        var committed: [(SnapshotID, [UInt8])] = []
        for round in 0...deltas {
            if round > 0 { try Data(#"{"round":\#(round)}"#.utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json")) }
            guard case .uploaded(let id, _, _, _) = try await writer.sync() else { throw ProgramFailure("round \(round) uploaded nothing") }
            let head = try #require(try await sessionStore.store.get(try await sessionStore.place(session).headKey))
            committed.append((id, head.bytes))
        }
        return committed
    }

    func localStore(_ scratch: TemporaryDirectory) throws -> SessionStore {
        SessionStore(store: try FileSystemStore(root: scratch.file("store")), keyring: Keyring(primary: .generate()))
    }

    func headPath(_ scratch: TemporaryDirectory, _ sessionStore: SessionStore) async throws -> String {
        scratch.file("store/" + (try await sessionStore.place(session)).headKey)
    }

    // MARK: - Bounds

    @Test(arguments: StoreBackend.all)
    func aHeadLargerThanAHeadCanBeIsRefusedNamingItAndTheBound(_ backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let sessionStore = SessionStore(store: fixture.store, keyring: Keyring(primary: .generate()))
        try await fixture.store.put(SessionPlace.plain(session).headKey, body: .bytes([UInt8](repeating: 7, count: Int(SessionStore.maxHeadSize) + 1)), condition: nil)
        let error = await #expect(throws: StoreError.self) { try await sessionStore.head(session) }
        guard case .invalidObject(let message) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains(SessionPlace.plain(session).headKey) && message.contains("\(SessionStore.maxHeadSize)"), "\(message)")
    }

    /// A 3 GB sparse file as the head: refused from its size, not read (it took 4.2 GB of memory).
    @Test func aHugeSparseHeadFileIsRefusedWithoutBeingRead() async throws {
        let scratch = try TemporaryDirectory()
        let sessionStore = try localStore(scratch)
        _ = try await history(in: sessionStore, scratch, deltas: 0)
        #expect(truncate(try await headPath(scratch, sessionStore), 3 << 30) == 0)
        let error = await #expect(throws: StoreError.self) { try await sessionStore.head(session) }
        // The size the file system reports, before any byte is read.
        guard case .invalidObject(let message) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("\(3 << 30) bytes"), "\(message)")
    }

    /// A store on a fake S3 server (fault injection only) that answers every request with `response`.
    func fakeS3Store(_ server: FaultyHTTPServer) throws -> S3ObjectStore {
        var configuration = S3Configuration(
            endpoint: .init(scheme: "http", host: "127.0.0.1", port: server.port), bucket: "bucket",
            credentials: AWSCredentials(accessKeyID: "a", secretAccessKey: "b"))
        configuration.retry.maxAttempts = 1
        return try S3ObjectStore(client: S3Client(configuration: configuration), prefix: "p")
    }

    /// A server that ignores the range and sends a head of 1 MiB whole: the answer is cut at the
    /// bound as it arrives, and the object refused from its Content-Length.
    @Test func anOversizedHeadFromAServerIgnoringTheRangeIsCutAndRefused() async throws {
        let body = String(repeating: "x", count: 1 << 20)
        let server = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\nETag: \"x\"\r\n\r\n\(body)")
        let store = try fakeS3Store(server)
        let error = await #expect(throws: StoreError.self) { try await store.get(SessionPlace.plain(session).headKey, maxSize: SessionStore.maxHeadSize) }
        guard case .invalidObject(let message) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("\(1 << 20) bytes"), "\(message)")
    }

    /// A server that ignores the range and announces a head of 3 GB: the client stops reading
    /// past the bound instead of reading on (here the server would cut the body short after
    /// 1 MiB, which reading to the end reports as a failed transfer).
    @Test func aServerSendingAHugeHeadWholeIsNotReadPastTheBound() async throws {
        let body = String(repeating: "x", count: 1 << 20)
        let server = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: \(3 << 30)\r\nETag: \"x\"\r\n\r\n\(body)")
        let store = try fakeS3Store(server)
        let error = await #expect(throws: StoreError.self) { try await store.get(SessionPlace.plain(session).headKey, maxSize: SessionStore.maxHeadSize) }
        guard case .invalidObject(let message) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("\(3 << 30) bytes"), "\(message)")
    }

    /// A server whose listing never ends (every page names the same next one): refused, not read forever.
    @Test func aListingThatRepeatsItsPagesIsRefused() async throws {
        let body = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>again</NextContinuationToken>"
            + "<Contents><Key>p/sessions/s/head</Key><Size>1</Size></Contents></ListBucketResult>"
        let server = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        let store = try fakeS3Store(server)
        let error = await #expect(throws: StoreError.self) { try await store.list(prefix: "sessions/") }
        guard case .invalidObject(let message) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("repeats a page"), "\(message)")
        #expect(server.connectionCount == 2)
    }

    enum Special: String, CaseIterable, CustomTestStringConvertible {
        case fifo, symlink, directory
        var testDescription: String { rawValue }
    }

    /// Something other than a regular file where the head goes: a FIFO must not hang the read
    /// (an open for reading waits for a writer), a symbolic link is not followed, and a
    /// directory is no object at all, so the session's snapshots are there without a head.
    @Test(arguments: Special.allCases)
    func aSpecialFileInPlaceOfTheHeadIsRefusedWithoutBlocking(_ special: Special) async throws {
        let scratch = try TemporaryDirectory()
        let sessionStore = try localStore(scratch)
        let committed = try await history(in: sessionStore, scratch, deltas: 0)
        let head = try await headPath(scratch, sessionStore)
        try FileManager.default.removeItem(atPath: head)
        switch special {
        case .fifo: #expect(mkfifo(head, 0o600) == 0)
        case .symlink:
            try Data(committed[0].head).write(to: URL(fileURLWithPath: scratch.file("elsewhere")))
            try FileManager.default.createSymbolicLink(atPath: head, withDestinationPath: scratch.file("elsewhere"))
        case .directory: try FileManager.default.createDirectory(atPath: head, withIntermediateDirectories: false)
        }
        let done = Mutex(false)
        let read = Task {
            defer { done.withLock { $0 = true } }
            return try await sessionStore.stored(session)
        }
        do {
            // A blocked open never returns: the bound only has to outlast a loaded machine (a full
            // parallel run has kept a read of a few bytes waiting for the pool over 5 s).
            try await waitUntil(timeout: .seconds(60), "the read of the head to end") { done.withLock { $0 } }
        } catch {
            // Before the fix the read waits in open(2) for a writer: be that writer, so the test ends.
            close(open(head, O_WRONLY | O_NONBLOCK))
            Issue.record("reading a \(special) in place of the head blocked")
        }
        let result = await read.result
        switch special {
        case .fifo, .symlink:
            guard case .failure(StoreError.invalidObject(let message)) = result else { Issue.record("\(result)"); return }
            #expect(message.contains(head.dropFirst(scratch.file("store/").count)) && message.contains(special == .fifo ? "FIFO" : "symbolic link"))
        case .directory:
            guard case .failure(SnapshotError.headMissing) = result else { Issue.record("\(result)"); return }
        }
    }

    // MARK: - Fuzzed objects through both stores

    /// Seeded mutations of the head and of each snapshot object (bytes flipped, cut short,
    /// grown past the bound, replaced by noise), each put in the store and restored over a
    /// directory that differs from the snapshot: every one is refused with a typed error and
    /// the directory stays as it was. A failure names its seed.
    @Test(arguments: StoreBackend.all)
    func mutatedTruncatedAndOversizedObjectsAreRefusedAndChangeNothingLocal(_ backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let sessionStore = SessionStore(store: fixture.store, keyring: Keyring(primary: .generate()))
        _ = try await history(in: sessionStore, fixture.scratch, deltas: 1)
        let restorer = SessionRestorer(sessionStore: sessionStore)
        let root = fixture.scratch.file("restored")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        _ = try await restorer.restore(session, into: root)
        let local = "\(root)/\(session.rawValue)/creds.json"
        try Data("the worker's own state".utf8).write(to: URL(fileURLWithPath: local))
        let before = try directoryTree(root)

        let keys = [try await sessionStore.place(session).headKey]
            + (try await sessionStore.snapshotKeys(session, try await sessionStore.snapshots(session)))
        for seed in UInt64(0)..<24 {
            var random = SplitMix64(seed: seed)
            let key = keys[Int(random.next() % UInt64(keys.count))]
            let original = try #require(try await fixture.store.get(key)).bytes
            let mutated = mutate(original, key: key, random: &random)
            try await fixture.store.put(key, body: .bytes(mutated), condition: nil)
            do {
                let outcome = try await restorer.restore(session, into: root)
                Issue.record("seed \(seed): \(key) mutated to \(mutated.count) bytes restored: \(outcome)")
            } catch is SnapshotError {
            } catch is StoreError {
            } catch {
                Issue.record("seed \(seed): \(key): an untyped error \(error)")
            }
            #expect(try directoryTree(root) == before, "seed \(seed): \(key)")
            try await fixture.store.put(key, body: .bytes(original), condition: nil)
        }
    }

    /// One of: a byte flipped, the object cut short, bytes appended (for a head, past its bound),
    /// or noise of a random length.
    func mutate(_ bytes: [UInt8], key: String, random: inout SplitMix64) -> [UInt8] {
        var mutated = bytes
        switch random.next() % 4 {
        case 0:
            let index = Int(random.next() % UInt64(bytes.count))
            mutated[index] ^= UInt8(1 << (random.next() % 8))
        case 1:
            mutated = Array(bytes.prefix(Int(random.next() % UInt64(bytes.count))))
        case 2:
            let extra = key.hasSuffix("/head") ? Int(SessionStore.maxHeadSize) : Int(random.next() % 300_000) + 1
            mutated += (0..<extra).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        default:
            mutated = (0..<Int(random.next() % 70_000)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        }
        return mutated == bytes ? bytes + [0] : mutated
    }

    // MARK: - What the failure says

    /// No key of the keyring opens the objects: `wrongKey`, for the head and for a snapshot.
    @Test func objectsNoKeyOpensAreTheWrongKeyNotCorrupt() async throws {
        let scratch = try TemporaryDirectory()
        let sessionStore = try localStore(scratch)
        _ = try await history(in: sessionStore, scratch, deltas: 0)
        let otherKey = SessionStore(store: sessionStore.store, keyring: Keyring(primary: .generate()))
        do {
            _ = try await otherKey.head(session)
            Issue.record("a session found with the wrong key")
        } catch SnapshotError.wrongKey(let message) {
            #expect(message.contains("names its sessions with a secret wrapped for key id(s) \(sessionStore.keyring.primary.id), none of which is configured"), "\(message)")
        }
        // The other key gets a wrap of the naming secret (a rotation's first write), then reads the
        // old key's head: the wrong key, for the head.
        let rotated = SessionStore(store: sessionStore.store, keyring: Keyring(primary: otherKey.keyring.primary, additional: [sessionStore.keyring.primary]))
        _ = try await rotated.preparedNaming(conditionalWrites: true)
        do {
            _ = try await otherKey.head(session)
            Issue.record("a head opened with the wrong key")
        } catch SnapshotError.wrongKey(let message) {
            #expect(message.contains("head of session"), "\(message)")
        }
        // The head rewritten under the other key: it opens, the snapshots do not.
        let head = try #require(try await sessionStore.head(session)).head
        try await otherKey.writeHead(head, session: session, condition: nil)
        let root = scratch.file("restored")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        do {
            _ = try await SessionRestorer(sessionStore: otherKey).restore(session, into: root)
            Issue.record("restored with the wrong key")
        } catch SnapshotError.wrongKey(let message) {
            #expect(message.contains("key id"), "\(message)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).isEmpty)
    }

    enum Replacement: String, CaseIterable, CustomTestStringConvertible {
        case deleted
        case grownByAByte
        /// Past the 256 KiB a snapshot listed smaller is read into memory with: it was reported
        /// as an invalid object ("corrupt").
        case grownPastTheMemoryLimit
        var testDescription: String { rawValue }
    }

    /// A snapshot deleted, or replaced, between the listing (the plan) and its download (a prune
    /// beside the restore, someone writing the store).
    @Test(arguments: Replacement.allCases)
    func aSnapshotDeletedBetweenTheListingAndTheDownloadChangedDuringTheRestore(_ replacement: Replacement) async throws {
        let scratch = try TemporaryDirectory()
        let sessionStore = try localStore(scratch)
        let store = InjectedFaultsStore(store: sessionStore.store)
        let restoring = SessionStore(store: store, keyring: sessionStore.keyring)
        _ = try await history(in: sessionStore, scratch, deltas: 1)
        let root = scratch.file("restored")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        let restorer = SessionRestorer(sessionStore: restoring)
        let plan = try await restorer.plan(session, into: root)
        let base = try #require(try await sessionStore.snapshots(session).first)
        let baseKey = try await sessionStore.snapshotKeys(session, [base])[0]
        let original = try #require(try await sessionStore.store.get(baseKey)).bytes
        switch replacement {
        case .deleted: try await sessionStore.store.delete([baseKey])
        case .grownByAByte: try await sessionStore.store.put(baseKey, body: .bytes(original + [0]), condition: nil)
        case .grownPastTheMemoryLimit: try await sessionStore.store.put(baseKey, body: .bytes(original + [UInt8](repeating: 0, count: 300 << 10)), condition: nil)
        }
        do {
            _ = try await restorer.restore(plan, into: root)
            Issue.record("restored without its base")
        } catch SnapshotError.changedDuringRead(let message) {
            #expect(message.contains(replacement == .deleted ? base.id.tagged : baseKey), "\(message)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).isEmpty)
    }

    // MARK: - A head put back over a newer one

    /// The head after the base and first delta, put back once two more deltas were committed:
    /// the store holds a chain above it that a newer head committed. Restore, verify and prune
    /// refuse it; `--snapshot` of the newest restores it.
    @Test func aHeadPutBackOverANewerOneIsBehindForRestoreVerifyAndPrune() async throws {
        let scratch = try TemporaryDirectory()
        let sessionStore = try localStore(scratch)
        let committed = try await history(in: sessionStore, scratch, deltas: 3)
        try await sessionStore.store.put(try await sessionStore.place(session).headKey, body: .bytes(committed[1].head), condition: nil)

        let stored = try #require(try await sessionStore.stored(session))
        #expect(stored.newerChain().map(\.id) == committed[2...].map(\.id))
        let root = scratch.file("restored")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        let restorer = SessionRestorer(sessionStore: sessionStore)
        do {
            _ = try await restorer.plan(session, into: root)
            Issue.record("planned a restore of a head put back")
        } catch SnapshotError.headBehind(let message) {
            #expect(message.contains("\(committed[3].id)"), "\(message)")
        }
        await #expect(throws: SnapshotError.self) { try await SnapshotVerifier(sessionStore: sessionStore).verify(session) }
        await #expect(throws: SnapshotError.self) {
            try await SnapshotPruner(sessionStore: sessionStore).prune(session, policy: RetentionPolicy(keepLast: 1))
        }
        #expect(try await sessionStore.snapshots(session).count == 4)
        let newest = try await restorer.restore(session, into: root, target: committed[3].id.label)
        #expect(newest.status == .restored && newest.snapshot == committed[3].id)
    }

    /// The first claim's head (naming no snapshot) put back: not "no snapshot yet", which
    /// `restore --all` would leave out in silence, but behind.
    @Test func aClaimPutBackOverACommittedHeadIsBehind() async throws {
        let scratch = try TemporaryDirectory()
        let sessionStore = try localStore(scratch)
        let committed = try await history(in: sessionStore, scratch, deltas: 1)
        let claim = SessionHead(generation: 1, owner: "agent-a", latest: nil, latestKind: nil, base: nil, updatedAt: Date())
        try await sessionStore.writeHead(claim, session: session, condition: nil)
        #expect(try await sessionStore.stored(session)?.newerChain().map(\.id) == committed.map(\.id))
        let root = scratch.file("restored")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        await #expect(throws: SnapshotError.self) { try await SessionRestorer(sessionStore: sessionStore).plan(session, into: root) }
    }

    /// What is not a head put back: one upload in flight above the head (a writer between its
    /// upload and its commit), and a linked chain written after the head object (the hybrid
    /// mirror copies the snapshots S3 is missing before S3's head).
    @Test func anUploadInFlightAndAChainCopiedBeforeItsHeadAreNotBehind() async throws {
        let scratch = try TemporaryDirectory()
        let sessionStore = try localStore(scratch)
        let committed = try await history(in: sessionStore, scratch, deltas: 3)

        try await sessionStore.store.put(try await sessionStore.place(session).headKey, body: .bytes(committed[2].head), condition: nil)
        #expect(try await sessionStore.stored(session)?.newerChain() == [])

        try await sessionStore.store.put(try await sessionStore.place(session).headKey, body: .bytes(committed[1].head), condition: nil)
        var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000_000, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, try await headPath(scratch, sessionStore), &times, 0) == 0)
        let stored = try #require(try await sessionStore.stored(session))
        #expect(stored.newerChain() == [])
        let root = scratch.file("restored")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        #expect(try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root).snapshot == committed[1].id)
    }
}
