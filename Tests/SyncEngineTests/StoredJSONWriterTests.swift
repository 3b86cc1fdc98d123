import Foundation
import SessionCrypto
@testable import SyncEngine
import Testing
import TestSupport

/// `StoredJSONWriter` stands in for `JSONEncoder` with `StoredJSON`'s settings on the documents
/// written at every upload: the same bytes, whatever the fields hold.
@Suite("StoredJSONWriter")
struct StoredJSONWriterTests {
    let encoder = StoredJSON.encoder()

    static func snapshotID(_ random: inout SplitMix64) -> SnapshotID {
        SnapshotID(
            sequence: ManifestLineTests.integer(UInt64.self, &random), generation: ManifestLineTests.integer(UInt64.self, &random),
            tag: .random())
    }

    /// From 1970 to 2100, with a fraction of a second (a writer's dates are its clock's now).
    static func date(_ random: inout SplitMix64) -> Date {
        Date(timeIntervalSince1970: [0, 59.999_999, 1_763_633_762.5, 4_102_444_799.999].randomElement(using: &random)!
            + Double.random(in: 0..<4_102_444_800, using: &random) * Double(Int.random(in: 0...1, using: &random)))
    }

    static func maybe<Value>(_ random: inout SplitMix64, _ make: (inout SplitMix64) -> Value) -> Value? {
        Bool.random(using: &random) ? make(&random) : nil
    }

    static func identity(_ random: inout SplitMix64) -> SessionIdentity {
        SessionIdentity(
            authState: [.valid, .missing, .unparsable, .incomplete].randomElement(using: &random)!,
            registered: .random(using: &random), fingerprint: maybe(&random) { ManifestLineTests.name(&$0) },
            keyID: maybe(&random) { ManifestLineTests.name(&$0) })
    }

    @Test func writesHeadsAsJSONEncoder() throws {
        var random = SplitMix64(seed: 0x4EAD)
        for _ in 0..<3_000 {
            var head = SessionHead(
                generation: ManifestLineTests.integer(UInt64.self, &random), owner: ManifestLineTests.name(&random),
                latest: Self.maybe(&random, Self.snapshotID), latestKind: Self.maybe(&random) { SnapshotKind.allCases.randomElement(using: &$0)! },
                base: Self.maybe(&random, Self.snapshotID), updatedAt: Self.date(&random),
                identityHold: Self.maybe(&random) { IdentityHold(snapshot: Self.snapshotID(&$0), since: Self.date(&$0)) })
            head.session = Self.maybe(&random) { ManifestLineTests.name(&$0) }
            head.agent = Self.maybe(&random) { ManifestLineTests.name(&$0) }
            head.released = Self.maybe(&random) { SessionHead.Release(snapshot: Self.maybe(&$0, Self.snapshotID), at: Self.date(&$0)) }
            head.formatVersion = Int.random(in: 2...4, using: &random)
            let expected = Array(try encoder.encode(head))
            #expect(head.encoded() == expected, "\(String(decoding: expected, as: UTF8.self))")
        }
    }

    @Test func writesManifestHeadersAsJSONEncoder() throws {
        var random = SplitMix64(seed: 0x4EAE)
        let key = EncryptionKey.generate()
        for _ in 0..<3_000 {
            let files = SessionState(
                Dictionary(uniqueKeysWithValues: (0..<Int.random(in: 0...3, using: &random)).map {
                    ("f\($0)", FileRecord(size: Int64($0), contentID: key.contentID(of: [UInt8($0)]), fingerprint: nil))
                }))
            var manifest = SnapshotManifest(
                session: ManifestLineTests.name(&random), id: Self.snapshotID(&random),
                kind: SnapshotKind.allCases.randomElement(using: &random)!, parent: Self.maybe(&random, Self.snapshotID),
                createdAt: Self.date(&random), files: files, deleted: (0..<Int.random(in: 0...2, using: &random)).map { "d\($0)" },
                stateFileCount: ManifestLineTests.integer(Int.self, &random), stateByteCount: ManifestLineTests.integer(Int64.self, &random),
                stateDigest: ManifestLineTests.name(&random), identity: Self.maybe(&random, Self.identity))
            manifest.formatVersion = Int.random(in: 2...4, using: &random)
            let header = ManifestJSON.Header(
                formatVersion: manifest.formatVersion, session: manifest.session, id: manifest.id, kind: manifest.kind,
                parent: manifest.parent, createdAt: manifest.createdAt, fileCount: manifest.files.count,
                deletedCount: manifest.deleted.count, stateFileCount: manifest.stateFileCount,
                stateByteCount: manifest.stateByteCount, stateDigest: manifest.stateDigest, identity: manifest.identity)
            var json = StoredJSONWriter()
            ManifestJSON.writeHeader(of: manifest, to: &json)
            let expected = Array(try encoder.encode(header))
            #expect(json.bytes == expected, "\(String(decoding: expected, as: UTF8.self))")
        }
    }
}
