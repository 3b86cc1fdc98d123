import SessionCrypto
import Foundation
import Glibc
@testable import SyncEngine
import TestSupport
import Testing

/// The manifest's JSON Lines: written and read back a line at a time, in the bytes FORMAT.md
/// spells, and refused whole when any line is missing, extra, out of place or malformed.
@Suite("ManifestJSON")
struct ManifestJSONTests {
    let key = EncryptionKey.generate()

    /// Names a line must carry intact: slashes, quotes, backslashes, control characters
    /// (a newline among them), non-ASCII and names that sort differently as bytes and as text.
    static let awkwardNames = [
        "creds.json", "keys/a.json", "A.json", "pre-key-10.json", "pre-key-9.json", "é.json", "日本.json", "🙂",
        #"quote"q.json"#, #"back\slash"#, "tab\there", "line\nbreak", "ctl\u{1}\u{1f}\u{7f}", "b\u{8}f\u{c}r\r",
        "\u{2028}\u{2029}",
    ]

    func files(count: Int) -> [String: FileRecord] {
        var files: [String: FileRecord] = [:]
        for (index, name) in (Self.awkwardNames + (0..<count).map { "app-state-sync-key-\($0).json" }).enumerated() {
            let fingerprint =
                index % 3 == 0
                ? nil
                : FileState(
                    size: Int64(index), mode: 0o600, modificationTime: -1_700_000_000_123_456_789 + Int64(index),
                    inode: UInt64.max - UInt64(index), device: UInt64(index) << 40)
            files[name] = FileRecord(size: Int64(index) * 1000, contentID: key.contentID(of: Array(name.utf8)), fingerprint: fingerprint)
        }
        return files
    }

    func manifest(delta: Bool, fileCount: Int) -> SnapshotManifest {
        let state = SessionState(files(count: fileCount))
        return SnapshotManifest(
            session: "session-1", id: SnapshotID(sequence: 42, generation: 3, tag: .random()), kind: delta ? .delta : .base,
            parent: delta ? SnapshotID(sequence: 41, generation: 2, tag: .random()) : nil,
            createdAt: Date(timeIntervalSince1970: 1_763_000_000), files: state,
            deleted: delta ? ["\"odd\"/\u{2}", "gone.json", "line\nbreak-gone", "sub/gone"] : [], stateFileCount: state.count,
            stateByteCount: state.byteCount, stateDigest: state.digest(formatVersion: SnapshotManifest.currentFormatVersion))
    }

    func encoded(_ manifest: SnapshotManifest) throws -> [UInt8] {
        var bytes: [UInt8] = []
        try ManifestJSON.write(manifest) { bytes += $0 }
        #expect(try ManifestJSON.byteCount(of: manifest) == Int64(bytes.count))
        return bytes
    }

