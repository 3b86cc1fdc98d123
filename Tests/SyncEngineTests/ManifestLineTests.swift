import Foundation
import SessionCrypto
import SystemSupport
@testable import SyncEngine
import Testing
import TestSupport

/// `ManifestLine` against Foundation's coders, which it stands in for: its lines are
/// `JSONEncoder`'s bytes, and whatever line it reads, `JSONDecoder` reads the same.
@Suite("ManifestLine")
struct ManifestLineTests {
    let encoder = StoredJSON.encoder()
    let decoder = StoredJSON.decoder()

    /// Names of scalars drawn mostly from what JSON escapes or UTF-8 spells in several bytes.
    static func name(_ random: inout SplitMix64) -> String {
        let pool: [Unicode.Scalar] = [
            "a", "Z", "0", ".", "-", "/", "\\", "\"", " ", "\u{0}", "\u{1}", "\u{8}", "\u{9}", "\u{a}", "\u{b}", "\u{c}",
            "\u{d}", "\u{1f}", "\u{7f}", "\u{80}", "é", "\u{301}", "\u{2028}", "\u{2029}", "\u{fffd}", "\u{feff}", "日",
            "🙂", "\u{10ffff}", "\u{f8ff}",
        ]
        var name = String.UnicodeScalarView()
        for _ in 0..<Int.random(in: 0...12, using: &random) { name.append(pool.randomElement(using: &random)!) }
        return String(name)
    }

    static func integer<Value: FixedWidthInteger>(_: Value.Type, _ random: inout SplitMix64) -> Value {
        switch Int.random(in: 0..<4, using: &random) {
        case 0: [Value.min, Value.max, 0, 1].randomElement(using: &random)!
        case 1: Value.random(in: Value.min...Value.max, using: &random)
        default: Value(truncatingIfNeeded: Int.random(in: -1_000...1_000_000, using: &random))
        }
    }

    static func fileLine(_ random: inout SplitMix64) -> ManifestJSON.FileLine {
        var id: [UInt8] = []
        for _ in 0..<ContentID.byteCount { Hex.append(CollectionOfOne(UInt8.random(in: 0...255, using: &random)), to: &id) }
        let fingerprint = Bool.random(using: &random)
            ? nil
            : FileState(
                size: integer(Int64.self, &random), mode: integer(UInt32.self, &random),
                modificationTime: integer(Int64.self, &random), inode: integer(UInt64.self, &random),
                device: integer(UInt64.self, &random))
        return ManifestJSON.FileLine(
            name: name(&random), size: integer(Int64.self, &random),
            contentID: ContentID(hex: String(decoding: id, as: UTF8.self))!, fingerprint: fingerprint)
    }

    func ourFileLine(_ line: ManifestJSON.FileLine) -> [UInt8] {
        var json = StoredJSONWriter()
        ManifestLine.writeFile(
            name: line.name, record: FileRecord(size: line.size, contentID: line.contentID, fingerprint: line.fingerprint),
            to: &json)
        return json.bytes
    }

    /// Equal field by field, names by their scalars (String's == would take canonically
    /// equivalent names for one).
    func same(_ line: ManifestJSON.FileLine, _ other: ManifestJSON.FileLine) -> Bool {
        Array(line.name.unicodeScalars) == Array(other.name.unicodeScalars) && line.size == other.size
            && line.contentID == other.contentID && line.fingerprint == other.fingerprint
    }

    @Test func writesWhatJSONEncoderWrites() throws {
        var random = SplitMix64(seed: 0x11E5)
        for _ in 0..<2_000 {
            let line = Self.fileLine(&random)
            let expected = Array(try encoder.encode(line))
            #expect(ourFileLine(line) == expected, "\(String(decoding: expected, as: UTF8.self))")

            var deleted = StoredJSONWriter()
            ManifestLine.writeDeleted(name: line.name, to: &deleted)
            #expect(deleted.bytes == Array(try encoder.encode(ManifestJSON.DeletedLine(deleted: line.name))))
        }
    }

