import Foundation
import Glibc
@testable import SessionArchive
import SessionCrypto
import SystemSupport
import TestSupport
import Testing

struct HostileArchiveTests {
    /// Snapshot payloads (fixtures/hostile, scripts/generate-fixtures) and the reader's refusal of
    /// each. That a restore refuses them and changes nothing is SyncEngineTests' HostileSnapshotTests,
    /// through the path every restore takes.
    static let expectedRefusals: [(fixture: String, reason: ArchiveError.Reason, entry: String?)] = [
        ("traversal.tar.zst", .unsafePath, "files/../../escaped.txt"),
        ("traversal-nested.tar.zst", .unsafePath, "files/keys/../../../escaped.txt"),
        ("absolute.tar.zst", .unsafePath, "/tmp/sync-agent-fixture-absolute.txt"),
        ("symlink.tar.zst", .forbiddenEntryType("symbolic link"), "files/link"),
        ("hardlink.tar.zst", .forbiddenEntryType("hard link"), "files/passwd"),
        ("chardev.tar.zst", .forbiddenEntryType("character device"), "files/null"),
        ("blockdev.tar.zst", .forbiddenEntryType("block device"), "files/sda"),
        ("fifo.tar.zst", .forbiddenEntryType("FIFO"), "files/pipe"),
        ("duplicate.tar.zst", .duplicateEntry, "files/creds.json"),
        ("file-then-child.tar.zst", .duplicateEntry, "files/creds.json/escaped.txt"),
        ("bomb-entry.tar.zst", .entryTooLarge(limit: 64 << 20), "files/zeros-00.bin"),
        ("bomb-total.tar.zst", .totalSizeExceeded(limit: 1 << 30), "files/zeros-16.bin"),
        ("truncated.tar.zst", .truncated, nil),
        ("missing-end-marker.tar.zst", .truncated, nil),
        ("plain.tar", .unsupportedFormat, nil),
    ]

    @Test(arguments: expectedRefusals)
    func everyHostileArchiveIsRefusedByTheReader(_ refusal: (fixture: String, reason: ArchiveError.Reason, entry: String?)) throws {
        let (fixture, reason, entry) = refusal
        let payload = try Fixtures.hostile(fixture)
        let error = #expect(throws: ArchiveError.self, "\(fixture)") {
            try ArchiveReader(source: BufferSource(payload)).forEachEntry { _, _ in }
        }
        #expect(error?.reason == reason, "\(fixture): \(String(describing: error))")
        if let entry { #expect(error?.entry == entry, "\(fixture)") }
    }

    @Test func errorMessagesNameTheEntryAndEscapeIt() {
        let error = ArchiveError(.unsafePath, entry: "../a\nb")
        #expect(error.description == #"archive entry "../a\nb": unsafe path (absolute, empty, '.' or '..' component, or too long)"#)
    }

    @Test func pathRules() {
        for path in ["creds.json", "keys/pre-key-1.json", "dir/", "a.b/c..d", "..hidden", ".creds"] {
            #expect(ArchivePath.components(of: path) != nil, "\(path)")
        }
        for path in ["", "/", "/abs", "..", "../x", "a/..", "a/../b", ".", "./a", "a/./b", "a//b", "a\0b",
                     String(repeating: "x", count: 256), String(repeating: "a/", count: 600)] {
            #expect(ArchivePath.components(of: path) == nil, "\(path)")
        }
    }

    @Test func entrySizeLimitStopsABombAtItsHeader() throws {
        let source = CountingSource(BufferSource(try Fixtures.hostile("bomb-entry.tar.zst")))
        let reader = try ArchiveReader(source: source)
        expectArchiveError(.entryTooLarge(limit: 64 << 20)) { try reader.forEachEntry { _, _ in Issue.record("bomb entry visited") } }
        #expect(source.bytesRead < 64 * 1024, "refused before decompressing the body")
    }

    @Test func lowLimitsAreEnforcedMidStream() throws {
        let archive = try archiveBytes(of: Fixtures.session("medium"))
        let cases: [(ExtractionLimits, ArchiveError.Reason)] = [
            (ExtractionLimits(maxTotalBytes: 200_000), .totalSizeExceeded(limit: 200_000)),
            (ExtractionLimits(maxEntryCount: 50), .tooManyEntries(limit: 50)),
            (ExtractionLimits(maxEntryBytes: 10_000), .entryTooLarge(limit: 10_000)),
        ]
        for (limits, reason) in cases {
            let source = CountingSource(BufferSource(archive))
            expectArchiveError(reason, "\(reason)") { try ArchiveReader(source: source, limits: limits).forEachEntry { _, _ in } }
            #expect(source.bytesRead < archive.count, "\(reason): refused before the end of the stream")
        }
    }

    @Test func archiveCutAnywhereIsRefused() throws {
        let archive = try archiveBytes(of: Fixtures.session("small"))
        var cuts = Array(stride(from: 0, to: archive.count, by: max(1, archive.count / 40)))
        cuts += [archive.count - 1, archive.count - 2, archive.count - 8]
        for cut in cuts {
            expectArchiveError(.truncated, "cut at \(cut)") { try ArchiveReader(source: BufferSource(Array(archive[..<cut]))).forEachEntry { _, _ in } }
        }
    }

    @Test func emptyArchiveIsValid() throws {
        let sink = BufferSink()
        try ArchiveWriter(sink: sink).finish()
        var count = 0
        try ArchiveReader(source: BufferSource(sink.bytes)).forEachEntry { _, _ in count += 1 }
        #expect(count == 0)
    }
}