    func expectSame(_ decoded: SnapshotManifest, _ expected: SnapshotManifest) {
        #expect(decoded.formatVersion == expected.formatVersion)
        #expect(decoded.session == expected.session)
        #expect(decoded.id == expected.id)
        #expect(decoded.kind == expected.kind)
        #expect(decoded.parent == expected.parent)
        #expect(decoded.createdAt == expected.createdAt)
        #expect(decoded.files.names == expected.files.names)
        for ((name, record), (_, expectedRecord)) in zip(decoded.files, expected.files) { #expect(record == expectedRecord, "\(name)") }
        #expect(decoded.deleted == expected.deleted)
        #expect(decoded.stateFileCount == expected.stateFileCount)
        #expect(decoded.stateByteCount == expected.stateByteCount)
        #expect(decoded.stateDigest == expected.stateDigest)
    }

    /// Many files, so the writer flushes and the reader refills several times, and lines cross
    /// the reader's buffer.
    @Test(arguments: [false, true])
    func roundTripsALineAFile(delta: Bool) throws {
        let expected = manifest(delta: delta, fileCount: 3000)
        let bytes = try encoded(expected)
        #expect(bytes.count > 2 * ManifestJSON.chunkSize)
        expectSame(try SnapshotManifest.decode(bytes), expected)

        // No name put a raw newline in its line: one line for the header, each file and each deleted name.
        #expect(bytes.last == UInt8(ascii: "\n"))
        let lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == 1 + expected.files.count + expected.deleted.count)
        // Every line is a JSON object on its own, the header's formatVersion readable alone.
        for line in lines { #expect(try JSONSerialization.jsonObject(with: Data(line)) is [String: Any]) }
        let header = try #require(try JSONSerialization.jsonObject(with: Data(lines[0])) as? [String: Any])
        #expect(header["formatVersion"] as? Int == 4)
        #expect(header["fileCount"] as? Int == expected.files.count)
        #expect(header["deletedCount"] as? Int == expected.deleted.count)
    }

    /// The bytes of FORMAT.md's example delta (its shortened digest and content id spelled out),
    /// with a fingerprint as the writer takes it from a file on disk: permission bits only.
    @Test func writesTheDocumentedLines() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("manifest-\(UUID().uuidString)").path
        #expect(FileManager.default.createFile(atPath: path, contents: Data("abc".utf8), attributes: [.posixPermissions: 0o600]))
        defer { try? FileManager.default.removeItem(atPath: path) }
        var status = stat()
        #expect(lstat(path, &status) == 0)
        var fingerprint = FileState(status)
        (fingerprint.modificationTime, fingerprint.inode, fingerprint.device) = (1_763_633_730_123_456_789, 393_221, 2049)
        let record = FileRecord(size: 3, contentID: ContentID(hex: String(repeating: "ab", count: 32))!, fingerprint: fingerprint)
        let manifest = SnapshotManifest(
            session: "s", id: SnapshotID(sequence: 2, generation: 1, tag: SnapshotTag("0e9d4c1b2a3f5867")!), kind: .delta,
            parent: SnapshotID(sequence: 1, generation: 1, tag: SnapshotTag("5f0c3a9e7d21b846")!),
            createdAt: Date(timeIntervalSince1970: 1_763_633_762), files: SessionState(["keys/a\n.json": record]),
            deleted: ["old.json"], stateFileCount: 1, stateByteCount: 3, stateDigest: String(repeating: "0", count: 64))
        let format = try String(contentsOfFile: Fixtures.path("../FORMAT.md"), encoding: .utf8)
        let example = try #require(format.firstMatch(of: /For example, a delta with one file changed[^`]*```\n([^`]*)```/)?.output.1)
        let expected = String(example)
            .replacingOccurrences(of: "00…00", with: String(repeating: "0", count: 64))
            .replacingOccurrences(of: "abab…abab", with: String(repeating: "ab", count: 32))
        #expect(String(decoding: try encoded(manifest), as: UTF8.self) == expected)
    }

