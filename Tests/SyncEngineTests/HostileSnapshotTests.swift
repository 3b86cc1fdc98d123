import Foundation
@testable import SessionArchive
import SessionCrypto
@testable import SyncEngine
import SystemSupport
import TestSupport
import Testing

/// The hostile snapshot payloads of fixtures/hostile through the path every restore takes
/// (`SessionRestorer.replace`: decrypt, unpack into a staging directory, check against the
/// manifest, swap): each is refused with the archive reader's own reason, leaves the session
/// directory exactly as it was, and leaves nothing beside it or outside it. (The reader's
/// reasons themselves: SessionArchiveTests' HostileArchiveTests.)
@Suite("Hostile snapshots")
struct HostileSnapshotTests {
    static let fixtures = (try? FileManager.default.contentsOfDirectory(atPath: Fixtures.path("hostile")).sorted()) ?? []

    @Test func everyFixtureIsHere() {
        #expect(Self.fixtures.count == 15)
    }

    @Test(arguments: fixtures)
    func aHostilePayloadIsRefusedAndChangesNothing(fixture: String) throws {
        let workspace = try TemporaryDirectory()
        let root = workspace.file("sessions")
        let session = SessionID("4915112345678")!
        let target = "\(root)/\(session.rawValue)"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: "\(target)/creds.json"))
        let payload = try Fixtures.hostile(fixture)
        let restorer = SessionRestorer(
            sessionStore: SessionStore(store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate())))
        let entry = SnapshotEntry(
            id: SnapshotID(sequence: 1, generation: 1, tag: .random()), kind: .base, parentTag: nil, size: 0, lastModified: nil)
        let object = try encrypt(payload, as: entry, of: session, key: restorer.sessionStore.keyring.primary)

        let error = #expect(throws: SnapshotError.self) {
            try restorer.replace(target, session: session, chain: [entry], objects: [.inMemory(object)])
        }
        var readerRefusal: ArchiveError?
        do {
            try ArchiveReader(source: BufferSource(payload)).forEachEntry { _, _ in }
        } catch let refusal as ArchiveError {
            readerRefusal = refusal
        }
        let refusal = try #require(readerRefusal, "the reader takes \(fixture)")
        #expect(error.map { "\($0)" }?.contains(refusal.description) == true, "\(fixture): \(String(describing: error))")
        #expect(try directoryContents(target) == ["creds.json": Array("keep me".utf8)], "\(fixture)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == [session.rawValue], "\(fixture): left beside")
        #expect(try FileManager.default.contentsOfDirectory(atPath: workspace.path).sorted() == ["sessions", "store"], "\(fixture)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/sync-agent-fixture-absolute.txt"), "\(fixture)")
    }

    /// A snapshot object holding `payload`, as a writer would have encrypted it for `entry`.
    private func encrypt(_ payload: [UInt8], as entry: SnapshotEntry, of session: SessionID, key: EncryptionKey) throws -> [UInt8] {
        let sink = BufferSink()
        let identity = SessionLayout.identity(session, objectName: SessionLayout.snapshotName(entry))
        let encryption = EncryptingSink(key: key, identity: identity, downstream: sink)
        try payload.withUnsafeBytes { try encryption.write($0) }
        try encryption.finish()
        return sink.bytes
    }
}
