import Crypto
import Foundation
import Glibc
@testable import SessionArchive
import XCTest

final class HostileArchiveTests: XCTestCase {
    static let expectedRefusals: [(fixture: String, reason: ArchiveError.Reason, entry: String?)] = [
        ("traversal.tar.zst", .unsafePath, "../escaped.txt"),
        ("traversal-nested.tar.zst", .unsafePath, "keys/../../escaped.txt"),
        ("absolute.tar.zst", .unsafePath, "/tmp/sync-agent-fixture-absolute.txt"),
        ("symlink.tar.zst", .forbiddenEntryType("symbolic link"), "link"),
        ("hardlink.tar.zst", .forbiddenEntryType("hard link"), "passwd"),
        ("chardev.tar.zst", .forbiddenEntryType("character device"), "null"),
        ("blockdev.tar.zst", .forbiddenEntryType("block device"), "sda"),
        ("fifo.tar.zst", .forbiddenEntryType("FIFO"), "pipe"),
        ("duplicate.tar.zst", .duplicateEntry, "creds.json"),
        ("file-then-child.tar.zst", .duplicateEntry, "creds.json/escaped.txt"),
        ("bomb-entry.tar.zst", .entryTooLarge(limit: 64 << 20), "zeros-00.bin"),
        ("bomb-total.tar.zst", .totalSizeExceeded(limit: 1 << 30), "zeros-16.bin"),
        ("truncated.tar.zst", .truncated, nil),
        ("missing-end-marker.tar.zst", .truncated, nil),
        ("plain.tar", .unsupportedFormat, nil),
    ]

    func testEveryHostileArchiveIsRefusedAndChangesNothing() throws {
        let root = try makeTemporaryDirectory(for: self)
        let parent = root + "/sessions"
        let target = parent + "/account"
        try writeTree(["creds.json": Array("{\"old\":true}".utf8), "pre-key-1.json": [1, 2, 3]], at: target)
        let before = try TreeSnapshot(target)

        for (fixture, reason, entry) in Self.expectedRefusals {
            XCTAssertThrowsError(try ArchiveExtractor().restore(from: BufferSource(try Fixtures.hostile(fixture)), replacing: target), fixture) { error in
                XCTAssertEqual((error as? ArchiveError)?.reason, reason, "\(fixture): \(error)")
                if let entry { XCTAssertEqual((error as? ArchiveError)?.entry, entry, fixture) }
            }
            XCTAssertEqual(try TreeSnapshot(target), before, "\(fixture): target untouched")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent), ["account"], "\(fixture): staging removed")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: root), ["sessions"], "\(fixture): nothing escaped")
            XCTAssertFalse(FileManager.default.fileExists(atPath: "/tmp/sync-agent-fixture-absolute.txt"), fixture)
        }
    }

    func testErrorMessagesNameTheEntryAndEscapeIt() {
        let error = ArchiveError(.unsafePath, entry: "../a\nb")
        XCTAssertEqual(error.description, #"archive entry "../a\nb": unsafe path (absolute, empty, '.' or '..' component, or too long)"#)
    }

    func testPathRules() {
        for path in ["creds.json", "keys/pre-key-1.json", "dir/", "a.b/c..d", "..hidden", ".creds"] {
            XCTAssertNotNil(ArchivePath.components(of: path), path)
        }
        for path in ["", "/", "/abs", "..", "../x", "a/..", "a/../b", ".", "./a", "a/./b", "a//b", "a\0b",
                     String(repeating: "x", count: 256), String(repeating: "a/", count: 600)] {
            XCTAssertNil(ArchivePath.components(of: path), path)
        }
    }

    func testEntrySizeLimitStopsABombAtItsHeader() throws {
        let source = CountingSource(BufferSource(try Fixtures.hostile("bomb-entry.tar.zst")))
        let reader = try ArchiveReader(source: source)
        assertArchiveError(try reader.forEachEntry { _, _ in XCTFail("bomb entry visited") }, .entryTooLarge(limit: 64 << 20))
        XCTAssertLessThan(source.bytesRead, 64 * 1024, "refused before decompressing the body")
    }

    func testLowLimitsAreEnforcedMidStream() throws {
        let archive = try archiveBytes(of: Fixtures.session("medium"))
        let cases: [(ExtractionLimits, ArchiveError.Reason)] = [
            (ExtractionLimits(maxTotalBytes: 200_000), .totalSizeExceeded(limit: 200_000)),
            (ExtractionLimits(maxEntryCount: 50), .tooManyEntries(limit: 50)),
            (ExtractionLimits(maxEntryBytes: 10_000), .entryTooLarge(limit: 10_000)),
        ]
        for (limits, reason) in cases {
            let source = CountingSource(BufferSource(archive))
            let root = try makeTemporaryDirectory(for: self)
            assertArchiveError(try ArchiveExtractor(limits: limits).restore(from: source, replacing: root + "/target"), reason)
            XCTAssertLessThan(source.bytesRead, archive.count, "\(reason): refused before the end of the stream")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: root), [])
        }
    }

    func testArchiveCutAnywhereIsRefused() throws {
        let archive = try archiveBytes(of: Fixtures.session("small"))
        var cuts = Array(stride(from: 0, to: archive.count, by: max(1, archive.count / 40)))
        cuts += [archive.count - 1, archive.count - 2, archive.count - 8]
        for cut in cuts {
            XCTAssertThrowsError(try ArchiveReader(source: BufferSource(Array(archive[..<cut]))).forEachEntry { _, _ in }, "cut at \(cut)") { error in
                XCTAssertEqual((error as? ArchiveError)?.reason, .truncated, "cut at \(cut): \(error)")
            }
        }
    }

    func testEmptyArchiveIsValid() throws {
        let sink = BufferSink()
        try ArchiveWriter(sink: sink).finish()
        var count = 0
        try ArchiveReader(source: BufferSource(sink.bytes)).forEachEntry { _, _ in count += 1 }
        XCTAssertEqual(count, 0)
    }
}
