import Crypto
import Foundation
@testable import SyncEngine
import Testing

/// The manifest's own JSON writer and reader against JSONEncoder, which wrote every manifest
/// before them: the same bytes out, and whatever JSON of that shape back in.
@Suite("ManifestJSON")
struct ManifestJSONTests {
    let key = EncryptionKey.generate()

    /// The manifest as JSONEncoder saw it (the Codable shape it had).
    struct CodableManifest: Codable {
        var formatVersion = SnapshotManifest.currentFormatVersion
        var session: String
        var id: SnapshotID
        var kind: SnapshotKind
        var parent: SnapshotID?
        var createdAt: Date
        var files: [String: FileRecord]
        var deleted: [String]
        var stateFileCount: Int
        var stateByteCount: Int64
        var stateDigest: String
    }

    func codable(parent: Bool, fileCount: Int) -> CodableManifest {
        var files: [String: FileRecord] = [:]
        let tricky = [
            "creds.json", "keys/a.json", "A.json", "pre-key-10.json", "pre-key-9.json", "é.json", "日本.json", "🙂",
            #"quote"q.json"#, #"back\slash"#, "tab\there", "line\nbreak", "ctl\u{1}\u{1f}\u{7f}", "b\u{8}f\u{c}r\r",
        ]
        for (index, name) in (tricky + (0..<fileCount).map { "app-state-sync-key-\($0).json" }).enumerated() {
            let fingerprint =
                index % 3 == 0
                ? nil
                : FileState(
                    size: Int64(index), mode: 0o600, modificationTime: -1_700_000_000_123_456_789 + Int64(index),
                    inode: UInt64.max - UInt64(index), device: UInt64(index) << 40)
            files[name] = FileRecord(size: Int64(index) * 1000, contentID: key.contentID(of: Array(name.utf8)), fingerprint: fingerprint)
        }
        let state = SessionState(files)
        return CodableManifest(
            session: "session-1", id: SnapshotID(sequence: 42, generation: 3, tag: .random()), kind: parent ? .delta : .base,
            parent: parent ? SnapshotID(sequence: 41, generation: 2, tag: .random()) : nil,
            createdAt: Date(timeIntervalSince1970: 1_763_000_000), files: files,
            deleted: parent ? ["gone.json", "sub/gone", "\"odd\"/\u{2}"] : [], stateFileCount: state.count,
            stateByteCount: state.byteCount, stateDigest: state.digest)
    }

    func manifest(_ codable: CodableManifest) -> SnapshotManifest {
        SnapshotManifest(
            session: codable.session, id: codable.id, kind: codable.kind, parent: codable.parent, createdAt: codable.createdAt,
            files: SessionState(codable.files), deleted: codable.deleted, stateFileCount: codable.stateFileCount,
            stateByteCount: codable.stateByteCount, stateDigest: codable.stateDigest)
    }

    func encoded(_ manifest: SnapshotManifest) throws -> [UInt8] {
        var bytes: [UInt8] = []
        try ManifestJSON.write(manifest) { bytes += $0 }
        #expect(try ManifestJSON.byteCount(of: manifest) == Int64(bytes.count))
        return bytes
    }

    func jsonEncoder(_ formatting: JSONEncoder.OutputFormatting) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = formatting
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }

    func expectSame(_ decoded: SnapshotManifest, _ expected: CodableManifest) {
        #expect(decoded.formatVersion == expected.formatVersion)
        #expect(decoded.session == expected.session)
        #expect(decoded.id == expected.id)
        #expect(decoded.kind == expected.kind)
        #expect(decoded.parent == expected.parent)
        #expect(decoded.createdAt == expected.createdAt)
        #expect(decoded.files.names == expected.files.keys.sorted(by: SessionState.precedes))
        for (name, record) in decoded.files { #expect(expected.files[name] == record, "\(name)") }
        #expect(decoded.deleted == expected.deleted)
        #expect(decoded.stateFileCount == expected.stateFileCount)
        #expect(decoded.stateByteCount == expected.stateByteCount)
        #expect(decoded.stateDigest == expected.stateDigest)
    }

    /// Many files, so the writer flushes and the reader refills several times.
    @Test(arguments: [false, true])
    func writesJSONEncodersBytes(parent: Bool) throws {
        let expected = codable(parent: parent, fileCount: 3000)
        let bytes = try encoded(manifest(expected))
        #expect(bytes.count > 2 * ManifestJSON.chunkSize)
        #expect(bytes == Array(try jsonEncoder(.sortedKeys).encode(expected)))
        expectSame(try SnapshotManifest.decode(bytes), expected)
    }

    /// Keys in any order, whitespace, escapes JSONEncoder never writes, keys a later format may add.
    @Test func readsAnyJSONOfTheManifestsShape() throws {
        let expected = codable(parent: true, fileCount: 50)
        expectSame(try SnapshotManifest.decode(Array(try jsonEncoder(.prettyPrinted).encode(expected))), expected)
        expectSame(try SnapshotManifest.decode(Array(try jsonEncoder([.withoutEscapingSlashes]).encode(expected))), expected)

        var text = String(decoding: try encoded(manifest(expected)), as: UTF8.self)
        text = text.replacingOccurrences(of: #""creds.json""#, with: #""cr\u0065ds.json""#)
        text = text.replacingOccurrences(of: #""🙂""#, with: #""\ud83d\ude42""#)
        text = text.replacingOccurrences(of: #""formatVersion""#, with: #""later":{"a":[1,-2.5e3,true,false,null,"x"]},"formatVersion""#)
        expectSame(try SnapshotManifest.decode(Array(text.utf8)), expected)
    }

    @Test func refusesWhatIsNotAManifest() throws {
        let bytes = try encoded(manifest(codable(parent: true, fileCount: 3)))
        for length in 0..<bytes.count {
            #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(Array(bytes[..<length])) }
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let broken = [
            text + "x",
            text.replacingOccurrences(of: #""keys\/a.json""#, with: #""creds.json""#),
            text.replacingOccurrences(of: #""formatVersion":2"#, with: #""formatVersion":3"#),
            text.replacingOccurrences(of: #""formatVersion":2"#, with: #""formatVersion":2.5"#),
            text.replacingOccurrences(of: #""stateFileCount""#, with: #""stateFileCounts""#),
            text.replacingOccurrences(of: #""kind":"delta""#, with: #""kind":"other""#),
            text.replacingOccurrences(of: #""🙂""#, with: #""\ud83d""#),
            text.replacingOccurrences(of: #""sequence":42"#, with: #""sequence":-42"#),
            text.replacingOccurrences(of: #""sequence":42"#, with: #""sequence":99999999999999999999"#),
        ]
        for variant in broken {
            #expect(variant != text)
            #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(Array(variant.utf8)) }
        }
        #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(Array(bytes) + [0xff]) }
        #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(Array(String(repeating: "[", count: 100_000).utf8)) }
    }

    /// The fuzzer's manifest corpus: each input is a manifest or an error, never a crash.
    @Test func readsTheFuzzCorpus() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("fixtures/fuzz/manifest")
        let names = try FileManager.default.contentsOfDirectory(atPath: corpus.path)
        #expect(!names.isEmpty)
        for name in names {
            let bytes = [UInt8](try Data(contentsOf: corpus.appendingPathComponent(name)))
            guard let manifest = try? SnapshotManifest.decode(bytes) else { continue }
            _ = manifest.applied(to: manifest.files)
        }
    }
}
