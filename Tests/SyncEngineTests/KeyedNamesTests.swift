import Foundation
import Logging
import SessionArchive
import SessionCrypto
import StoreConformance
@testable import SyncEngine
import TestSupport
import Testing

/// Object keys of format version 3 name sessions by keyed ids (FORMAT.md, "Keyed names"): a
/// session named by its phone number, or with spaces and non-ASCII letters, leaves nothing of its
/// name in a listing of the store, on the local store and on SeaweedFS and rclone; a store of
/// version 2 is read, moved and read the same; a key rotation changes no prefix.
@Suite("Keyed names")
struct KeyedNamesTests {
    static let number = "4915112345678"
    let sessions = [number, "Zoë Müller", "büro 7 straße"].map { SessionID($0)! }
    let workspace: TemporaryDirectory

    init() throws {
        workspace = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: workspace.file("sessions"), withIntermediateDirectories: true)
        for session in sessions {
            try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory(session))
        }
    }

    func directory(_ session: SessionID) -> String { workspace.file("sessions/\(session.rawValue)") }

    func writer(_ sessionStore: SessionStore, _ session: SessionID) -> SessionReplicator {
        SessionReplicator(
            session: session, directory: directory(session), sessionStore: sessionStore, owner: "host-a/4242/3141592653",
            conditionalWrites: true, logger: Logger(label: "test"))
    }

    /// A base, then a delta after `creds.json` changed.
    func writeTwice(_ sessionStore: SessionStore, _ session: SessionID) async throws {
        let writer = writer(sessionStore, session)
        _ = try await writer.sync()
        try Data(#"{"round":"\#(randomHex(4))"}"#.utf8).write(to: URL(fileURLWithPath: "\(directory(session))/creds.json"))
        guard case .uploaded = try await writer.sync() else { throw ProgramFailure("the delta of \(session) uploaded nothing") }
    }

    func restored(_ sessionStore: SessionStore, _ session: SessionID) async throws -> [String: [UInt8]] {
        let root = workspace.file("restored-\(randomHex(4))")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let outcome = try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root)
        #expect(outcome.status == .restored, "\(session)")
        return try directoryTree("\(root)/\(session.rawValue)")
    }

    /// Every key of the store in the grammar of FORMAT.md's version 3 (nothing else has a place in
    /// a key), and none holding a session's name, its hex spelling or a run of four digits of the
    /// number outside the fields that are random or keyed hashes (tags, key ids, keyed ids, whose
    /// hex digits may meet a run by chance). The ETags (the only metadata the stores set) neither.
    func expectNothingRevealed(_ listed: [StoredObjectInfo]) {
        let grammar = /naming\/[0-9a-f]{16}|sessions\/[0-9a-f]{32}\/(head|name|snapshots\/\d{20}-\d{10}-[0-9a-f]{16}(-[0-9a-f]{16})?\.(base|delta|tombstone))/
        let number = Array(Self.number)
        let runs = (0...(number.count - 4)).map { String(number[$0..<($0 + 4)]) }
        for info in listed {
            #expect(info.key.wholeMatch(of: grammar) != nil, "\(info.key)")
            let masked = info.key.replacing(/[0-9a-f]{16,32}/, with: "_")
            for session in sessions {
                let spellings = [session.rawValue, FileName.bytes(of: session.rawValue).lowercaseHex, session.keyComponent]
                #expect(!spellings.contains { info.key.contains($0) || info.etag.contains($0) }, "\(info.key) \(info.etag)")
            }
            #expect(!runs.contains { masked.contains($0) }, "\(info.key)")
        }
    }

    @Test(arguments: StoreBackend.all)
    func noKeyOrListingRevealsASessionsNameAndEverySessionReadsBack(_ backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let sessionStore = SessionStore(store: fixture.store, keyring: Keyring(primary: .generate()))
        for session in sessions { try await writeTwice(sessionStore, session) }
        // A logout: the tombstone is named like any other snapshot.
        let gone = sessions[2]
        try FileManager.default.removeItem(atPath: directory(gone))
        try await writer(sessionStore, gone).tombstone()

        let listed = try await fixture.store.list(prefix: "")
        #expect(listed.contains { $0.key.hasSuffix(".tombstone") } && listed.contains { $0.key.hasPrefix("naming/") })
        expectNothingRevealed(listed)

        // A reader that knows nothing yet: the heads name the sessions.
        let reader = SessionStore(store: fixture.store, keyring: sessionStore.keyring)
        #expect(try await reader.sessions() == sessions.sorted())
        for session in sessions.dropLast() {
            #expect(try await restored(reader, session) == directoryTree(directory(session)))
            #expect(try await reader.place(session).isKeyed)
        }
        let root = workspace.file("restored-gone")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        #expect(try await SessionRestorer(sessionStore: reader).restore(gone, into: root).status == .loggedOut)
    }

    /// Puts a session written by this version back as format version 2 wrote it: its objects at its
    /// plain place (snapshots byte for byte: they are bound to the name, not the place), its head
    /// of version 2 bound to the name; then the store's naming wraps go. (Its manifests still say
    /// version 3, which a reader takes as it takes 2: they hold the same fields.)
    func downgradeToVersion2(_ sessionStore: SessionStore, _ sessions: [SessionID]) async throws {
        let store = sessionStore.store
        for session in sessions {
            let (keyed, plain) = (try await sessionStore.place(session), SessionPlace.plain(session))
            var head = try #require(try await sessionStore.head(session)).head
            (head.formatVersion, head.session) = (2, nil)
            let identity = ObjectIdentity(sessionID: session.rawValue, objectName: "head")
            try await store.put(plain.headKey, body: .bytes(encrypt(head.encoded(), key: sessionStore.keyring.primary, identity: identity)), condition: nil)
            let keys = try await store.list(prefix: keyed.prefix).map(\.key)
            for key in keys where key != keyed.headKey {
                let bytes = try #require(try await store.get(key, maxSize: 1 << 30)).bytes
                try await store.put(plain.prefix + key.dropFirst(keyed.prefix.count), body: .bytes(bytes), condition: nil)
            }
            try await store.delete(keys)
        }
        try await store.delete(try await store.list(prefix: NamingWraps.prefix).map(\.key))
    }

    @Test(arguments: StoreBackend.all)
    func aStoreOfVersion2RestoresThenMovesThenRestoresTheSame(_ backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let keyring = Keyring(primary: .generate())
        for session in sessions { try await writeTwice(SessionStore(store: fixture.store, keyring: keyring), session) }
        try await downgradeToVersion2(SessionStore(store: fixture.store, keyring: keyring), sessions)
        #expect(try await fixture.store.list(prefix: "").contains { $0.key.contains(Self.number) }, "the version 2 store names the number")

        let old = SessionStore(store: fixture.store, keyring: keyring)
        #expect(try await old.sessions() == sessions.sorted())
        var before: [SessionID: [String: [UInt8]]] = [:]
        for session in sessions {
            #expect(try await old.place(session) == .plain(session))
            before[session] = try await restored(old, session)
            #expect(before[session] == (try directoryTree(directory(session))))
        }

        // The first write moves a session; `migrate` (this) moves the others.
        let moving = SessionStore(store: fixture.store, keyring: keyring)
        try Data(#"{"moved":true}"#.utf8).write(to: URL(fileURLWithPath: "\(directory(sessions[0]))/creds.json"))
        guard case .uploaded = try await writer(moving, sessions[0]).sync() else { throw ProgramFailure("nothing uploaded") }
        let naming = try await moving.preparedNaming(conditionalWrites: true)
        for session in sessions.dropFirst() {
            let moved = try #require(try await moving.move(session, naming: naming, conditionalWrites: true, dryRun: false))
            #expect(moved.copied.map(\.kind) == [.base, .delta])
            #expect(try await moving.move(session, naming: naming, conditionalWrites: true, dryRun: false) == nil)
        }

        expectNothingRevealed(try await fixture.store.list(prefix: ""))
        let reader = SessionStore(store: fixture.store, keyring: keyring)
        #expect(try await reader.sessions() == sessions.sorted())
        #expect(try await restored(reader, sessions[0]) == directoryTree(directory(sessions[0])))
        for session in sessions.dropFirst() {
            #expect(try await reader.place(session).isKeyed)
            #expect(try await restored(reader, session) == before[session])
        }
    }

    /// Two agents moving the same sessions at once: both end without error, the plain places are
    /// empty and every session reads as it was.
    @Test(arguments: StoreBackend.all)
    func twoMoversRacingLoseNothing(_ backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let keyring = Keyring(primary: .generate())
        for session in sessions { try await writeTwice(SessionStore(store: fixture.store, keyring: keyring), session) }
        try await downgradeToVersion2(SessionStore(store: fixture.store, keyring: keyring), sessions)
        let conditional = backend.enforcesConditionalWrites
        let (first, second) = (SessionStore(store: fixture.store, keyring: keyring), SessionStore(store: fixture.store, keyring: keyring))
        let naming = try await first.preparedNaming(conditionalWrites: conditional)
        #expect(try await second.preparedNaming(conditionalWrites: conditional).sameSecret(as: naming))
        let sessions = sessions
        try await withThrowingTaskGroup(of: Void.self) { group in
            for mover in [first, second] {
                group.addTask {
                    for session in sessions { _ = try await mover.move(session, naming: naming, conditionalWrites: conditional, dryRun: false) }
                }
            }
            try await group.waitForAll()
        }
        let reader = SessionStore(store: fixture.store, keyring: keyring)
        #expect(try await reader.sessions() == sessions.sorted())
        for session in sessions {
            #expect(try await fixture.store.list(prefix: SessionPlace.plain(session).prefix).isEmpty)
            #expect(try await reader.place(session).isKeyed)
            #expect(try await restored(reader, session) == directoryTree(directory(session)))
        }
        expectNothingRevealed(try await fixture.store.list(prefix: ""))
    }

    /// A move stopped after its seal and part of its copy: readers read the sealed plain place; a
    /// writer of the plain head that read it before the seal loses its condition; the next writer
    /// finishes the move, and the history is whole.
    @Test func aMoveStoppedHalfwayIsReadAsBeforeAndFinishedByTheNextWriter() async throws {
        let store = try FileSystemStore(root: workspace.file("store"))
        let keyring = Keyring(primary: .generate())
        let session = sessions[0]
        try await writeTwice(SessionStore(store: store, keyring: keyring), session)
        try await downgradeToVersion2(SessionStore(store: store, keyring: keyring), [session])
        let before = try directoryTree(directory(session))
        // The reader written from FORMAT.md alone reads each state: version 2, sealed, moved.
        let formatReader = FormatReader(store: workspace.file("store"), keys: keyring.primary.base64EncodedString())
        func readByTheDocument(_ expected: [String: [UInt8]]) async throws {
            let out = workspace.file("read-\(randomHex(4))")
            #expect(try await formatReader.read(session.rawValue, into: out).state == "restored")
            #expect(try directoryTree(out) == expected)
        }
        try await readByTheDocument(before)

        let stopped = SessionStore(store: store, keyring: keyring)
        let naming = try await stopped.preparedNaming(conditionalWrites: true)
        let (plain, keyed) = (SessionPlace.plain(session), SessionPlace.keyed(session, naming: naming))
        let v2 = try #require(try await store.get(plain.headKey, maxSize: SessionStore.maxHeadSize))
        let head = try stopped.decodeHead(v2.bytes, session: session, place: plain)
        try await store.put(plain.headKey, body: .bytes(try stopped.encodeHead(head, session: session, place: plain)), condition: .ifMatch(etag: v2.info.etag))
        let first = try #require(try await stopped.snapshots(session, at: plain).first)
        try await store.put(keyed.snapshotKey(first), body: .bytes(try #require(try await store.get(plain.snapshotKey(first), maxSize: 1 << 30)).bytes), condition: nil)

        await #expect(throws: StoreError.preconditionFailed(key: plain.headKey)) {
            try await store.put(plain.headKey, body: .bytes(v2.bytes), condition: .ifMatch(etag: v2.info.etag))
        }
        let reader = SessionStore(store: store, keyring: keyring)
        #expect(try await reader.place(session) == plain)
        #expect(try await reader.sessions() == [session])
        #expect(try await restored(reader, session) == before)
        try await readByTheDocument(before)

        try Data(#"{"after":"the move"}"#.utf8).write(to: URL(fileURLWithPath: "\(directory(session))/creds.json"))
        guard case .uploaded = try await writer(SessionStore(store: store, keyring: keyring), session).sync() else {
            throw ProgramFailure("nothing uploaded")
        }
        #expect(try await store.list(prefix: plain.prefix).isEmpty)
        let after = SessionStore(store: store, keyring: keyring)
        #expect(try await after.place(session) == keyed)
        #expect(try await after.snapshots(session).map(\.id.sequence) == [1, 2, 3])
        #expect(try await restored(after, session) == directoryTree(directory(session)))
        try await readByTheDocument(try directoryTree(directory(session)))
    }

    /// The primary key rotates: the next write wraps the naming secret for the new key, every
    /// prefix stays, and once the new key wrote a base, it alone reads the session.
    @Test(arguments: StoreBackend.all)
    func aKeyRotationKeepsEveryPrefixAndEverythingReads(_ backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let (old, new) = (EncryptionKey.generate(), EncryptionKey.generate())
        let session = sessions[1]
        let before = SessionStore(store: fixture.store, keyring: Keyring(primary: old))
        try await writeTwice(before, session)
        let place = try await before.place(session)

        let rotated = SessionStore(store: fixture.store, keyring: Keyring(primary: new, additional: [old]))
        #expect(try await restored(rotated, session) == directoryTree(directory(session)))
        try Data(#"{"rotated":true}"#.utf8).write(to: URL(fileURLWithPath: "\(directory(session))/creds.json"))
        _ = try await writer(rotated, session).sync(forceBase: true)
        #expect(try await rotated.place(session) == place)
        #expect(Set(try await fixture.store.list(prefix: NamingWraps.prefix).map(\.key)) == [NamingWraps.key(old.id), NamingWraps.key(new.id)])

        let newOnly = SessionStore(store: fixture.store, keyring: Keyring(primary: new))
        #expect(try await newOnly.place(session) == place)
        #expect(try await newOnly.sessions() == [session])
        #expect(try await restored(newOnly, session) == directoryTree(directory(session)))
        expectNothingRevealed(try await fixture.store.list(prefix: ""))
    }
}
