import Crypto
import FoundationEssentials

/// The manifest's JSON (FORMAT.md), written and read a file at a time.
///
/// JSONEncoder and JSONDecoder build the whole document as a tree first: for a base of
/// 100,000 files that cost about 130 MB to write and 150 MB to read, most of the agent's peak
/// memory. The writer gives the same bytes JSONEncoder did (`.sortedKeys`, which on Linux sorts
/// by UTF-8 bytes, slashes escaped, ISO 8601 dates); the reader takes any JSON of the manifest's
/// shape, in any key order, and skips keys it does not know.
enum ManifestJSON {
    /// Writes `manifest` to `output` in chunks of about `chunkSize` bytes.
    static func write(_ manifest: SnapshotManifest, to output: (UnsafeRawBufferPointer) throws -> Void) throws {
        try withoutActuallyEscaping(output) { output in
            var writer = Writer(output: output)
            try writer.manifest(manifest)
            try writer.flush()
        }
    }

    /// The size of `manifest`'s JSON: a tar entry's header comes before its data.
    static func byteCount(of manifest: SnapshotManifest) throws -> Int64 {
        var count: Int64 = 0
        try write(manifest) { count += Int64($0.count) }
        return count
    }

    static func read(from source: ByteSource) throws -> SnapshotManifest {
        var reader = Reader(source: source)
        let manifest = try reader.manifest()
        try reader.finish()
        return manifest
    }

    static let chunkSize = 64 << 10

    private struct Writer {
        let output: (UnsafeRawBufferPointer) throws -> Void
        var buffer: [UInt8] = []

        init(output: @escaping (UnsafeRawBufferPointer) throws -> Void) {
            self.output = output
            buffer.reserveCapacity(ManifestJSON.chunkSize)
        }

        mutating func manifest(_ manifest: SnapshotManifest) throws {
            // Keys in byte order, as JSONEncoder's `.sortedKeys`.
            try object {
                try $0.key("createdAt", first: true)
                try $0.string(manifest.createdAt.formatted(.iso8601))
                try $0.key("deleted")
                try $0.raw("[")
                for (index, name) in manifest.deleted.enumerated() {
                    if index > 0 { try $0.raw(",") }
                    try $0.string(name)
                }
                try $0.raw("]")
                try $0.key("files")
                try $0.object {
                    var first = true
                    for (name, record) in manifest.files {
                        try $0.key(name, first: first)
                        try $0.record(record)
                        first = false
                    }
                }
                try $0.key("formatVersion")
                try $0.number(manifest.formatVersion)
                try $0.key("id")
                try $0.snapshotID(manifest.id)
                try $0.key("kind")
                try $0.string(manifest.kind.rawValue)
                if let parent = manifest.parent {
                    try $0.key("parent")
                    try $0.snapshotID(parent)
                }
                try $0.key("session")
                try $0.string(manifest.session)
                try $0.key("stateByteCount")
                try $0.number(manifest.stateByteCount)
                try $0.key("stateDigest")
                try $0.string(manifest.stateDigest)
                try $0.key("stateFileCount")
                try $0.number(manifest.stateFileCount)
            }
        }

        mutating func record(_ record: FileRecord) throws {
            try object {
                try $0.key("contentID", first: true)
                try $0.string(record.contentID.description)
                if let fingerprint = record.fingerprint {
                    try $0.key("fingerprint")
                    try $0.object {
                        try $0.key("device", first: true)
                        try $0.number(fingerprint.device)
                        try $0.key("inode")
                        try $0.number(fingerprint.inode)
                        try $0.key("mode")
                        try $0.number(fingerprint.mode)
                        try $0.key("modificationTime")
                        try $0.number(fingerprint.modificationTime)
                        try $0.key("size")
                        try $0.number(fingerprint.size)
                    }
                }
                try $0.key("size")
                try $0.number(record.size)
            }
        }

        mutating func snapshotID(_ id: SnapshotID) throws {
            try object {
                try $0.key("generation", first: true)
                try $0.number(id.generation)
                try $0.key("sequence")
                try $0.number(id.sequence)
                try $0.key("tag")
                try $0.string(id.tag.rawValue)
            }
        }

