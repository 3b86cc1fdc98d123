import Foundation
import Glibc
@testable import SessionArchive
import SessionCrypto
import SystemSupport
import TestSupport
import Testing

struct ArchiveRoundTripTests {
    @Test func everyFixtureSessionRestoresByteIdenticalWithPrivateModes() throws {
        let temporary = try TemporaryDirectory()
        let root = temporary.path
        var restored: [String] = []
        for name in Fixtures.sessionNames {
            let original = try #require(try TreeSnapshot(Fixtures.session(name)))
            let archive = try archiveBytes(of: Fixtures.session(name))
            let target = root + "/" + name
            try unpack(BufferSource(archive), replacing: target)
            #expect(try TreeSnapshot(target) == original.normalized, "\(name)")
            restored.append(name)
            #expect(try FileManager.default.contentsOfDirectory(atPath: root).sorted() == restored.sorted(), "no leftovers")
            var info = stat()
            #expect(lstat(target, &info) == 0)
            #expect(info.st_mode & 0o7777 == 0o700, "restored session directory mode")
        }
    }

    /// A large archive compresses on zstd's worker thread (`backup`): still one frame the same
    /// reader restores byte-identical.
    @Test func workerThreadCompressionRoundTrips() throws {
        let temporary = try TemporaryDirectory()
        let root = temporary.path
        let session = Fixtures.session("medium")
        let archive = try archiveBytes(of: session, expectedSize: ArchiveWriter.workerThreadThreshold)
        try unpack(BufferSource(archive), replacing: root + "/target")
        #expect(try TreeSnapshot(root + "/target") == #require(try TreeSnapshot(session)).normalized)
    }

    @Test func subdirectoriesAtAnyDepthRoundTrip() throws {
        let temporary = try TemporaryDirectory()
        let root = temporary.path
        try writeTree(
            ["creds.json": Array("{}".utf8), "keys/pre-key-1.json": [1, 2, 3], "keys/empty.json": [], "a/b/c/d/e.json": [4]],
            at: root + "/source")
        try unpack(BufferSource(try archiveBytes(of: root + "/source")), replacing: root + "/target")
        #expect(try TreeSnapshot(root + "/target") == #require(try TreeSnapshot(root + "/source")).normalized)
    }

    @Test func archivesAreReproducibleAndCarryNoHostDetails() throws {
        let session = Fixtures.session("small")
        let first = try archiveBytes(of: session)
        #expect(try first == archiveBytes(of: session))
        #expect(Array(first.prefix(4)) == [0x28, 0xB5, 0x2F, 0xFD], "starts with a zstd frame")

        // An independent reader (zstd CLI + Python's tarfile) sees the documented format.
        let temporary = try TemporaryDirectory()
        let root = temporary.path
        try Data(first).write(to: URL(fileURLWithPath: root + "/small.tar.zst"))
        let listing = try String(decoding: programOutput("/bin/sh", ["-c", """
            zstd -dc "$1" | python3 -c '
            import sys, tarfile
            with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
                for m in t:
                    print(m.name, m.type.decode(), oct(m.mode), m.uid, m.gid, repr(m.uname), repr(m.gname), m.size)
            '
            """, "sh", root + "/small.tar.zst"]), as: UTF8.self)
        let lines = listing.split(separator: "\n")
        let names = try FileManager.default.contentsOfDirectory(atPath: session).sorted()
        #expect(lines.map { String($0.split(separator: " ")[0]) } == names)
        for line in lines {
            #expect(line.split(separator: " ").dropFirst().dropLast().joined(separator: " ") == "0 0o600 0 0 '' ''", "\(String(line))")
        }
    }

    @Test func visitingEntriesStreamsContentsWithoutWritingToDisk() throws {
        let session = Fixtures.session("medium")
        let reader = try ArchiveReader(source: BufferSource(try archiveBytes(of: session)))
        var visited: [String: [UInt8]] = [:]
        var skipped = 0
        try reader.forEachEntry { entry, data in
            #expect(entry.kind == .file)
            // Leaving data unread is allowed: the reader skips it.
            if entry.path.hasPrefix("pre-key-") { skipped += 1; return }
            let sink = BufferSink()
            try data.copy(to: sink)
            #expect(Int64(sink.bytes.count) == entry.size)
            visited[entry.path] = sink.bytes
        }
        #expect(skipped > 100)
        for (path, contents) in visited {
            #expect(contents == [UInt8](try Data(contentsOf: URL(fileURLWithPath: session + "/" + path))), "\(path)")
        }
    }

