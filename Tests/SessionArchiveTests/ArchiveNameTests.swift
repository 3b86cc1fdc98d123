import Foundation
import Glibc
@testable import SessionArchive
import SessionCrypto
import SystemSupport
import Testing

/// Names of any bytes (FORMAT.md "Names"): written to the tar and read back exactly, and
/// created under those bytes by a restore's staging directory, at any depth.
@Suite struct ArchiveNameTests {
    /// Each a path relative to the session directory, as the bytes the kernel holds.
    static let paths: [[UInt8]] = [
        Array("é.json".utf8),
        [0x62, 0x61, 0x64, 0xFF, 0xFE] + Array(".json".utf8),
        Array("line\nbreak.json".utf8),
        [UInt8](repeating: UInt8(ascii: "x"), count: 255),
        [UInt8](repeating: 0xFF, count: 255),
        Array("keys/\u{10FF80}lookalike".utf8),
        Array("a/b/c/d/deep.json".utf8),
        [0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80, 0x2F, 0xC3] + Array("/x".utf8),
    ]

    @Test func namesOfAnyBytesRoundTripThroughTheArchiveAndTheStagingDirectory() throws {
        let names = Self.paths.map(FileName.decode)
        let sink = BufferSink()
        let writer = try ArchiveWriter(sink: sink)
        for (index, name) in names.sorted(by: { FileName.bytes(of: $0).lexicographicallyPrecedes(FileName.bytes(of: $1)) }).enumerated() {
            try writer.addFile(relativePath: name, contents: [UInt8(index)], modificationTime: 0)
        }
        try writer.finish()

        let root = NSTemporaryDirectory() + "archive-name-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: root) }
        var read: [String] = []
        try DirectorySwap.replace(root + "/target") { staging in
            try ArchiveReader(source: BufferSource(sink.bytes)).forEachEntry { entry, data in
                read.append(entry.path)
                try staging.writeFile(relativePath: entry.path) { try data.copy(to: $0) }
            }
        }
        #expect(Set(read) == Set(names))
        #expect(try rawTree(root + "/target") == Set(Self.paths + [
            Array("keys".utf8), Array("a".utf8), Array("a/b".utf8), Array("a/b/c".utf8), Array("a/b/c/d".utf8),
            [0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80], [0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80, 0x2F, 0xC3],
        ]))
    }

    /// An independent reader (zstd and Python's tarfile, which follows pax `hdrcharset`) finds
    /// every name's bytes; names in ASCII are stored as they always were, in the ustar header.
    @Test func anIndependentReaderFindsTheNamesBytes() throws {
        let names = Self.paths.map(FileName.decode) + ["plain.json"]
        let sink = BufferSink()
        let writer = try ArchiveWriter(sink: sink)
        for name in names { try writer.addFile(relativePath: "files/" + name, contents: [], modificationTime: 0) }
        try writer.finish()
        let file = NSTemporaryDirectory() + "archive-name-tests-" + UUID().uuidString + ".tar.zst"
        try Data(sink.bytes).write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let listing = try String(decoding: programOutput("/bin/sh", ["-c", """
            zstd -dc "$1" | python3 -c '
            import sys, tarfile
            with tarfile.open(fileobj=sys.stdin.buffer, mode="r|", encoding="utf-8", errors="surrogateescape") as t:
                for m in t:
                    print(m.name.encode("utf-8", "surrogateescape").hex(), m.pax_headers.get("hdrcharset", "-"), "path" in m.pax_headers)
            '
            """, "sh", file]), as: UTF8.self)
        let lines = listing.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(lines.map { $0[0] } == names.map { FileName.bytes(of: "files/" + $0).map { String(format: "%02x", $0) }.joined() })
        #expect(lines.last == ["files/plain.json".utf8.map { String(format: "%02x", $0) }.joined(), "-", "False"])
    }

    /// FORMAT.md: a `path` record past ASCII must come after `hdrcharset=BINARY`; one without it
    /// (Python's and GNU tar's default, taken as UTF-8) is refused as corrupt, never misread.
    @Test func aPathPastASCIIWithoutHdrcharsetIsRefused() throws {
        let archive = try String(decoding: programOutput("/bin/sh", ["-c", """
            python3 -c '
            import io, sys, tarfile
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as t:
                t.addfile(tarfile.TarInfo("files/\\u00e9.json"), io.BytesIO(b""))
            sys.stdout.buffer.write(buffer.getvalue())
            ' | zstd -q -c | base64 -w0
            """]), as: UTF8.self)
        let bytes = try #require(Data(base64Encoded: archive.trimmingCharacters(in: .whitespacesAndNewlines)))
        let error = #expect(throws: ArchiveError.self) { try ArchiveReader(source: BufferSource([UInt8](bytes))).forEachEntry { _, _ in } }
        #expect(error?.reason == .corrupt, "\(String(describing: error))")
    }

    @Test func lengthLimitsCountTheNamesBytes() throws {
        let writer = try ArchiveWriter(sink: BufferSink())
        try writer.addFile(relativePath: FileName.decode([UInt8](repeating: 0xFF, count: 255)), contents: [], modificationTime: 0)
        #expect(throws: ArchiveError.self) {
            try writer.addFile(relativePath: FileName.decode([UInt8](repeating: 0xFF, count: 256)), contents: [], modificationTime: 0)
        }
        #expect(throws: ArchiveError.self) { try writer.addFile(relativePath: "a\0b", contents: [], modificationTime: 0) }
    }

    /// Every path below `directory` (directories included), as raw bytes.
    private func rawTree(_ directory: String, prefix: [UInt8] = []) throws -> Set<[UInt8]> {
        var paths: Set<[UInt8]> = []
        let path = FileName.decode(FileName.bytes(of: directory) + (prefix.isEmpty ? [] : [0x2F] + prefix))
        guard let stream = FileName.withPlatformPath(path, { opendir($0) }) else { throw SystemError("opendir", path: path) }
        defer { closedir(stream) }
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            let child = prefix.isEmpty ? name : prefix + [0x2F] + name
            paths.insert(child)
            var status = stat()
            let childPath = FileName.decode(FileName.bytes(of: directory) + [0x2F] + child)
            #expect(FileName.withPlatformPath(childPath) { lstat($0, &status) } == 0)
            if status.st_mode & S_IFMT == S_IFDIR {
                #expect(status.st_mode & 0o7777 == 0o700)
                paths.formUnion(try rawTree(directory, prefix: child))
            } else {
                #expect(status.st_mode & 0o7777 == 0o600)
            }
        }
        return paths
    }
}
