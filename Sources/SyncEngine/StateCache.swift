import FoundationEssentials
import Glibc
import SessionCrypto
import SystemSupport

/// What a claim learns of a session's committed state from its chain (every base and delta
/// downloaded, decrypted and checked), kept in a local file per session so that the next start
/// of the same agent reads one small file instead: a restart of 1,000 sessions downloaded 1,000
/// chains before it was ready. Written after each commit and after each load from the store;
/// used only when the head read from the store names exactly the snapshot the file describes.
///
/// The file is encrypted and authenticated like a store object (FORMAT.md, "Local state cache"),
/// bound to its session and to a name no store object has, so it can never be taken for a store
/// object or for another session's cache. Anything else than a match (no file, another
/// snapshot, another key, a damaged or foreign file, another version) is a miss, and the caller
/// reads the chain as it would without a cache. A cache never changes what is committed.
public struct StateCache: Sendable {
    /// What a replicator keeps of its session after loading or committing `snapshot`.
    public struct Entry: Sendable {
        public var snapshot: SnapshotID
        public var state: SessionState
        public var identity: SessionIdentity?
        /// The chain's base size, and the deltas after it (the compaction policy's inputs).
        public var baseBytes: Int64
        public var deltaBytes: Int64
        public var deltaCount: Int
    }

    /// Why a cache was not used, for the debug line.
    public enum Miss: Error, Equatable, CustomStringConvertible {
        case absent
        case otherSnapshot
        case unreadable(String)

        public var description: String {
            switch self {
            case .absent: "no cache for the session"
            case .otherSnapshot: "the cache describes another snapshot than the head's"
            case .unreadable(let reason): "unreadable cache: \(reason)"
            }
        }
    }

    public let directory: String
    private let keyring: Keyring

    static let formatVersion = 1
    /// The object name bound into the associated data, which no store object has.
    static let objectName = "cache/state"
    /// The largest cache file read: about 150 bytes a file, for the largest sessions. Read as a
    /// stream (a 64 KiB chunk and a record at a time), never whole.
    static let maxByteCount: Int64 = 1 << 30
    /// The header before the file table: a few numbers, a snapshot id, an identity.
    static let maxHeaderByteCount = 4 << 10

    public init(directory: String, keyring: Keyring) {
        self.directory = directory
        self.keyring = keyring
    }

    /// Creates the directory (and its missing parents, 0700) and checks the agent can write it.
    public func prepare() throws(SystemError) {
        var path = ""
        for component in directory.split(separator: "/") {
            path += "/" + component
            if mkdir(path, 0o700) != 0, errno != EEXIST { throw SystemError("mkdir", path: path) }
        }
        if access(directory, W_OK | X_OK) != 0 { throw SystemError("access", path: directory) }
    }

