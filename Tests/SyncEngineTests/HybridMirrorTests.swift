import SessionCrypto
import Foundation
import Logging
import S3Client
import S3Store
import SyncEngine
import TestSupport
import Testing

/// Hybrid mode: commits go to the local store, and the mirror brings S3 (a real SeaweedFS)
/// up to date behind it, after outages too, without overwriting another agent's claim.
@Suite("Hybrid mirror")
struct HybridMirrorTests {
    let workspace: TemporaryDirectory
    let keyring = Keyring(primary: .generate())
    let session = SessionID("hybrid-1")!
    var directory: String { workspace.file("sessions/\(session.rawValue)") }

    init() throws {
        workspace = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: workspace.file("sessions"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory)
    }

    func stores() async throws -> (local: SessionStore, remote: SessionStore) {
        let client = try await TestS3Server.seaweedFS.freshBucket()
        return (
            SessionStore(store: try FileSystemStore(root: workspace.file("local")), keyring: keyring),
            SessionStore(store: try S3ObjectStore(client: client, prefix: "hybrid"), keyring: keyring)
        )
    }

    func replicator(_ local: SessionStore, _ mirror: SessionMirror, owner: String = "agent-a") -> SessionReplicator {
        SessionReplicator(
            session: session, directory: directory, sessionStore: local, owner: owner, conditionalWrites: true,
            remoteGeneration: { try await mirror.remoteGeneration(session) }, logger: Logger(label: "test"))
    }

    func restore(from store: SessionStore) async throws -> [String: [UInt8]] {
        let root = workspace.file("restored-\(randomHex(4))")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let outcome = try await SessionRestorer(sessionStore: store).restore(session, into: root)
        #expect(outcome.status == .restored)
        return try directoryContents("\(root)/\(session.rawValue)")
    }

    @Test(.needsTestServers) func s3CatchesUpWithEverySnapshotAfterAnOutage() async throws {
        let (local, remote) = try await stores()
        let mirror = SessionMirror(local: local, remote: remote, conditionalWrites: true)
        let writer = replicator(local, mirror)
        _ = try await writer.sync()
        try await mirror.mirror(session)
        #expect(try await restore(from: remote) == directoryContents(directory))

        // S3 is down: commits go on locally and the mirror fails without losing anything.
        var unreachable = remote.store as! S3ObjectStore
        var configuration = unreachable.client.configuration
        configuration.endpoint = .init(scheme: "http", host: "127.0.0.1", port: try freePort())
        configuration.retry.maxAttempts = 1
        unreachable = try S3ObjectStore(client: S3Client(configuration: configuration), prefix: "hybrid")
        let down = SessionMirror(local: local, remote: SessionStore(store: unreachable, keyring: keyring), conditionalWrites: true)
        for round in 0..<3 {
            try Data("{\"round\":\(round)}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
            _ = try await writer.sync()
            await #expect(throws: StoreError.self) { try await down.mirror(session) }
        }

        // Back up: one mirror pass carries every delta, in order.
        try await mirror.mirror(session)
        #expect(try await restore(from: remote) == directoryContents(directory))
        #expect(try await mirror.newest(session).store.location == local.store.location)
    }

    /// The local writer commits while the mirror reads the local head: S3 gets a head whose
    /// snapshots it holds, whichever head the mirror read, and the next pass brings the newer one.
    /// A snapshot past the memory spool's 256 KiB is copied from a temporary file, whole.
    @Test(.needsTestServers) func aSnapshotLargerThanTheMemorySpoolIsMirroredWhole() async throws {
        let large = #"{"type":"Buffer","data":"\#(Data(randomBytes(600 << 10)).base64EncodedString())"}"#
        try large.write(toFile: "\(directory)/app-state-sync-key-large.json", atomically: false, encoding: .utf8)
        let (local, remote) = try await stores()
        let mirror = SessionMirror(local: local, remote: remote, conditionalWrites: true)
        _ = try await replicator(local, mirror).sync()
        let copied = try await mirror.mirror(session)
        #expect(copied.contains { $0.size > 256 << 10 }, "\(copied.map(\.size))")
        #expect(try await restore(from: remote) == directoryContents(directory))
    }

    @Test(.needsTestServers) func aCommitWhileTheMirrorReadsTheHeadNeverLeavesS3NamingASnapshotItLacks() async throws {
        let (local, remote) = try await stores()
        let racing = InjectedFaultsStore(store: local.store)
        let mirror = SessionMirror(
            local: SessionStore(store: racing, keyring: keyring), remote: remote, conditionalWrites: true)
        let writer = replicator(local, mirror)
        _ = try await writer.sync()
        try await mirror.mirror(session)

        try Data("{\"before\":\"mirror\"}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
        _ = try await writer.sync()
        try Data("{\"during\":\"mirror\"}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
        racing.afterRead(keySuffix: "/head") {
            do {
                _ = try await writer.sync()
            } catch {
                Issue.record(error)
            }
        }
        try await mirror.mirror(session)
        let published = try #require(try await remote.head(session)?.head)
        #expect(try await remote.chain(session, head: published).last?.id == published.latest)

        try await mirror.mirror(session)
        #expect(try await restore(from: remote) == directoryContents(directory))
    }

    @Test(.needsTestServers) func aClaimInS3ByAnotherAgentFencesTheMirror() async throws {
        let (local, remote) = try await stores()
        let mirror = SessionMirror(local: local, remote: remote, conditionalWrites: true)
        let writer = replicator(local, mirror)
        _ = try await writer.sync()
        try await mirror.mirror(session)

        // Another worker took the session over in S3.
        let other = SessionReplicator(
            session: session, directory: directory, sessionStore: remote, owner: "agent-b", conditionalWrites: true,
            logger: Logger(label: "test"))
        try Data("{\"by\":\"b\"}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
        _ = try await other.sync()
        let theirs = try await restore(from: remote)

        try Data("{\"by\":\"a, stale\"}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
        _ = try await writer.sync()
        let error = await #expect(throws: SnapshotError.self) { try await mirror.mirror(session) }
        guard case .fenced(_, let owner) = error else {
            Issue.record("expected fencing, got \(String(describing: error))")
            return
        }
        #expect(owner == "agent-b")
        #expect(try await restore(from: remote) == theirs)
        #expect(try await mirror.newest(session).store.location == remote.store.location)
    }
}