    /// Keys in any order, whitespace around them, escapes JSONEncoder never writes, keys a later
    /// format may add: whatever JSONDecoder takes as the line's object.
    @Test func readsAnyJSONOfTheLinesShape() throws {
        let expected = manifest(delta: true, fileCount: 50)
        var text = String(decoding: try encoded(expected), as: UTF8.self)
        text = text.replacingOccurrences(of: #""name":"creds.json""#, with: #" "extra" : [1, {"a": null}] , "name" : "cr\u0065ds.json""#)
        text = text.replacingOccurrences(of: #""🙂""#, with: #""\ud83d\ude42""#)
        text = text.replacingOccurrences(of: #"keys\/a.json"#, with: "keys/a.json")
        expectSame(try SnapshotManifest.decode(Array(text.utf8)), expected)
    }

    @Test func refusesEveryTruncation() throws {
        let bytes = try encoded(manifest(delta: true, fileCount: 3))
        for length in 0..<bytes.count {
            #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(Array(bytes[..<length])) }
        }
    }

    @Test func refusesMalformedManifests() throws {
        let bytes = try encoded(manifest(delta: true, fileCount: 3))
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        func joined(_ lines: [String]) -> String { lines.map { $0 + "\n" }.joined() }
        // lines[0] is the header, 1...18 the files (15 awkward names and 3 more), 19...22 the deleted names.
        #expect(lines.count == 23)
        let broken = [
            text + lines[1] + "\n",
            text + "\n",
            text + "x",
            joined(lines.enumerated().map { $0.offset == 3 ? lines[2] : $0.element }),
            joined(lines.enumerated().map { $0.offset == 2 ? lines[3] : $0.offset == 3 ? lines[2] : $0.element }),
            joined(lines.enumerated().map { $0.offset == 20 ? lines[19] : $0.element }),
            joined(lines.enumerated().map { $0.offset == 19 ? lines[20] : $0.offset == 20 ? lines[19] : $0.element }),
            joined(Array(lines[..<19]) + Array(lines[20...])),
            joined(lines.enumerated().map { $0.offset == 19 ? lines[2] : $0.element }),
            joined(lines.enumerated().map { $0.offset == 2 ? lines[2].replacingOccurrences(of: #""name":"#, with: #""nam":"#) : $0.element }),
            joined(lines.enumerated().map { $0.offset == 2 ? lines[2].replacingOccurrences(of: "}", with: "}}") : $0.element }),
            joined(lines.enumerated().map { $0.offset == 2 ? "[" + lines[2] + "]" : $0.element }),
            text.replacingOccurrences(of: "\n", with: "\r"),
            text.replacingOccurrences(of: #""fileCount":18"#, with: #""fileCount":17"#),
            text.replacingOccurrences(of: #""fileCount":18"#, with: #""fileCount":19"#),
            text.replacingOccurrences(of: #""fileCount":18"#, with: #""fileCount":-1"#),
            text.replacingOccurrences(of: #""deletedCount":4"#, with: #""deletedCount":3"#),
            text.replacingOccurrences(of: #""deletedCount":4"#, with: #""deletedCount":5"#),
            text.replacingOccurrences(of: #""formatVersion":4"#, with: #""formatVersion":2.5"#),
            text.replacingOccurrences(of: #""stateFileCount""#, with: #""stateFileCounts""#),
            text.replacingOccurrences(of: #""kind":"delta""#, with: #""kind":"other""#),
            text.replacingOccurrences(of: #""🙂""#, with: #""\ud83d""#),
            text.replacingOccurrences(of: #""sequence":42"#, with: #""sequence":-42"#),
            text.replacingOccurrences(of: #""sequence":42"#, with: #""sequence":99999999999999999999"#),
            text.replacingOccurrences(of: #""createdAt":"2025"#, with: #""createdAt":"x2025"#),
            // The manifest as one JSON document, as this format's unshipped predecessor wrote it.
            #"{"createdAt":"2025-11-20T10:20:00Z","deleted":[],"files":{},"formatVersion":2,"id":{"generation":2,"sequence":3,"tag":"c47a19e0d3b65f28"},"kind":"tombstone","session":"small","stateByteCount":0,"stateDigest":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","stateFileCount":0}"#,
        ]
        for variant in broken {
            #expect(variant != text)
            #expect(throws: SnapshotError.self, "\(variant)") { try SnapshotManifest.decode(Array(variant.utf8)) }
        }
        #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(bytes + [0xff]) }
        lines[2].insert(contentsOf: String(repeating: " ", count: ManifestJSON.maxLineLength), at: lines[2].index(after: lines[2].startIndex))
        #expect(throws: SnapshotError.corrupt("the manifest does not parse: line 3 is longer than 65536 bytes")) {
            try SnapshotManifest.decode(Array(joined(lines).utf8))
        }
        // A bomb of one endless line is refused after a line's worth, not read whole.
        #expect(throws: SnapshotError.corrupt("the manifest does not parse: line 1 is longer than 65536 bytes")) {
            try SnapshotManifest.decode([UInt8](repeating: UInt8(ascii: "["), count: 10 << 20))
        }
        #expect(throws: SnapshotError.unsupportedFormat("the manifest has unsupported format version 5 (this sync-agent reads versions 2 to 4)")) {
            try SnapshotManifest.decode(Array(text.replacingOccurrences(of: #""formatVersion":4"#, with: #""formatVersion":5"#).utf8))
        }
        // Versions 2 and 3, as a session moved from a store of version 2 keeps its snapshots and
        // a chain of version 3 goes on in 4: read.
        for version in [2, 3] {
            #expect(throws: Never.self) {
                try SnapshotManifest.decode(Array(text.replacingOccurrences(of: #""formatVersion":4"#, with: #""formatVersion":\#(version)"#).utf8))
            }
        }
    }

    /// The fuzzer's manifest corpus: each input is a manifest or an error, never a crash; the
    /// named seeds are manifests of this format.
    @Test func readsTheFuzzCorpus() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("fixtures/fuzz/manifest")
        let names = try FileManager.default.contentsOfDirectory(atPath: corpus.path)
        for seed in ["base.json", "delta.json", "tombstone.json"] { #expect(names.contains(seed)) }
        for name in names {
            let bytes = [UInt8](try Data(contentsOf: corpus.appendingPathComponent(name)))
            guard let manifest = try? SnapshotManifest.decode(bytes) else {
                #expect(!name.hasSuffix(".json"), "seed \(name) does not decode")
                continue
            }
            _ = manifest.applied(to: manifest.files)
        }
    }
}