    /// The cache of the session whose store place is `place`, when it describes `snapshot`.
    public func read(_ session: SessionID, place: SessionPlace, snapshot: SnapshotID) -> Result<Entry, Miss> {
        let path = path(of: place)
        let raw = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard raw >= 0 else { return .failure(errno == ENOENT ? .absent : .unreadable(String(cString: strerror(errno)))) }
        let file = FileDescriptor(owning: raw, path: path)
        var status = stat()
        guard fstat(raw, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return .failure(.unreadable("not a regular file")) }
        guard Int64(status.st_size) <= Self.maxByteCount else { return .failure(.unreadable("larger than \(Self.maxByteCount) bytes")) }
        do {
            let reader = RecordReader(try DecryptingSource(
                keyring: keyring, identity: Self.identity(session), upstream: FileDescriptorSource(file)))
            let length = Int(try reader.integer(UInt32.self))
            guard length <= Self.maxHeaderByteCount else { return .failure(.unreadable("a header of \(length) bytes")) }
            let header = try StoredJSON.decode(
                Header.self, from: Array(try reader.bytes(length)), formatVersions: Self.formatVersion...Self.formatVersion,
                what: "the state cache")
            guard header.snapshot == snapshot else { return .failure(.otherSnapshot) }
            guard header.session == session.rawValue, header.fileCount >= 0 else { return .failure(.unreadable("a header of another session")) }
            var files = SessionState.Builder()
            var previous: String?
            for _ in 0..<header.fileCount {
                let (name, record) = try reader.file()
                guard previous.map({ SessionState.precedes($0, name) }) ?? true, files.add(name, record) else {
                    return .failure(.unreadable("names out of order"))
                }
                previous = name
            }
            // Only a source read to its end is authenticated whole.
            guard try reader.isAtEnd() else { return .failure(.unreadable("more bytes than its files")) }
            var state = files.build()
            // Computed once for the check and kept: the replicator's uploads update it.
            state.keepDigest()
            guard state.byteCount == header.stateByteCount, state.digest(formatVersion: SnapshotManifest.currentFormatVersion) == header.stateDigest else {
                return .failure(.unreadable("its files do not match its own digest"))
            }
            return .success(Entry(
                snapshot: snapshot, state: state, identity: header.identity, baseBytes: header.baseBytes,
                deltaBytes: header.deltaBytes, deltaCount: header.deltaCount))
        } catch {
            return .failure(.unreadable("\(error)"))
        }
    }

    /// Replaces the session's cache by `entry`, atomically: a temporary file in the directory,
    /// made durable, renamed over the old one. (The directory is not synced: a rename lost in a
    /// crash leaves the previous cache, which describes an older snapshot and is not used.)
    public func write(_ entry: Entry, session: SessionID, place: SessionPlace) throws {
        let path = path(of: place)
        let temporaryPath = "\(directory)/.\(place.component).\(String(UInt64.random(in: .min ... .max), radix: 16))"
        let raw = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard raw >= 0 else { throw SystemError("create", path: temporaryPath) }
        let file = FileDescriptor(owning: raw, path: temporaryPath)
        var renamed = false
        defer { if !renamed { unlink(temporaryPath) } }
        let sink = EncryptingSink(
            key: keyring.primary, identity: Self.identity(session), downstream: FileDescriptorSink(fileDescriptor: raw, path: temporaryPath))
        let state = entry.state
        let header = try StoredJSON.encode(Header(
            formatVersion: Self.formatVersion, session: session.rawValue, snapshot: entry.snapshot, baseBytes: entry.baseBytes,
            deltaBytes: entry.deltaBytes, deltaCount: entry.deltaCount, fileCount: state.count, stateByteCount: state.byteCount,
            stateDigest: state.digest(formatVersion: SnapshotManifest.currentFormatVersion), identity: entry.identity))
        var chunk: [UInt8] = []
        chunk.reserveCapacity(Self.chunkByteCount + 1024)
        Self.append(UInt32(header.count), to: &chunk)
        chunk += header
        for (name, record) in state {
            Self.append(name, record, to: &chunk)
            if chunk.count >= Self.chunkByteCount {
                try chunk.withUnsafeBytes { try sink.write($0) }
                chunk.removeAll(keepingCapacity: true)
            }
        }
        try chunk.withUnsafeBytes { try sink.write($0) }
        try sink.finish()
        try file.sync()
        guard rename(temporaryPath, path) == 0 else { throw SystemError("rename", path: path) }
        renamed = true
    }

    /// Forgets the session's cache (its directory logged out: nothing of it is claimed again).
    public func remove(place: SessionPlace) {
        unlink(path(of: place))
    }

    /// Named by the session's keyed id, as in the store: no file name names a session.
    private func path(of place: SessionPlace) -> String { "\(directory)/\(place.component)" }

    static func identity(_ session: SessionID) -> ObjectIdentity {
        ObjectIdentity(sessionID: session.rawValue, objectName: objectName)
    }