        mutating func object(_ members: (inout Writer) throws -> Void) throws {
            try raw("{")
            try members(&self)
            try raw("}")
        }

        mutating func key(_ name: String, first: Bool = false) throws {
            if !first { try raw(",") }
            try string(name)
            try raw(":")
        }

        mutating func number(_ value: some BinaryInteger) throws {
            try raw(String(value))
        }

        mutating func raw(_ text: String) throws {
            buffer.append(contentsOf: text.utf8)
            if buffer.count >= ManifestJSON.chunkSize { try flush() }
        }

        /// JSONEncoder's escapes: `"`, `\`, `/` and control characters; everything else as is.
        mutating func string(_ text: String) throws {
            buffer.append(UInt8(ascii: "\""))
            for byte in text.utf8 {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): buffer += [UInt8(ascii: "\\"), byte]
                case 0x08: buffer += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
                case 0x0c: buffer += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
                case 0x0a: buffer += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
                case 0x0d: buffer += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
                case 0x09: buffer += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
                case 0..<0x20:
                    let hex = Array("0123456789abcdef".utf8)
                    buffer += Array(#"\u00"#.utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xf)]]
                default: buffer.append(byte)
                }
            }
            buffer.append(UInt8(ascii: "\""))
            if buffer.count >= ManifestJSON.chunkSize { try flush() }
        }

