import FoundationEssentials
import Glibc
import SessionCrypto
import SystemSupport

/// One file of a session as a snapshot knows it.
public struct FileRecord: Codable, Hashable, Sendable {
    public var size: Int64
    /// Keyed BLAKE2b of the content (hex in JSON): reveals nothing about the content without the key.
    public var contentID: ContentID
    /// How the file looked on disk when it was read: while it still looks the same, its
    /// content is taken as unchanged without reading it again. Nil when the file was read
    /// too soon after its last write for its mtime to be trusted (see `SnapshotWriter`).
    public var fingerprint: FileState?
}

/// What one snapshot holds, stored encrypted as the last entry of its archive, as JSON Lines
/// that `ManifestJSON` writes and reads a line at a time.
public struct SnapshotManifest: Sendable {
    /// 4: `stateDigest` is a sum of the files' line hashes, which a change updates (FORMAT.md).
    /// 3: the store's keys name sessions by keyed ids; the manifest itself is as in 2.
    public static let currentFormatVersion = 4
    /// 2: snapshot ids carry their write attempt's tag. A session moved from version 2 keeps its
    /// snapshots byte for byte, and a chain of version 3 goes on in version 4, so all are read,
    /// each manifest's digest checked by its own version's rule.
    static let readableFormatVersions = 2...currentFormatVersion
    /// The archive entry that carries the manifest; file contents are under `filePrefix`.
    static let entryName = "manifest.jsonl"
    static let filePrefix = "files/"

    public var formatVersion = SnapshotManifest.currentFormatVersion
    public var session: String
    public var id: SnapshotID
    public var kind: SnapshotKind
    /// The snapshot this one follows; nil for the first of a session.
    public var parent: SnapshotID?
    public var createdAt: Date
    /// A base: every file. A delta: the files created or changed since `parent`.
    public var files: SessionState
    /// A delta: the names removed since `parent`, in name order (a reader refuses any other).
    public var deleted: [String]
    /// The whole session after this snapshot, so a restore can check what it rebuilt.
    public var stateFileCount: Int
    public var stateByteCount: Int64
    /// FORMAT.md's digest of that state, by the rule of `formatVersion` (`SessionState.digest`).
    public var stateDigest: String
    /// The session's identity after this snapshot (`SessionFormat`): nil for a tombstone, a
    /// session format without one, a manifest written before identities were recorded, or a
    /// snapshot that did not read the credentials of a session whose identity was not known yet.
    public var identity: SessionIdentity? = nil

    /// The session state after applying this snapshot on top of `previous`.
    public func applied(to previous: SessionState) -> SessionState {
        switch kind {
        case .base: return files
        case .tombstone: return SessionState()
        case .delta:
            var changes: [(name: String, record: FileRecord?)] = deleted.map { ($0, nil) }
            changes.reserveCapacity(deleted.count + files.count)
            for (name, record) in files { changes.append((name, record)) }
            return previous.applying(changes)
        }
    }

    /// Whether this snapshot may come right after `previous` in a chain: a delta must name it
    /// as its parent (a delta applied to another state would rebuild the wrong session).
    func follows(_ previous: SnapshotID?) -> Bool { kind != .delta || parent == previous }

    /// The session state a chain's manifests (base first) rebuild, checked against the state
    /// the last one records: what a restore of that snapshot must produce.
    static func rebuiltState(_ chain: [SnapshotManifest], session: SessionID) throws -> SessionState {
        var state = chain.reduce(into: SessionState()) { state, manifest in state = manifest.applied(to: state) }
        // A digest of version 4 is computed once for the check and kept: a replicator's uploads update it.
        if let last = chain.last, last.formatVersion >= 4 { state.keepDigest() }
        guard let last = chain.last, state.digest(formatVersion: last.formatVersion) == last.stateDigest,
            state.count == last.stateFileCount,
            state.byteCount == last.stateByteCount
        else {
            throw SnapshotError.corrupt(
                "the rebuilt session \(session) does not match snapshot \(chain.last.map { "\($0.id)" } ?? "-")'s manifest")
        }
        return state
    }

    package static func decode(_ bytes: [UInt8]) throws -> SnapshotManifest {
        try ManifestJSON.read(from: BufferSource(bytes))
    }
}

/// The JSON spelling of what sync-agent stores: keys sorted, dates ISO 8601 (FORMAT.md).
enum StoredJSON {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }

    static func encode(_ value: some Encodable) throws -> [UInt8] {
        Array(try encoder().encode(value))
    }

    /// Decodes a versioned document: its `formatVersion` is checked first, so an older or newer
    /// format says so rather than failing on whichever field changed.
    static func decode<Value: Decodable>(_ type: Value.Type, from bytes: [UInt8], formatVersions: ClosedRange<Int>, what: String) throws -> Value {
        let version = try decode(FormatVersion.self, from: bytes).formatVersion
        guard formatVersions.contains(version) else {
            throw SnapshotError.unsupportedFormat(
                "\(what) has unsupported format version \(version) (this sync-agent reads versions \(formatVersions.lowerBound) to \(formatVersions.upperBound))")
        }
        return try decode(type, from: bytes)
    }

    private struct FormatVersion: Decodable {
        var formatVersion: Int
    }

    static func decode<Value: Decodable>(_ type: Value.Type, from bytes: [UInt8]) throws -> Value {
        do {
            return try decoder().decode(type, from: Data(bytes))
        } catch {
            throw SnapshotError.corrupt("\(type) does not parse: \(error)")
        }
    }
}