    private struct Header: Codable {
        var formatVersion: Int
        var session: String
        var snapshot: SnapshotID
        var baseBytes: Int64
        var deltaBytes: Int64
        var deltaCount: Int
        var fileCount: Int
        var stateByteCount: Int64
        var stateDigest: String
        var identity: SessionIdentity?
    }

    /// How much of the file table is gathered before it goes to the encryption.
    private static let chunkByteCount = 64 << 10

    /// One file's record (FORMAT.md, "Local state cache"): name, size, content id, fingerprint.
    private static func append(_ name: String, _ record: FileRecord, to bytes: inout [UInt8]) {
        var name = name
        name.withUTF8 { name in
            append(UInt16(name.count), to: &bytes)
            bytes.append(contentsOf: name)
        }
        append(UInt64(bitPattern: record.size), to: &bytes)
        record.contentID.appendHex(to: &bytes)
        guard let fingerprint = record.fingerprint else {
            bytes.append(0)
            return
        }
        bytes.append(1)
        append(fingerprint.device, to: &bytes)
        append(fingerprint.inode, to: &bytes)
        append(fingerprint.mode, to: &bytes)
        append(UInt64(bitPattern: fingerprint.modificationTime), to: &bytes)
        append(UInt64(bitPattern: fingerprint.size), to: &bytes)
    }

    private static func append<Integer: FixedWidthInteger>(_ value: Integer, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Reads a cache's plaintext a buffer at a time: integers, byte strings, file records.
private final class RecordReader {
    private let source: ByteSource
    private var buffer = [UInt8](repeating: 0, count: 16 << 10)
    private var position = 0
    private var filled = 0

    init(_ source: ByteSource) {
        self.source = source
    }

    /// The next `count` bytes; throws when the plaintext ends first.
    func bytes(_ count: Int) throws -> ArraySlice<UInt8> {
        if filled - position < count {
            if count > buffer.count { buffer += [UInt8](repeating: 0, count: count - buffer.count) }
            buffer.replaceSubrange(0..<filled - position, with: buffer[position..<filled])
            (filled, position) = (filled - position, 0)
            while filled < count {
                let read = try buffer.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...])) }
                guard read > 0 else { throw SnapshotError.corrupt("the state cache ends inside a record") }
                filled += read
            }
        }
        defer { position += count }
        return buffer[position..<position + count]
    }

    func integer<Integer: FixedWidthInteger>(_ type: Integer.Type) throws -> Integer {
        try bytes(MemoryLayout<Integer>.size).reduce(0) { $0 << 8 | Integer($1) }
    }

    func file() throws -> (name: String, record: FileRecord) {
        let nameCount = Int(try integer(UInt16.self))
        guard let name = String(validating: try bytes(nameCount), as: UTF8.self), !name.isEmpty else {
            throw SnapshotError.corrupt("the state cache holds a name that is not a string")
        }
        let size = Int64(bitPattern: try integer(UInt64.self))
        guard let contentID = ContentID(hex: String(decoding: try bytes(2 * ContentID.byteCount), as: UTF8.self)) else {
            throw SnapshotError.corrupt("the state cache holds a content id that is not hex")
        }
        var fingerprint: FileState?
        switch try integer(UInt8.self) {
        case 0: break
        case 1:
            let (device, inode, mode) = (try integer(UInt64.self), try integer(UInt64.self), try integer(UInt32.self))
            let modificationTime = Int64(bitPattern: try integer(UInt64.self))
            fingerprint = FileState(
                size: Int64(bitPattern: try integer(UInt64.self)), mode: mode, modificationTime: modificationTime, inode: inode,
                device: device)
        default: throw SnapshotError.corrupt("the state cache holds a record of an unknown kind")
        }
        return (name, FileRecord(size: size, contentID: contentID, fingerprint: fingerprint))
    }

    /// Whether the plaintext ends here: reading on until the source says so authenticates its end.
    func isAtEnd() throws -> Bool {
        guard position == filled else { return false }
        return try buffer.withUnsafeMutableBytes { try source.read(into: $0) } == 0
    }
}
