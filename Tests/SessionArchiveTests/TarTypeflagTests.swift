import Foundation
@testable import SessionArchive
import SessionCrypto
import SystemSupport
import Testing

/// What the reader makes of each tar typeflag, as FORMAT.md ("What the reader rejects") states
/// it: our writer only emits `0` (and `x`), but a reader written from the document must know
/// which other typeflags ours refuses and which it takes as regular files.
@Suite struct TarTypeflagTests {
    enum Outcome: Equatable {
        case file
        case directory
        case refused(ArchiveError.Reason)
    }

    static let expected: [(typeflag: UInt8, outcome: Outcome)] = [
        (UInt8(ascii: "0"), .file),
        (0, .file),  // the old regular-file typeflag
        (UInt8(ascii: "7"), .file),  // contiguous file
        (UInt8(ascii: "S"), .file),  // GNU sparse file
        (UInt8(ascii: "8"), .file),  // unrecognised: POSIX says regular file
        (UInt8(ascii: "Z"), .file),
        (UInt8(ascii: "5"), .directory),
        (UInt8(ascii: "D"), .directory),  // GNU dump directory
        (UInt8(ascii: "1"), .refused(.forbiddenEntryType("hard link"))),
        (UInt8(ascii: "2"), .refused(.forbiddenEntryType("symbolic link"))),
        (UInt8(ascii: "3"), .refused(.forbiddenEntryType("character device"))),
        (UInt8(ascii: "4"), .refused(.forbiddenEntryType("block device"))),
        (UInt8(ascii: "6"), .refused(.forbiddenEntryType("FIFO"))),
        (UInt8(ascii: "M"), .refused(.forbiddenEntryType("unknown"))),  // GNU multi-volume continuation
        (UInt8(ascii: "V"), .refused(.corrupt)),  // GNU volume header: its data is read as the next header
        (UInt8(ascii: "A"), .refused(.corrupt)),  // Solaris ACL
        (UInt8(ascii: "X"), .refused(.corrupt)),  // Solaris extended header
    ]

    @Test(arguments: Self.expected.indices)
    func typeflagIsReadAsFormatSays(index: Int) throws {
        let (typeflag, expected) = Self.expected[index]
        // Links and directories carry no data (libarchive finds one that does corrupt).
        let contents = Array("1250D".utf8).contains(typeflag) ? [] : Array("hello".utf8)
        let data = contents.isEmpty ? [] : contents + [UInt8](repeating: 0, count: 512 - contents.count)
        let linkname = Array("12".utf8).contains(typeflag) ? "creds.json" : ""
        let tar = Self.header(name: "entry", typeflag: typeflag, size: contents.count, linkname: linkname) + data + [UInt8](repeating: 0, count: 1024)
        let reader = try ArchiveReader(source: BufferSource(try Self.zstd(tar)))
        var outcome: Outcome?
        do {
            try reader.forEachEntry { entry, _ in
                if outcome == nil { outcome = entry.kind == .file ? .file : .directory }
            }
        } catch let error as ArchiveError {
            outcome = .refused(error.reason)
        }
        #expect(outcome == expected, "typeflag \(typeflag)")
    }

    /// A ustar header as FORMAT.md's table spells it, with the given typeflag.
    static func header(name: String, typeflag: UInt8, size: Int, linkname: String) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, at offset: Int) { block.replaceSubrange(offset..<offset + text.utf8.count, with: text.utf8) }
        put(name, at: 0)
        put("000600 \0", at: 100)
        put("000000 \0", at: 108)
        put("000000 \0", at: 116)
        put(String(repeating: "0", count: 11 - String(size, radix: 8).count) + String(size, radix: 8) + " ", at: 124)
        put("00000000000 ", at: 136)
        block[156] = typeflag
        put(linkname, at: 157)
        put("ustar\0", at: 257)
        put("00", at: 263)
        put("000000 \0", at: 329)
        put("000000 \0", at: 337)
        put("        ", at: 148)
        let checksum = String(block.reduce(0) { $0 + Int($1) }, radix: 8)
        put(String(repeating: "0", count: 6 - checksum.count) + checksum + "\0 ", at: 148)
        return block
    }

    /// Compressed by the zstd CLI, an encoder independent of ours.
    static func zstd(_ bytes: [UInt8]) throws -> [UInt8] {
        let input = FileManager.default.temporaryDirectory.appendingPathComponent("typeflag-\(UUID().uuidString).tar")
        try Data(bytes).write(to: input)
        defer { try? FileManager.default.removeItem(at: input) }
        return [UInt8](try programOutput("/usr/bin/zstd", ["-q", "-c", input.path]))
    }
}
