import SessionArchive
import TestSupport
import Testing

@Suite struct FileNameTests {
    @Test func validUTF8NamesAreTheirOwnStrings() {
        for name in ["creds.json", "pre-key-1.json", "é.json", "line\nbreak", "日本語", "\u{10FF7F}"] {
            #expect(FileName.decode(Array(name.utf8)) == name)
            #expect(FileName.bytes(of: name) == Array(name.utf8))
        }
    }

    @Test func invalidBytesAndEscapeLookalikesRoundTrip() {
        let samples: [[UInt8]] = [
            [0xFF], [0x61, 0xC3], [0xC3, 0x28], [0xED, 0xA0, 0x80], [0xC0, 0xAF], [0xF4, 0x90, 0x80, 0x80],
            Array("\u{10FF80}".utf8), Array("a\u{10FFFF}b".utf8), [0xF4, 0x8F, 0xBE], [0x80, 0x80, 0x80],
        ]
        for bytes in samples {
            let name = FileName.decode(bytes)
            #expect(FileName.bytes(of: name) == bytes, "\(bytes)")
            #expect(!name.unicodeScalars.contains("\u{FFFD}"))
        }
    }

    /// Distinct bytes give names of distinct scalars. Names are compared by their scalars, as the
    /// engine keys them (by bytes): Swift's `String` equality merges canonically equivalent names,
    /// such as U+0300 and U+0340 after the same byte ([0x8F, 0xCC, 0x80] and [0x8F, 0xCD, 0x80]),
    /// which a random run once drew.
    @Test func randomBytesRoundTripAndDistinctBytesGiveDistinctNames() {
        var generator = SplitMix64(seed: 16)
        var seen: [[Unicode.Scalar]: [UInt8]] = [:]
        for bytes: [UInt8] in [[0x8F, 0xCC, 0x80], [0x8F, 0xCD, 0x80]] {
            let name = FileName.decode(bytes)
            #expect(FileName.bytes(of: name) == bytes)
            seen[Array(name.unicodeScalars)] = bytes
        }
        #expect(seen.count == 2)
        for _ in 0..<20_000 {
            let bytes = (0..<Int.random(in: 1...12, using: &generator)).map { _ in
                // Mostly high bytes and 0xF4 sequences, where the escapes live.
                [UInt8.random(in: 1...255, using: &generator), 0xF4, 0x8F, 0xBF, 0x80][Int.random(in: 0...4, using: &generator)]
            }
            let name = FileName.decode(bytes)
            #expect(FileName.bytes(of: name) == bytes)
            if let earlier = seen[Array(name.unicodeScalars)] { #expect(earlier == bytes) }
            seen[Array(name.unicodeScalars)] = bytes
        }
    }

    @Test func platformPathsCarryTheRawBytes() {
        let bytes: [UInt8] = [0x64, 0x2F, 0xFF, 0x2E, 0x6A]
        let passed = FileName.withPlatformPath(FileName.decode(bytes)) { pointer in
            (0..<bytes.count + 1).map { UInt8(bitPattern: pointer[$0]) }
        }
        #expect(passed == bytes + [0])
    }

    @Test func displayedNamesCannotForgeLogLines() {
        #expect(FileName.displayed("creds.json") == "creds.json")
        #expect(FileName.displayed("a\nb") == "a\\nb")
        #expect(FileName.displayed(FileName.decode([0x61, 0xFF])) == "a\\xff")
        #expect(FileName.displayed("back\\slash") == "back\\\\slash")
        #expect(FileName.displayed("é") == "é")
        // A line already showing a name escaped keeps its backslashes, and still gets no break.
        let line = "open \(FileName.displayed(FileName.decode([0x61, 0xFF]))) failed\nFAKE"
        #expect(FileName.displayed(line, escapingBackslashes: false) == "open a\\xff failed\\nFAKE")
    }
}