    @Test func readsItsOwnLinesAsJSONDecoderDoes() throws {
        var random = SplitMix64(seed: 0x11E6)
        for _ in 0..<2_000 {
            let line = Self.fileLine(&random)
            let bytes = ourFileLine(line)
            let parsed = bytes.withUnsafeBytes(ManifestLine.parseFile)
            // A name with a control character JSON has no short escape for is written `\u00xx`,
            // which the reader leaves to JSONDecoder.
            let leftToJSONDecoder = line.name.unicodeScalars.contains { $0.value < 0x20 && ![8, 9, 10, 12, 13].contains($0.value) }
            var deleted = StoredJSONWriter()
            ManifestLine.writeDeleted(name: line.name, to: &deleted)
            let parsedDeleted = deleted.bytes.withUnsafeBytes(ManifestLine.parseDeleted)
            if leftToJSONDecoder {
                #expect(parsed == nil)
                #expect(parsedDeleted == nil)
            } else {
                let parsed = try #require(parsed, "\(String(decoding: bytes, as: UTF8.self))")
                #expect(same(parsed, line))
                #expect(parsedDeleted.map { Array($0.deleted.unicodeScalars) } == Array(line.name.unicodeScalars))
            }
        }
    }

    /// Lines changed a byte or a piece at a time (into other JSON, or into no JSON at all):
    /// whatever the reader still takes, JSONDecoder takes as the same line.
    @Test func takesNoLineJSONDecoderReadsOtherwiseOrRefuses() throws {
        var random = SplitMix64(seed: 0x11E7)
        let pieces = [
            " ", "\\", "\"", "\\u0041", "-", "0", "00", "9999999999999999999999", ".5", "e3", "}", "{", ",", ":", "null",
            "A", "\u{1}", "\"x\":1,",
        ].map { Array($0.utf8) }
        var taken = 0
        var takenDeleted = 0
        for round in 0..<8_000 {
            let line = Self.fileLine(&random)
            var bytes = ourFileLine(line)
            if round % 2 == 1 {
                var deleted = StoredJSONWriter()
                ManifestLine.writeDeleted(name: line.name, to: &deleted)
                bytes = deleted.bytes
            }
            for _ in 0..<Int.random(in: 1...3, using: &random) {
                let at = Int.random(in: 0...bytes.count, using: &random)
                switch Int.random(in: 0..<4, using: &random) {
                case 0 where at < bytes.count: bytes.remove(at: at)
                case 1 where at < bytes.count: bytes[at] = .random(in: 0...255, using: &random)
                case 2 where at < bytes.count: bytes[at] = bytes[at] ^ 0x20  // letter case, hex digits among them
                default: bytes.insert(contentsOf: pieces.randomElement(using: &random)!, at: at)
                }
            }
            if let parsed = bytes.withUnsafeBytes(ManifestLine.parseFile) {
                taken += 1
                let decoded = try? decoder.decode(ManifestJSON.FileLine.self, from: Data(bytes))
                #expect(decoded.map { same($0, parsed) } == true, "\(String(decoding: bytes, as: UTF8.self))")
            }
            if let parsed = bytes.withUnsafeBytes(ManifestLine.parseDeleted) {
                takenDeleted += 1
                let decoded = try? decoder.decode(ManifestJSON.DeletedLine.self, from: Data(bytes))
                #expect(
                    decoded.map { Array($0.deleted.unicodeScalars) == Array(parsed.deleted.unicodeScalars) } == true,
                    "\(String(decoding: bytes, as: UTF8.self))")
            }
        }
        // Enough of the changed lines were still taken for the comparison to mean something.
        #expect(taken > 60)
        #expect(takenDeleted > 60)

        for text in [
            #"{"deleted":"a\/b"}"#, #"{"deleted":"a/b"}"#, #"{"deleted":"\""}"#, #"{"deleted":""}"#, #"{"deleted":"a" }"#,
            #"{"deleted":"a","x":1}"#, #"{"deleted":"\u0061"}"#, "{\"deleted\":\"\u{1}\"}", #"{"deleted":"a\"#,
            #"{"deleted":1}"#,
        ] {
            let bytes = Array(text.utf8)
            guard let parsed = bytes.withUnsafeBytes(ManifestLine.parseDeleted) else { continue }
            let decoded = try? decoder.decode(ManifestJSON.DeletedLine.self, from: Data(bytes))
            #expect(decoded.map { Array($0.deleted.unicodeScalars) == Array(parsed.deleted.unicodeScalars) } == true, "\(text)")
        }
        var invalidUTF8 = Array(#"{"deleted":"a"#.utf8) + [0xff] + Array(#""}"#.utf8)
        #expect(invalidUTF8.withUnsafeBytes(ManifestLine.parseDeleted) == nil)
        invalidUTF8 = Array(#"{"deleted":"a\n"#.utf8) + [0xc3] + Array(#""}"#.utf8)
        #expect(invalidUTF8.withUnsafeBytes(ManifestLine.parseDeleted) == nil)
    }
}
