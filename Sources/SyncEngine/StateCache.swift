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
    /// The largest cache file read: a session's manifest of every file, 150 bytes a file or so,
    /// for the largest sessions. Read as a stream (a chunk and a line at a time), never whole.
    static let maxByteCount: Int64 = 1 << 30
    /// The header before the manifest lines: a few numbers and a snapshot id.
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
            let source = try DecryptingSource(keyring: keyring, identity: Self.identity(session), upstream: FileDescriptorSource(file))
            let length = try Self.readExactly(4, from: source).reduce(0) { $0 << 8 | Int($1) }
            guard length <= Self.maxHeaderByteCount else { return .failure(.unreadable("a header of \(length) bytes")) }
            let header = try StoredJSON.decode(
                Header.self, from: try Self.readExactly(length, from: source), formatVersions: Self.formatVersion...Self.formatVersion,
                what: "the state cache")
            guard header.snapshot == snapshot else { return .failure(.otherSnapshot) }
            // Read to its end: only then is the whole file authenticated.
            let manifest = try ManifestJSON.read(from: source)
            let state = manifest.files
            guard manifest.session == session.rawValue, manifest.id == snapshot, state.count == manifest.stateFileCount,
                state.byteCount == manifest.stateByteCount, state.digest == manifest.stateDigest
            else { return .failure(.unreadable("its files do not match its own counts and digest")) }
            return .success(Entry(
                snapshot: snapshot, state: state, identity: manifest.identity, baseBytes: header.baseBytes,
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
        let header = try StoredJSON.encode(Header(
            formatVersion: Self.formatVersion, snapshot: entry.snapshot, baseBytes: entry.baseBytes, deltaBytes: entry.deltaBytes,
            deltaCount: entry.deltaCount))
        try (withUnsafeBytes(of: UInt32(header.count).bigEndian) { [UInt8]($0) } + header).withUnsafeBytes { try sink.write($0) }
        let state = entry.state
        try ManifestJSON.write(SnapshotManifest(
            session: session.rawValue, id: entry.snapshot, kind: .base, parent: nil, createdAt: Date(), files: state, deleted: [],
            stateFileCount: state.count, stateByteCount: state.byteCount, stateDigest: state.digest, identity: entry.identity)
        ) { try sink.write($0) }
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
        var snapshot: SnapshotID
        var baseBytes: Int64
        var deltaBytes: Int64
        var deltaCount: Int
    }

    private static func readExactly(_ count: Int, from source: ByteSource) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let read = try bytes.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...])) }
            guard read > 0 else { throw SnapshotError.corrupt("the state cache ends inside its header") }
            filled += read
        }
        return bytes
    }
}