/// The per-session commit point. A snapshot exists for readers only once the head names it.
/// `generation` is the ownership claim used for fencing: an agent that starts serving a
/// session raises it, and a writer whose generation is no longer the head's has been fenced.
public struct SessionHead: Codable, Sendable, Equatable {
    /// 4: as 3; its manifests' state digests are sums (a reader of 3 must not write such a store).
    /// 3: the head names its session (`session`), which its key no longer does (FORMAT.md).
    public static let currentFormatVersion = 4
    /// 2: `latest` and `base` carry their write attempt's tag; the session is its key's.
    static let readableFormatVersions = 2...currentFormatVersion

    public var formatVersion = SessionHead.currentFormatVersion
    /// The session's id (`SessionID.rawValue`); nil in a head of version 2. `SessionStore` sets it.
    public var session: String?
    public var generation: UInt64
    /// Which process claimed the session: "host/pid/random", for the message a fenced agent
    /// prints, and to tell two processes of one agent apart.
    public var owner: String
    /// The agent holding the session (`AgentIdentity.id`, stable across its restarts), whose
    /// lease says whether it is alive; nil in heads written before leases (nobody holds them).
    public var agent: String?
    /// Set by the holder's release, naming its final snapshot; cleared by the next claim.
    public var released: Release?
    public var latest: SnapshotID?
    public var latestKind: SnapshotKind?
    /// The base the latest snapshot's chain starts from.
    public var base: SnapshotID?
    public var updatedAt: Date
    /// The snapshot retention keeps for a registered identity the session lost; nil when none.
    public var identityHold: IdentityHold?

    public init(
        generation: UInt64, owner: String, latest: SnapshotID?, latestKind: SnapshotKind?, base: SnapshotID?, updatedAt: Date,
        identityHold: IdentityHold? = nil
    ) {
        self.generation = generation
        self.owner = owner
        self.latest = latest
        self.latestKind = latestKind
        self.base = base
        self.updatedAt = updatedAt
        self.identityHold = identityHold
    }

    public var isTombstoned: Bool { latestKind == .tombstone }

    /// A holder's release of the session (FORMAT.md, "Leases and handoff").
    public struct Release: Codable, Sendable, Equatable {
        /// The final snapshot the holder committed; nil when the session never had one.
        public var snapshot: SnapshotID?
        public var at: Date

        public init(snapshot: SnapshotID?, at: Date) {
            self.snapshot = snapshot
            self.at = at
        }
    }

    package static func decode(_ bytes: [UInt8]) throws -> SessionHead {
        let head = try StoredJSON.decode(SessionHead.self, from: bytes, formatVersions: readableFormatVersions, what: "the head")
        guard head.formatVersion < 3 || head.session != nil else { throw SnapshotError.corrupt("the head has no session") }
        return head
    }
}

/// What can go wrong with a session's snapshots, beyond the store itself.
public enum SnapshotError: Error, CustomStringConvertible, Sendable, Equatable {
    /// An object did not decrypt, did not parse, or did not match its manifest.
    case corrupt(String)
    /// Another agent claimed the session: this one must stop writing it.
    case fenced(session: String, by: String)
    /// The session has no committed snapshot.
    case notFound(String)
    /// A local file or directory could not be read or written.
    case io(String)
    /// A head or manifest written in a format version this agent does not read (an older or
    /// newer sync-agent's store).
    case unsupportedFormat(String)
    /// No key of the keyring opens the object: it names a key id none of them has.
    case wrongKey(String)
    /// The session's snapshots are stored but its head is not: which one is its state is unknown.
    case headMissing(String)
    /// The head names an older snapshot than a chain the store holds above it that another head
    /// must have committed (`SessionStore.newerChain`): an old head put back over a newer one.
    case headBehind(String)
    /// An object listed a moment before is gone when it is downloaded (a `prune` beside the read).
    case changedDuringRead(String)

    public var description: String {
        switch self {
        case .corrupt(let reason): "corrupt snapshot: \(reason)"
        case .fenced(let session, let owner): "session \(session) was claimed by another agent (\(owner)); this agent stopped writing it"
        case .notFound(let reason): reason
        case .io(let reason), .unsupportedFormat(let reason), .wrongKey(let reason), .headMissing(let reason),
            .headBehind(let reason), .changedDuringRead(let reason):
            reason
        }
    }
}
