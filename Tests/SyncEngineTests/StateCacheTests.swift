import Foundation
import Logging
import SessionCrypto
@testable import SyncEngine
import TestSupport
import Testing

/// The local state cache: a claim of the snapshot it describes reads it instead of the chain,
/// and anything else (another head, a damaged file, another session's or key's) falls back to
/// the chain, with the same state as without a cache.
@Suite("State cache")
struct StateCacheTests {
    let workspace: TemporaryDirectory
    let sessionsRoot: String
    let sessionStore: SessionStore
    let cacheDirectory: String
    let session = SessionID("4915112345678")!
    var directory: String { "\(sessionsRoot)/\(session.rawValue)" }

    init() throws {
        workspace = try TemporaryDirectory()
        sessionsRoot = workspace.file("sessions")
        cacheDirectory = workspace.file("state")
        try FileManager.default.createDirectory(atPath: sessionsRoot, withIntermediateDirectories: true)
        sessionStore = SessionStore(store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
        try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory)
    }

    func cache(keyring: Keyring? = nil) throws -> StateCache {
        let cache = StateCache(directory: cacheDirectory, keyring: keyring ?? sessionStore.keyring)
        try cache.prepare()
        return cache
    }

    func replicator(_ session: SessionID? = nil, owner: String, cache: StateCache?) -> SessionReplicator {
        let session = session ?? self.session
        return SessionReplicator(
            session: session, directory: "\(sessionsRoot)/\(session.rawValue)", sessionStore: sessionStore, owner: owner,
            conditionalWrites: true, stateCache: cache, logger: Logger(label: "test"))
    }

    func miss(_ read: Result<StateCache.Entry, StateCache.Miss>) -> StateCache.Miss? {
        if case .failure(let miss) = read { miss } else { nil }
    }

    func cacheFile(of session: SessionID) async throws -> String {
        "\(cacheDirectory)/\(try await sessionStore.place(session).component)"
    }

