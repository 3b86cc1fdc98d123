import FoundationEssentials
import SessionArchive
import SessionCrypto
import SystemSupport

/// The manifest as JSON Lines (FORMAT.md): a header, then one line per file in name order, then
/// one line per deleted name. Written by `StoredJSONWriter`, in JSONEncoder's bytes. The header is
/// read by JSONDecoder; the file and deleted lines by `ManifestLine`, which leaves to JSONDecoder
/// any line not in the form it writes.
///
/// JSONEncoder and JSONDecoder build a whole document as a tree first: a manifest of 100,000
/// files as one document cost about 130 MB to write and 150 MB to read. A line at a time, neither
/// side holds more than a line and a chunk of output or input.
enum ManifestJSON {
    /// The longest line a reader takes; a longer one is corrupt, so a decompression bomb cannot
    /// become one huge line. A file's line is at most a name of 1,018 bytes (an archive path is at
    /// most 1,024, `files/` included) escaped as `\u00XX` byte by byte, and its record.
    static let maxLineLength = 64 << 10
    /// How much output the writer gathers before handing it on.
    static let chunkSize = 64 << 10

    /// The first line. `fileCount` file lines follow it, then `deletedCount` deleted lines.
    /// Read by JSONDecoder; written by `writeHeader`, whose bytes the tests compare with what
    /// JSONEncoder makes of this type.
    struct Header: Codable {
        var formatVersion: Int
        var session: String
        var id: SnapshotID
        var kind: SnapshotKind
        var parent: SnapshotID?
        var createdAt: Date
        var fileCount: Int
        var deletedCount: Int
        var stateFileCount: Int
        var stateByteCount: Int64
        var stateDigest: String
        var identity: SessionIdentity?
    }

    struct FileLine: Codable {
        var name: String
        var size: Int64
        var contentID: ContentID
        var fingerprint: FileState?
    }

    struct DeletedLine: Codable {
        var deleted: String
    }

    /// Writes `manifest` to `output` in chunks of about `chunkSize` bytes. Both writers escape
    /// control characters in strings and add no whitespace, so a line holds no raw newline.
    static func write(_ manifest: SnapshotManifest, to output: (UnsafeRawBufferPointer) throws -> Void) throws {
        // Grown as lines come, not reserved at the chunk's size: a delta's manifest is a few
        // hundred bytes, and a block of 64 KiB or more is its own mapping in `watch`
        // (`Allocator`), mapped, zeroed and unmapped at every upload (strace, perf: 3% of the
        // sidecar's CPU).
        var json = StoredJSONWriter(reservingCapacity: 4096)
        func endLine() throws {
            json.endLine()
            if json.bytes.count >= chunkSize {
                try json.bytes.withUnsafeBytes(output)
                json.removeAll()
            }
        }
        writeHeader(of: manifest, to: &json)
        try endLine()
        for (name, record) in manifest.files {
            ManifestLine.writeFile(name: name, record: record, to: &json)
            try endLine()
        }
        for name in manifest.deleted {
            ManifestLine.writeDeleted(name: name, to: &json)
            try endLine()
        }
        if !json.bytes.isEmpty { try json.bytes.withUnsafeBytes(output) }
    }

    /// `Header`'s fields, as JSONEncoder writes them.
    static func writeHeader(of manifest: SnapshotManifest, to json: inout StoredJSONWriter) {
        json.object { json in
            json.key("createdAt")
            json.date(manifest.createdAt)
            json.key("deletedCount")
            json.integer(manifest.deleted.count)
            json.key("fileCount")
            json.integer(manifest.files.count)
            json.key("formatVersion")
            json.integer(manifest.formatVersion)
            json.key("id")
            manifest.id.write(to: &json)
            if let identity = manifest.identity {
                json.key("identity")
                identity.write(to: &json)
            }
            json.key("kind")
            json.string(manifest.kind.rawValue)
            if let parent = manifest.parent {
                json.key("parent")
                parent.write(to: &json)
            }
            json.key("session")
            json.string(manifest.session)
            json.key("stateByteCount")
            json.integer(manifest.stateByteCount)
            json.key("stateDigest")
            json.string(manifest.stateDigest)
            json.key("stateFileCount")
            json.integer(manifest.stateFileCount)
        }
    }

    /// The size of `manifest`'s lines: a tar entry's header comes before its data.
    static func byteCount(of manifest: SnapshotManifest) throws -> Int64 {
        var count: Int64 = 0
        try write(manifest) { count += Int64($0.count) }
        return count
    }

