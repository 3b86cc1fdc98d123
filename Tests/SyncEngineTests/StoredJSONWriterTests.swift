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

    /// Mostly from 1970 to 2100 with a fraction of a second (a writer's dates are its clock's
    /// now), and dates where rounding or the calendar could go wrong: a fraction just below a
    /// second (1 − 2⁻²³ after a second of 2025, which the seconds since 1970 as a Double round
    /// up), before 1970, before the Gregorian calendar (1583), after year 9999.
    static func date(_ random: inout SplitMix64) -> Date {
        switch Int.random(in: 0..<4, using: &random) {
        case 0:
            let edges: [Date] = [
                Date(timeIntervalSinceReferenceDate: 786_000_000 + (1 - 0x1p-23)), Date(timeIntervalSince1970: -0.5),
                Date(timeIntervalSince1970: -86_400.25), Date(timeIntervalSince1970: -12_219_292_800.5),
                Date(timeIntervalSince1970: -12_219_292_799), Date(timeIntervalSince1970: 253_402_300_799.75),
                Date(timeIntervalSince1970: 253_402_300_800), Date(timeIntervalSince1970: -62_135_596_800),
            ]
            return edges.randomElement(using: &random)!
        case 1:
            return Date(timeIntervalSince1970: Double.random(in: -20_000_000_000...300_000_000_000, using: &random))
        default:
            return Date(timeIntervalSince1970: Double.random(in: 0..<4_102_444_800, using: &random))
        }
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
        for _ in 0..<1_000 {
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

    /// Every stored property of every type written, in what the writer writes with every
    /// optional set: a field added to one of these types and not to `StoredJSONWriter` (which
    /// JSONEncoder and the writer would then both leave out of the tests above) fails here.
    @Test func writesEveryField() throws {
        func expectEveryField(of value: some Encodable, count: Int, writtenAs written: [UInt8]) throws {
            #expect(Mirror(reflecting: value).children.count == count, "a field was added to \(type(of: value)): write it in StoredJSONWriter")
            let expected = try #require(try JSONSerialization.jsonObject(with: try encoder.encode(value)) as? [String: Any])
            let ours = try #require(try JSONSerialization.jsonObject(with: Data(written)) as? [String: Any])
            #expect(expected.count == count)
            #expect(Set(ours.keys) == Set(expected.keys))
        }
        var random = SplitMix64(seed: 0x4EAF)
        let id = Self.snapshotID(&random)
        func written(_ write: (inout StoredJSONWriter) -> Void) -> [UInt8] {
            var json = StoredJSONWriter()
            write(&json)
            return json.bytes
        }
        try expectEveryField(of: id, count: 3, writtenAs: written { id.write(to: &$0) })
        let identity = SessionIdentity(authState: .valid, registered: true, fingerprint: "f", keyID: "k")
        try expectEveryField(of: identity, count: 4, writtenAs: written { identity.write(to: &$0) })

        var head = SessionHead(
            generation: 1, owner: "o", latest: id, latestKind: .delta, base: id, updatedAt: Date(),
            identityHold: IdentityHold(snapshot: id, since: Date()))
        head.session = "s"
        head.agent = "a"
        head.released = SessionHead.Release(snapshot: id, at: Date())
        try expectEveryField(of: head, count: 11, writtenAs: head.encoded())
        let members = try #require(try JSONSerialization.jsonObject(with: Data(head.encoded())) as? [String: Any])
        #expect(Mirror(reflecting: head.released!).children.count == 2 && (members["released"] as? [String: Any])?.count == 2)
        #expect(Mirror(reflecting: head.identityHold!).children.count == 2 && (members["identityHold"] as? [String: Any])?.count == 2)

        let contentID = EncryptionKey.generate().contentID(of: [1])
        let state = SessionState(["f": FileRecord(size: 1, contentID: contentID, fingerprint: nil)])
        let manifest = SnapshotManifest(
            session: "s", id: id, kind: .delta, parent: id, createdAt: Date(), files: state, deleted: ["d"],
            stateFileCount: 1, stateByteCount: 1, stateDigest: "0", identity: identity)
        let header = ManifestJSON.Header(
            formatVersion: manifest.formatVersion, session: manifest.session, id: manifest.id, kind: manifest.kind,
            parent: manifest.parent, createdAt: manifest.createdAt, fileCount: 1, deletedCount: 1, stateFileCount: 1,
            stateByteCount: 1, stateDigest: "0", identity: identity)
        try expectEveryField(of: header, count: 12, writtenAs: written { ManifestJSON.writeHeader(of: manifest, to: &$0) })

        let fingerprint = FileState(size: 1, mode: 0o600, modificationTime: 2, inode: 3, device: 4)
        let line = ManifestJSON.FileLine(name: "n", size: 1, contentID: contentID, fingerprint: fingerprint)
        let record = FileRecord(size: line.size, contentID: line.contentID, fingerprint: fingerprint)
        try expectEveryField(of: line, count: 4, writtenAs: written { ManifestLine.writeFile(name: "n", record: record, to: &$0) })
        #expect(Mirror(reflecting: record).children.count == 3)
        let lineMembers = try #require(
            try JSONSerialization.jsonObject(with: Data(written { ManifestLine.writeFile(name: "n", record: record, to: &$0) })) as? [String: Any])
        #expect(Mirror(reflecting: fingerprint).children.count == 5 && (lineMembers["fingerprint"] as? [String: Any])?.count == 5)
        let deleted = ManifestJSON.DeletedLine(deleted: "d")
        try expectEveryField(of: deleted, count: 1, writtenAs: written { ManifestLine.writeDeleted(name: "d", to: &$0) })
    }

    @Test func writesManifestHeadersAsJSONEncoder() throws {
        var random = SplitMix64(seed: 0x4EAE)
        let key = EncryptionKey.generate()
        for _ in 0..<1_000 {
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