    /// A base and a delta committed through a replicator with the cache; returns the latest snapshot.
    func commitBaseAndDelta(cache: StateCache) async throws -> SnapshotID {
        let writer = replicator(owner: "agent-a", cache: cache)
        _ = try await writer.sync()
        try Data("{\"changed\":true}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
        guard case .uploaded(let latest, .delta, _, _) = try await writer.sync() else {
            throw ProgramFailure("a change should upload a delta")
        }
        await writer.stateCacheSaved()
        return latest
    }

    /// Hit: the claim reads the cache, not the chain (deleted here, which the chain's reading
    /// would fail on), and the replicator knows the session exactly as after its commit.
    @Test func aClaimOfTheCachedSnapshotReadsNoChain() async throws {
        let cache = try cache()
        let latest = try await commitBaseAndDelta(cache: cache)
        let cached = try cache.read(session, place: try await sessionStore.place(session), snapshot: latest).get()
        #expect(cached.state.count == (try directoryContents(directory)).count)
        #expect(cached.deltaCount == 1)
        try await sessionStore.store.delete(try await sessionStore.snapshotKeys(session, try await sessionStore.snapshots(session)))

        let restarted = replicator(owner: "agent-a-restarted", cache: cache)
        try await restarted.claim()
        #expect(await restarted.latest == latest)
        #expect(await restarted.health.files == cached.state.count)
        // Its digest is kept, so an upload costs what changed (a merge once set it on the state
        // the load then replaced: every upload hashed every file's line again).
        #expect(await restarted.keepsStateDigest)
        #expect(try await restarted.sync() == .unchanged(unsettled: []))
        // Without the cache, the same claim needs the chain.
        await #expect(throws: SnapshotError.self) { try await replicator(owner: "agent-b", cache: nil).claim() }
    }

    /// Another agent committed after the cache was written: the head names another snapshot, so
    /// the claim reads the chain, and the replicator compares the directory with that snapshot.
    @Test func aCacheOfAnOlderSnapshotIsNotUsed() async throws {
        let cache = try cache()
        let cachedSnapshot = try await commitBaseAndDelta(cache: cache)
        try Data("{\"elsewhere\":true}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
        guard case .uploaded(let newer, _, _, _) = try await replicator(owner: "agent-b", cache: nil).sync() else {
            throw ProgramFailure("the other agent should commit the change")
        }
        let place = try await sessionStore.place(session)
        #expect(miss(cache.read(session, place: place, snapshot: newer)) == .otherSnapshot)

        let restarted = replicator(owner: "agent-a-restarted", cache: cache)
        try await restarted.claim()
        #expect(await restarted.latest == newer)
        #expect(await restarted.keepsStateDigest)
        // The directory is what `newer` holds: nothing to upload (the stale cache would have found a change).
        #expect(try await restarted.sync() == .unchanged(unsettled: []))
        // The claim's read of the chain replaced the cache.
        await restarted.stateCacheSaved()
        #expect(try cache.read(session, place: place, snapshot: newer).get().snapshot == newer)
        #expect(cachedSnapshot != newer)
    }

    /// A damaged cache (one byte flipped, or cut short) is refused and the chain read instead.
    @Test func aTamperedCacheFallsBackToTheChain() async throws {
        let cache = try cache()
        let latest = try await commitBaseAndDelta(cache: cache)
        let path = try await cacheFile(of: session)
        let place = try await sessionStore.place(session)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let original = bytes
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(miss(cache.read(session, place: place, snapshot: latest)) == .unreadable("\(CryptoError.tampered)"))
        try Data(original.dropLast(20)).write(to: URL(fileURLWithPath: path))
        #expect(miss(cache.read(session, place: place, snapshot: latest)) == .unreadable("\(CryptoError.truncated)"))

        let restarted = replicator(owner: "agent-a-restarted", cache: cache)
        try await restarted.claim()
        #expect(try await restarted.sync() == .unchanged(unsettled: []))
        await restarted.stateCacheSaved()
        #expect(try cache.read(session, place: place, snapshot: latest).get().snapshot == latest)
    }

    /// A cache moved to another session's name does not decrypt as that session's, nor does one
    /// read with another key; a file of another kind is not a cache.
    @Test func aCacheOfAnotherSessionOrKeyIsRefused() async throws {
        let cache = try cache()
        let latest = try await commitBaseAndDelta(cache: cache)
        let other = SessionID("4915199999999")!
        try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: "\(sessionsRoot)/\(other.rawValue)")
        let otherWriter = replicator(other, owner: "agent-a", cache: cache)
        _ = try await otherWriter.sync()
        await otherWriter.stateCacheSaved()
        let otherPlace = try await sessionStore.place(other)
        try FileManager.default.removeItem(atPath: try await cacheFile(of: other))
        try FileManager.default.copyItem(atPath: try await cacheFile(of: session), toPath: try await cacheFile(of: other))
        #expect(miss(cache.read(other, place: otherPlace, snapshot: latest)) == .unreadable("\(CryptoError.tampered)"))

        let otherKey = try self.cache(keyring: Keyring(primary: .generate()))
        guard case .failure(.unreadable(let reason)) = otherKey.read(session, place: try await sessionStore.place(session), snapshot: latest) else {
            throw ProgramFailure("a cache read with another key should be refused")
        }
        #expect(reason.contains("key"))

        try Data("{\"files\":[]}".utf8).write(to: URL(fileURLWithPath: try await cacheFile(of: other)))
        #expect(miss(cache.read(other, place: otherPlace, snapshot: latest)) == .unreadable("\(CryptoError.notAnEncryptedObject)"))
        try FileManager.default.removeItem(atPath: try await cacheFile(of: other))
        #expect(miss(cache.read(other, place: otherPlace, snapshot: latest)) == .absent)
    }

    /// The file is 0600 in a 0700 directory, named by the keyed id: no session name on disk.
    @Test func theCacheNamesNoSessionAndOnlyItsOwnerReadsIt() async throws {
        let cache = try cache()
        _ = try await commitBaseAndDelta(cache: cache)
        let names = try FileManager.default.contentsOfDirectory(atPath: cacheDirectory)
        #expect(names == [try await sessionStore.place(session).component])
        #expect(!names.contains { $0.contains(session.rawValue) })
        let file = try FileManager.default.attributesOfItem(atPath: try await cacheFile(of: session))
        #expect((file[.posixPermissions] as? Int) == 0o600)
        let folder = try FileManager.default.attributesOfItem(atPath: cacheDirectory)
        #expect((folder[.posixPermissions] as? Int) == 0o700)
    }
}
