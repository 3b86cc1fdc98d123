import SessionCrypto
import Foundation
import Logging
@testable import SyncEngine
import TestSupport
import Testing

/// Heads and tombstones that the agent only writes in moments a test of the binary cannot
/// catch, read by the reader written from FORMAT.md alone (`FormatReader`), which checks their
/// fields as the document spells them.
@Suite("head format")
struct HeadFormatTests {
    let workspace: TemporaryDirectory
    let key = EncryptionKey.generate()
    let session = SessionID("4915112345678")!

    init() throws {
        workspace = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: workspace.file("sessions/\(session)"), withIntermediateDirectories: true)
    }

    /// FORMAT.md's example of a head written by a claim, byte for byte: absent fields, not nulls.
    @Test func aClaimedHeadIsSpelledAsFormatMDShowsIt() throws {
        var head = SessionHead(
            generation: 1, owner: "worker-1/4242/3141592653", latest: nil, latestKind: nil, base: nil,
            updatedAt: Date(timeIntervalSince1970: 1_763_633_760))
        head.session = "4915112345678"
        let format = try String(contentsOfFile: Fixtures.path("../FORMAT.md"), encoding: .utf8)
        let example = try #require(format.firstMatch(of: /`(\{"formatVersion":4,"generation"[^`]*)`/)?.output.1)
        #expect(String(decoding: head.encoded(), as: UTF8.self) == example)
    }

    /// A claim writes the head before the session's first snapshot: no `latest`, `latestKind`
    /// or `base`. A tombstone as the first snapshot then has no parent, and the head no `base`.
    @Test func aHeadBeforeTheFirstSnapshotAndAFirstTombstoneReadAsFormatMDSays() async throws {
        let sessionStore = SessionStore(store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: key))
        let replicator = SessionReplicator(
            session: session, directory: workspace.file("sessions/\(session)"), sessionStore: sessionStore,
            owner: "host/4242/3141592653", conditionalWrites: true, logger: Logger(label: "test"))
        let reader = FormatReader(store: workspace.file("store"), keys: key.base64EncodedString())

        try await replicator.claim()
        #expect(try await sessionStore.head(session)?.head.latest == nil)
        let claimed = try await reader.read(session.rawValue, into: workspace.file("claimed"))
        #expect(claimed.state == "no-snapshot")

        try await replicator.tombstone()
        let tombstoned = try await reader.read(session.rawValue, into: workspace.file("tombstoned"))
        #expect(tombstoned.state == "tombstone")
        #expect(tombstoned.chain == ["1.1.tombstone"])
        #expect(!FileManager.default.fileExists(atPath: workspace.file("tombstoned")))
    }
}