    @Test func sinkErrorsPropagateAsThemselves() throws {
        final class FailingSink: ByteSink {
            var budget: Int
            init(budget: Int) { self.budget = budget }
            func write(_ bytes: UnsafeRawBufferPointer) throws {
                budget -= bytes.count
                if budget < 0 { throw SystemError("write", path: "upload body", errno: ENOSPC) }
            }
        }
        #expect(throws: SystemError("write", path: "upload body", errno: ENOSPC)) {
            try archiveDirectory(Fixtures.session("medium"), to: FailingSink(budget: 100_000))
        }
    }

    @Test func sourceErrorsPropagateAsThemselves() throws {
        final class FailingSource: ByteSource {
            let wrapped: ByteSource
            var budget: Int
            init(_ wrapped: ByteSource, budget: Int) { self.wrapped = wrapped; self.budget = budget }
            func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
                let count = try wrapped.read(into: buffer)
                budget -= count
                if budget < 0 { throw SystemError("read", path: "download", errno: ECONNRESET) }
                return count
            }
        }
        let archive = try archiveBytes(of: Fixtures.session("medium"))
        let temporary = try TemporaryDirectory()
        let root = temporary.path
        #expect(throws: SystemError("read", path: "download", errno: ECONNRESET)) {
            try unpack(FailingSource(BufferSource(archive), budget: archive.count / 2), replacing: root + "/target")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == [])
    }

    @Test func fileShrinkingWhileArchivedIsReported() throws {
        let temporary = try TemporaryDirectory()
        let root = temporary.path
        try writeTree(["creds.json": Array(repeating: 7, count: 1000)], at: root)
        let descriptor = open(root + "/creds.json", O_RDONLY)
        defer { close(descriptor) }
        let writer = try ArchiveWriter(sink: BufferSink())
        expectArchiveError(.sourceChanged) { try writer.addFile(relativePath: "creds.json", fileDescriptor: descriptor, size: 2000, modificationTime: 0) }
    }

    @Test func writerRefusesWhatTheReaderWouldRefuse() throws {
        let writer = try ArchiveWriter(sink: BufferSink())
        for path in ["", "/etc/passwd", "../x", "a/../b", "./a", "a//b", String(repeating: "x", count: 256)] {
            expectArchiveError(.unsafePath) { try writer.addFile(relativePath: path, contents: [], modificationTime: 0) }
        }
        expectArchiveError(.invalidCompressionLevel(0)) { try ArchiveWriter(sink: BufferSink(), compressionLevel: 0) }
    }

    /// Compression contexts are kept between archives: one that was abandoned mid-frame, or
    /// used at another level or for a large frame, leaves the next archive exactly what a fresh
    /// context makes (zstd's output depends only on the input and the parameters).
    @Test func aContextKeptBetweenArchivesWritesWhatAFreshOneWrites() throws {
        let session = Fixtures.session("medium")
        func archive(level: Int = 3) throws -> [UInt8] {
            let sink = BufferSink()
            try archiveDirectory(session, to: sink, compressionLevel: level)
            return sink.bytes
        }
        let fresh = try archive()
        for _ in 1...3 {
            do {
                // With a size hint of its own, which the next frame must not inherit.
                let abandoned = try ArchiveWriter(sink: BufferSink(), expectedSize: 2_000)
                try abandoned.addFile(relativePath: "creds.json", contents: randomBytes(300_000, seed: 1), modificationTime: 0)
            }
            // The same level-3 context, reused at once.
            #expect(try archive() == fresh)
            _ = try archive(level: 9)
            let large = try ArchiveWriter(sink: BufferSink())
            try large.addFile(relativePath: "big", contents: randomBytes(ZstdContext.Pool.largestKeptFrame + 1, seed: 2), modificationTime: 0)
            try large.finish()
            #expect(try archive() == fresh)
        }
        let temporary = try TemporaryDirectory()
        try unpack(BufferSource(fresh), replacing: temporary.path + "/target")
        #expect(try TreeSnapshot(temporary.path + "/target") == #require(try TreeSnapshot(session)).normalized)
    }

    @Test func abandonedWriterEmitsNoCompleteArchive() throws {
        let sink = BufferSink()
        do {
            let writer = try ArchiveWriter(sink: sink)
            try writer.addFile(relativePath: "creds.json", contents: Array("{}".utf8), modificationTime: 0)
        }
        #expect(throws: (any Error).self) { try ArchiveReader(source: BufferSource(sink.bytes)).forEachEntry { _, _ in } }
    }
}
