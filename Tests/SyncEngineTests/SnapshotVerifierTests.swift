import SessionCrypto
import Foundation
import Logging
import StoreConformance
import SyncEngine
import TestSupport
import Testing

/// `verify` and the snapshots listing on the filesystem store: healthy chains, a flipped
/// byte, a missing delta, sampling, and orphans a crashed writer leaves.
@Suite("SnapshotVerifier")
struct SnapshotVerifierTests {
    let workspace: TemporaryDirectory
    let sessionStore: SessionStore
    let session = SessionID("4915112345678")!
    var directory: String { workspace.file("sessions/\(session.rawValue)") }
    var verifier: SnapshotVerifier { SnapshotVerifier(sessionStore: sessionStore) }

    init() throws {
        workspace = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: workspace.file("sessions"), withIntermediateDirectories: true)
        sessionStore = SessionStore(
            store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
    }

    /// A base then `deltas` deltas of the small fixture, each changing, adding and deleting
    /// files; optionally a tombstone last. Returns the committed ids, oldest first.
    func history(deltas: Int, tombstone: Bool = false) async throws -> [SnapshotID] {
        try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory)
        let writer = replicator(owner: "agent-a")
        var ids: [SnapshotID] = []
        for round in 0...deltas {
            if round > 0 {
                try write(#"{"round":\#(round)}"#, to: "creds.json")
                try write(#"{"keyId":\#(round)}"#, to: "pre-key-\(9000 + round).json")
                if round > 1 { try FileManager.default.removeItem(atPath: "\(directory)/pre-key-\(9000 + round - 1).json") }
            }
            guard case .uploaded(let id, let kind, _, _) = try await writer.sync() else {
                throw ProgramFailure("round \(round) uploaded nothing")
            }
            #expect(kind == (round == 0 ? .base : .delta), "round \(round)")
            ids.append(id)
        }
        if tombstone {
            try FileManager.default.removeItem(atPath: directory)
            try await writer.tombstone()
            ids.append(try #require(try await sessionStore.head(session)?.head.latest))
        }
        return ids
    }

    func replicator(owner: String) -> SessionReplicator {
        SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: owner,
            conditionalWrites: true, logger: Logger(label: "test"))
    }

    func key(_ id: SnapshotID) async throws -> String {
        try await sessionStore.snapshotKeys(session, [try await entry(id)])[0]
    }

    func entry(_ id: SnapshotID) async throws -> SnapshotEntry {
        try #require(try await sessionStore.snapshots(session).first { $0.id == id })
    }

    @Test func aHealthyChainWithATombstoneVerifies() async throws {
        let ids = try await history(deltas: 3, tombstone: true)
        let checks = try await verifier.verify(session)
        #expect(checks.map(\.id) == ids)
        #expect(checks.map(\.kind) == [.base, .delta, .delta, .delta, .tombstone])
        #expect(checks.allSatisfy { $0.isOK }, "\(checks)")
    }

    @Test func aFlippedByteMakesThatSnapshotCorruptAndOnlyItsDescendantsUnrestorable() async throws {
        let ids = try await history(deltas: 3)
        let flipped = try await key(ids[2])
        var bytes = try #require(try await sessionStore.store.get(flipped)).bytes
        bytes[bytes.count / 2] ^= 0x01
        try await sessionStore.store.put(flipped, body: .bytes(bytes), condition: nil)

        let checks = try await verifier.verify(session)
        #expect(checks.map(\.id) == ids)
        #expect(checks[0].isOK && checks[1].isOK)
        guard case .corrupt = checks[2].defect else {
            Issue.record("the flipped snapshot should be corrupt, got \(String(describing: checks[2].defect))")
            return
        }
        #expect(checks[3].defect == .dependsOnDefective(ids[2]))
    }

    @Test func aFlippedByteInTheNewestLeavesTheOthersOK() async throws {
        let ids = try await history(deltas: 2)
        let flipped = try await key(ids[2])
        var bytes = try #require(try await sessionStore.store.get(flipped)).bytes
        bytes[bytes.count - 1] ^= 0x80
        try await sessionStore.store.put(flipped, body: .bytes(bytes), condition: nil)

        let checks = try await verifier.verify(session)
        #expect(checks.filter { $0.isOK }.map(\.id) == Array(ids.prefix(2)))
        #expect(checks.last?.defect?.reason == "corrupt")
    }

    @Test func aMissingMiddleDeltaBreaksTheChainsAfterIt() async throws {
        let ids = try await history(deltas: 4)
        try await sessionStore.store.delete([try await key(ids[2])])

        let checks = try await verifier.verify(session)
        #expect(checks.map(\.id) == [ids[0], ids[1], ids[3], ids[4]])
        #expect(checks[0].isOK && checks[1].isOK)
        for check in checks.suffix(2) {
            guard case .brokenChain(let reason) = check.defect else {
                Issue.record("\(check.id) should have a broken chain, got \(String(describing: check.defect))")
                continue
            }
            #expect(reason.contains("gap"), "\(reason)")
        }
    }

    @Test func aFencedWritersObjectIsNeverTakenForTheSnapshotItsSuccessorWrote() async throws {
        _ = try await history(deltas: 1)
        let fenced = replicator(owner: "agent-a")
        try await fenced.claim()
        let successor = replicator(owner: "agent-b")
        try await successor.claim()
        // The fenced writer's delta is uploaded, then its commit fails: an orphan at 3.2.
        try write(#"{"by":"a"}"#, to: "creds.json")
        await #expect(throws: SnapshotError.self) { try await fenced.sync() }
        try write(#"{"by":"b"}"#, to: "creds.json")
        _ = try await successor.sync()
        try write(#"{"by":"b","again":true}"#, to: "creds.json")
        _ = try await successor.sync()
        let ids = try await sessionStore.snapshots(session).map(\.id)
        #expect(ids.suffix(3).map(\.description) == ["3.2", "3.3", "4.3"])
        let (orphan, replaced, newest) = (ids[ids.count - 3], ids[ids.count - 2], ids[ids.count - 1])
        // Without the successor's 3.3, 4.3 names a parent the store lacks: the orphan at the same
        // sequence has another tag, so it is not taken in its place.
        try await sessionStore.store.delete([try await key(replaced)])

        let checks = try await verifier.verify(session)
        #expect(!checks.map(\.id).contains(orphan))
        #expect(checks.last?.id == newest)
        #expect(checks.dropLast().allSatisfy { $0.isOK }, "\(checks)")
        guard case .brokenChain(let reason) = checks.last?.defect else {
            Issue.record("4.3 should have a broken chain, got \(String(describing: checks.last?.defect))")
            return
        }
        #expect(reason.contains("gap before 4"), "\(reason)")
    }

    @Test func aHeadNamingAMissingSnapshotIsReported() async throws {
        let ids = try await history(deltas: 1)
        try await sessionStore.store.delete([try await key(ids[1])])
        // Nothing else is judged: without the head's own snapshot no walk says which objects are committed.
        let checks = try await verifier.verify(session)
        #expect(checks.map(\.id) == [ids[1]])
        #expect(checks[0].defect?.reason == "missing")
        #expect(checks[0].defect?.description.contains(ids[1].tagged) == true, "\(checks)")
    }

    @Test func aSampleAlwaysIncludesTheNewest() async throws {
        let ids = try await history(deltas: 5)
        let one = try await verifier.verify(session, sample: 0.01)
        #expect(one.map(\.id) == [ids.last!])
        #expect(one.allSatisfy { $0.isOK })
        let half = try await verifier.verify(session, sample: 0.5)
        #expect(half.count == 3)
        #expect(half.last?.id == ids.last)
        #expect(Set(half.map(\.id)).isSubset(of: Set(ids)))
        #expect(half.allSatisfy { $0.isOK })
    }

    @Test func objectsTheHeadNeverCommittedAreOrphansAndNotVerified() async throws {
        let ids = try await history(deltas: 2)
        let head = try #require(try await sessionStore.head(session)?.head)
        let newest = try #require(try await sessionStore.store.get(try await key(ids[2]))).bytes
        // A crashed writer's upload past the head, a fenced writer's at a newer generation, and a
        // writer that lost the race for the head's own sequence, in the same generation.
        let beyond = SnapshotID(sequence: ids[2].sequence + 1, generation: head.generation, tag: .random())
        let fenced = SnapshotID(sequence: ids[1].sequence, generation: head.generation + 1, tag: .random())
        let lost = SnapshotID(sequence: ids[2].sequence, generation: head.generation, tag: .random())
        for (id, parent) in [(beyond, ids[2]), (fenced, ids[0]), (lost, ids[1])] {
            let orphan = SnapshotEntry(id: id, kind: .delta, parentTag: parent.tag, size: 0, lastModified: nil)
            try await sessionStore.store.put(try await sessionStore.snapshotKeys(session, [orphan])[0], body: .bytes(newest), condition: nil)
        }

        let entries = try await sessionStore.snapshots(session)
        #expect(entries.count == 6)
        let committed = try #require(try SessionStore.committed(entries, head: head, session: session))
        let isCommitted = Dictionary(uniqueKeysWithValues: entries.map { ($0.id, committed.contains($0)) })
        #expect(isCommitted == [ids[0]: true, ids[1]: true, ids[2]: true, beyond: false, fenced: false, lost: false])

        let checks = try await verifier.verify(session)
        #expect(checks.map(\.id) == ids)
        #expect(checks.allSatisfy { $0.isOK }, "\(checks)")
    }

    @Test func aSessionWithoutAHeadHasNothingToVerify() async throws {
        #expect(try await verifier.verify(session).isEmpty)
    }

    private func write(_ text: String, to name: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
    }
}