        mutating func flush() throws {
            guard !buffer.isEmpty else { return }
            try buffer.withUnsafeBytes { try output($0) }
            buffer.removeAll(keepingCapacity: true)
        }
    }

    /// A pull parser over a byte source, for the manifest's shape.
    private struct Reader {
        let source: ByteSource
        private var buffer = [UInt8](repeating: 0, count: ManifestJSON.chunkSize)
        private var position = 0
        /// How much of `buffer` the last read filled.
        private var filled = 0
        /// Bytes consumed before `buffer`'s, for error messages.
        private var offset = 0
        private var scratch: [UInt8] = []

        init(source: ByteSource) {
            self.source = source
        }

        mutating func manifest() throws -> SnapshotManifest {
            var (createdAt, id, kind, parent, session): (Date?, SnapshotID?, SnapshotKind?, SnapshotID?, String?)
            var (formatVersion, stateFileCount): (Int?, Int?)
            var (stateByteCount, stateDigest): (Int64?, String?)
            var files = SessionState.Builder()
            var deleted: [String] = []
            try object { reader, key in
                switch key {
                case "formatVersion":
                    // Checked as soon as it is read: another version's fields may not parse as ours.
                    let version: Int = try reader.integer()
                    guard version == SnapshotManifest.currentFormatVersion else {
                        throw SnapshotError.unsupportedFormat(
                            "the manifest has unsupported format version \(version) (this sync-agent reads version \(SnapshotManifest.currentFormatVersion))")
                    }
                    formatVersion = version
                case "session": session = try reader.string()
                case "id": id = try reader.snapshotID()
                case "kind":
                    let text = try reader.string()
                    guard let value = SnapshotKind(rawValue: text) else { throw reader.failure("unknown kind \(text)") }
                    kind = value
                case "parent": parent = try reader.null() ? nil : reader.snapshotID()
                case "createdAt":
                    let text = try reader.string()
                    guard let date = try? Date.ISO8601FormatStyle().parse(text) else {
                        throw reader.failure("createdAt is not an ISO 8601 date")
                    }
                    createdAt = date
                case "files":
                    try reader.object { reader, name in
                        let record = try reader.record()
                        guard files.add(name, record) else { throw reader.failure("\(name) is listed twice") }
                    }
                case "deleted": try reader.array { deleted.append(try $0.string()) }
                case "stateFileCount": stateFileCount = try reader.integer()
                case "stateByteCount": stateByteCount = try reader.integer()
                case "stateDigest": stateDigest = try reader.string()
                default: try reader.skipValue()
                }
            }
            guard let formatVersion, let session, let id, let kind, let createdAt, let stateFileCount, let stateByteCount,
                let stateDigest
            else {
                throw SnapshotError.corrupt("the manifest lacks a field")
            }
            var manifest = SnapshotManifest(
                session: session, id: id, kind: kind, parent: parent, createdAt: createdAt, files: files.build(),
                deleted: deleted, stateFileCount: stateFileCount, stateByteCount: stateByteCount, stateDigest: stateDigest)
            manifest.formatVersion = formatVersion
            return manifest
        }

        mutating func record() throws -> FileRecord {
            var (size, contentID, fingerprint): (Int64?, ContentID?, FileState?)
            try object { reader, key in
                switch key {
                case "size": size = try reader.integer()
                case "contentID":
                    let text = try reader.string()
                    guard let id = ContentID(hex: text) else { throw reader.failure("not a 64-digit hex content id") }
                    contentID = id
                case "fingerprint": fingerprint = try reader.null() ? nil : reader.fingerprint()
                default: try reader.skipValue()
                }
            }
            guard let size, let contentID else { throw failure("a file record lacks its size or content id") }
            return FileRecord(size: size, contentID: contentID, fingerprint: fingerprint)
        }

        mutating func fingerprint() throws -> FileState {
            var (size, mode, modificationTime, inode, device): (Int64?, UInt32?, Int64?, UInt64?, UInt64?)
            try object { reader, key in
                switch key {
                case "size": size = try reader.integer()
                case "mode": mode = try reader.integer()
                case "modificationTime": modificationTime = try reader.integer()
                case "inode": inode = try reader.integer()
                case "device": device = try reader.integer()
                default: try reader.skipValue()
                }
            }
            guard let size, let mode, let modificationTime, let inode, let device else {
                throw failure("a fingerprint lacks a field")
            }
            return FileState(size: size, mode: mode, modificationTime: modificationTime, inode: inode, device: device)
        }

        mutating func snapshotID() throws -> SnapshotID {
            var (sequence, generation, tag): (UInt64?, UInt64?, SnapshotTag?)
            try object { reader, key in
                switch key {
                case "sequence": sequence = try reader.integer()
                case "generation": generation = try reader.integer()
                case "tag":
                    let text = try reader.string()
                    guard let value = SnapshotTag(text) else { throw reader.failure("not a snapshot tag") }
                    tag = value
                default: try reader.skipValue()
                }
            }
            guard let sequence, let generation, let tag else { throw failure("a snapshot id lacks a field") }
            return SnapshotID(sequence: sequence, generation: generation, tag: tag)
        }

        // MARK: - JSON

        /// Calls `member` with each key; it must read the key's value.
        mutating func object(_ member: (inout Reader, String) throws -> Void) throws {
            try expect(UInt8(ascii: "{"))
            if try peek() == UInt8(ascii: "}") {
                position += 1
                return
            }
            while true {
                let key = try string()
                try expect(UInt8(ascii: ":"))
                try member(&self, key)
                let next = try byte()
                if next == UInt8(ascii: "}") { return }
                guard next == UInt8(ascii: ",") else { throw failure("expected , or }") }
            }
        }

        mutating func array(_ element: (inout Reader) throws -> Void) throws {
            try expect(UInt8(ascii: "["))
            if try peek() == UInt8(ascii: "]") {
                position += 1
                return
            }
            while true {
                try element(&self)
                let next = try byte()
                if next == UInt8(ascii: "]") { return }
                guard next == UInt8(ascii: ",") else { throw failure("expected , or ]") }
            }
        }

        /// Reads `null` if it comes next.
        mutating func null() throws -> Bool {
            guard try peek() == UInt8(ascii: "n") else { return false }
            try literal("null")
            return true
        }

        mutating func integer<Value: FixedWidthInteger>() throws -> Value {
            let negative = try peek() == UInt8(ascii: "-")
            if negative { position += 1 }
            var value: Value = 0
            var digits = 0
            while try refill(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(buffer[position]) {
                let digit = Value(buffer[position] - UInt8(ascii: "0"))
                let (shifted, overflow) = value.multipliedReportingOverflow(by: 10)
                let (next, overflowAgain) = negative ? shifted.subtractingReportingOverflow(digit) : shifted.addingReportingOverflow(digit)
                guard !overflow, !overflowAgain else { throw failure("a number out of range") }
                value = next
                digits += 1
                position += 1
            }
            guard digits > 0 else { throw failure("expected an integer") }
            return value
        }

        mutating func string() throws -> String {
            try expect(UInt8(ascii: "\""))
            scratch.removeAll(keepingCapacity: true)
            while true {
                let next = try rawByte()
                switch next {
                case UInt8(ascii: "\""):
                    guard let text = String(validating: scratch, as: UTF8.self) else { throw failure("a string is not UTF-8") }
                    return text
                case UInt8(ascii: "\\"): try escape()
                case 0..<0x20: throw failure("a control character in a string")
                default: scratch.append(next)
                }
            }
        }

        private mutating func escape() throws {
            let next = try rawByte()
            switch next {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scratch.append(next)
            case UInt8(ascii: "b"): scratch.append(0x08)
            case UInt8(ascii: "f"): scratch.append(0x0c)
            case UInt8(ascii: "n"): scratch.append(0x0a)
            case UInt8(ascii: "r"): scratch.append(0x0d)
            case UInt8(ascii: "t"): scratch.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = UInt32(try hexQuad())
                if (0xD800..<0xDC00).contains(scalar) {
                    guard try rawByte() == UInt8(ascii: "\\"), try rawByte() == UInt8(ascii: "u") else {
                        throw failure("a lone surrogate")
                    }
                    let low = UInt32(try hexQuad())
                    guard (0xDC00..<0xE000).contains(low) else { throw failure("a lone surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let character = Unicode.Scalar(scalar) else { throw failure("a lone surrogate") }
                scratch += Array(String(Character(character)).utf8)
            default: throw failure("an unknown escape")
            }
        }

        private mutating func hexQuad() throws -> UInt16 {
            var value: UInt16 = 0
            for _ in 0..<4 {
                let digit = try rawByte()
                let nibble: UInt8
                switch digit {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = digit - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = digit - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = digit - UInt8(ascii: "A") + 10
                default: throw failure("a bad \\u escape")
                }
                value = value << 4 | UInt16(nibble)
            }
            return value
        }

        /// Skips a value of a key this reader does not know (a later format's).
        mutating func skipValue(depth: Int = 0) throws {
            guard depth < 32 else { throw failure("values nested too deep") }
            switch try peek() {
            case UInt8(ascii: "{"): try object { reader, _ in try reader.skipValue(depth: depth + 1) }
            case UInt8(ascii: "["): try array { try $0.skipValue(depth: depth + 1) }
            case UInt8(ascii: "\""): _ = try string()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            default:
                var length = 0
                while try refill(), Self.numberBytes.contains(buffer[position]) {
                    position += 1
                    length += 1
                }
                guard length > 0 else { throw failure("expected a value") }
            }
        }

        private static let numberBytes = Set("+-.0123456789eE".utf8)

        /// Only whitespace may follow the manifest.
        mutating func finish() throws {
            try skipWhitespace()
            guard try !refill() else { throw failure("bytes after the manifest") }
        }

        private mutating func literal(_ word: StaticString) throws {
            try skipWhitespace()
            for expected in UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount) {
                guard try rawByte() == expected else { throw failure("expected \(word)") }
            }
        }

        private mutating func expect(_ expected: UInt8) throws {
            guard try byte() == expected else { throw failure("expected \(Character(Unicode.Scalar(expected)))") }
        }

        /// The next byte that is not whitespace, consumed.
        private mutating func byte() throws -> UInt8 {
            let next = try peek()
            position += 1
            return next
        }

        /// The next byte that is not whitespace, left in place.
        private mutating func peek() throws -> UInt8 {
            try skipWhitespace()
            guard try refill() else { throw failure("the manifest ends early") }
            return buffer[position]
        }

        private mutating func rawByte() throws -> UInt8 {
            guard try refill() else { throw failure("the manifest ends early") }
            defer { position += 1 }
            return buffer[position]
        }

        private mutating func skipWhitespace() throws {
            while try refill(), [0x20, 0x0a, 0x0d, 0x09].contains(buffer[position]) { position += 1 }
        }

        /// Whether a byte is at `position`, reading more when the buffer is used up.
        private mutating func refill() throws -> Bool {
            if position < filled { return true }
            offset += filled
            position = 0
            filled = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
            return filled > 0
        }

        func failure(_ reason: String) -> SnapshotError {
            .corrupt("the manifest does not parse: \(reason) (byte \(offset + position))")
        }
    }
}