    static func read(from source: ByteSource) throws -> SnapshotManifest {
        var lines = LineReader(source: source)
        guard let first = try lines.next() else { throw SnapshotError.corrupt("the manifest is empty") }
        // The version alone first, even on an unterminated line: another version's header may
        // not decode as this one's.
        let header = try StoredJSON.decode(
            Header.self, from: first.bytes, formatVersions: SnapshotManifest.readableFormatVersions, what: "the manifest")
        guard first.terminated else { throw lines.failure("the header line has no newline") }
        guard header.fileCount >= 0, header.deletedCount >= 0 else { throw lines.failure("a negative count") }

        let decoder = StoredJSON.decoder()
        var files = SessionState.Builder()
        var previous: String?
        for _ in 0..<header.fileCount {
            let file = try lines.decode(FileLine.self, with: decoder, fastPath: ManifestLine.parseFile)
            try lines.checkOrder(file.name, after: &previous)
            _ = files.add(file.name, FileRecord(size: file.size, contentID: file.contentID, fingerprint: file.fingerprint))
        }
        var deleted: [String] = []
        previous = nil
        for _ in 0..<header.deletedCount {
            let name = try lines.decode(DeletedLine.self, with: decoder, fastPath: ManifestLine.parseDeleted).deleted
            try lines.checkOrder(name, after: &previous)
            deleted.append(name)
        }
        guard try lines.next() == nil else { throw lines.failure("more lines than the header declares") }

        var manifest = SnapshotManifest(
            session: header.session, id: header.id, kind: header.kind, parent: header.parent, createdAt: header.createdAt,
            files: files.build(), deleted: deleted, stateFileCount: header.stateFileCount,
            stateByteCount: header.stateByteCount, stateDigest: header.stateDigest, identity: header.identity)
        manifest.formatVersion = header.formatVersion
        return manifest
    }

    /// Splits a byte source into lines of at most `maxLineLength` bytes.
    private struct LineReader {
        let source: ByteSource
        private var buffer = [UInt8](repeating: 0, count: ManifestJSON.chunkSize)
        private var position = 0
        /// How much of `buffer` the last read filled.
        private var filled = 0
        private var line: [UInt8] = []
        /// The number of the line `next` returned last, for error messages.
        private(set) var number = 0

        init(source: ByteSource) {
            self.source = source
        }

        /// The next line without its newline, and whether it had one (only the last line can
        /// lack it); nil at the end.
        mutating func next() throws -> (bytes: [UInt8], terminated: Bool)? {
            line.removeAll(keepingCapacity: true)
            while true {
                if position == filled {
                    filled = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
                    position = 0
                    if filled == 0 {
                        guard !line.isEmpty else { return nil }
                        number += 1
                        return (line, false)
                    }
                }
                let end = buffer[position..<filled].firstIndex(of: UInt8(ascii: "\n")) ?? filled
                guard line.count + end - position <= ManifestJSON.maxLineLength else {
                    throw failure("line \(number + 1) is longer than \(ManifestJSON.maxLineLength) bytes")
                }
                line += buffer[position..<end]
                if end < filled {
                    position = end + 1
                    number += 1
                    return (line, true)
                }
                position = filled
            }
        }

        /// The next line, which must be there, end with a newline and decode as `type`: by
        /// `fastPath` when it can, by `decoder` when `fastPath` gives up.
        mutating func decode<Line: Decodable>(
            _ type: Line.Type, with decoder: JSONDecoder, fastPath: (UnsafeRawBufferPointer) -> Line?
        ) throws -> Line {
            let wanted = number + 1
            guard let next = try next(), next.terminated else { throw failure("it ends before line \(wanted) is complete") }
            if let line = next.bytes.withUnsafeBytes(fastPath) { return line }
            do {
                return try decoder.decode(type, from: Data(next.bytes))
            } catch {
                throw failure("line \(number) does not parse: \(error)")
            }
        }

        /// Names come in byte order, each once, as a `SessionState` holds them.
        func checkOrder(_ name: String, after previous: inout String?) throws {
            if let previous, !SessionState.precedes(previous, name) {
                throw failure("line \(number) names \(FileName.displayed(name)) twice or out of order")
            }
            previous = name
        }

        func failure(_ reason: String) -> SnapshotError {
            .corrupt("the manifest does not parse: \(reason)")
        }
    }
}
