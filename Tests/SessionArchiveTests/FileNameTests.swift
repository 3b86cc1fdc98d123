import SessionArchive
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

    @Test func randomBytesRoundTripAndDistinctBytesGiveDistinctNames() {
        var generator = SystemRandomNumberGenerator()
        var seen: [String: [UInt8]] = [:]
        for _ in 0..<5_000 {
            let bytes = (0..<Int.random(in: 1...12, using: &generator)).map { _ in
                // Mostly high bytes and 0xF4 sequences, where the escapes live.
                [UInt8.random(in: 1...255, using: &generator), 0xF4, 0x8F, 0xBF, 0x80][Int.random(in: 0...4, using: &generator)]
            }
            let name = FileName.decode(bytes)
            #expect(FileName.bytes(of: name) == bytes)
            if let earlier = seen[name] { #expect(earlier == bytes) }
            seen[name] = bytes
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
