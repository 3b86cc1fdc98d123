import Crypto
import FoundationEssentials
import Glibc
import S3Client
import SessionArchive

/// One snapshot object as a listing shows it: everything its key says, and the store's size and time.
public struct SnapshotEntry: Sendable, Equatable {
    public var id: SnapshotID
    public var kind: SnapshotKind
    /// The tag of the snapshot this one follows, at the sequence before; nil for a session's first.
    public var parentTag: SnapshotTag?
    public var size: Int64
    public var lastModified: Date?

    public init(id: SnapshotID, kind: SnapshotKind, parentTag: SnapshotTag?, size: Int64, lastModified: Date?) {
        self.id = id
        self.kind = kind
        self.parentTag = parentTag
        self.size = size
        self.lastModified = lastModified
    }
}

/// A session's objects in one store: its head and snapshots, encrypted and decrypted here.
public struct SessionStore: Sendable {
    public let store: any ObjectStore
    public let keyring: Keyring

    public init(store: any ObjectStore, keyring: Keyring) {
        self.store = store
        self.keyring = keyring
    }

    /// Proves the store answers, cheaply: lists a prefix that holds nothing. Start-up checks
    /// and the sidecar's readiness use it.
    public func probe() async throws(StoreError) {
        _ = try await store.list(prefix: SessionLayout.root + ".sync-agent-check")
    }

    /// Every session that has objects in the store.
    public func sessions() async throws(StoreError) -> [SessionID] {
        SessionLayout.sessionIDs(in: try await store.list(prefix: SessionLayout.root).map(\.key))
    }

    /// The head and its ETag, or nil when the session was never committed.
    public func head(_ session: SessionID) async throws -> (head: SessionHead, etag: String)? {
        guard let object = try await store.get(SessionLayout.headKey(session)) else { return nil }
        let identity = SessionLayout.identity(session, objectName: "head")
        do {
            return (try SessionHead.decode(try decrypt(object.bytes, keyring: keyring, identity: identity)), object.info.etag)
        } catch let error as CryptoError {
            throw SnapshotError.corrupt("head of session \(session): \(error)")
        }
    }

    /// Writes the head; with a condition, it is the fencing and commit step.
    @discardableResult
    public func writeHead(_ head: SessionHead, session: SessionID, condition: WriteCondition?) async throws -> String {
        let identity = SessionLayout.identity(session, objectName: "head")
        let bytes = encrypt(try head.encoded(), key: keyring.primary, identity: identity)
        return try await store.put(SessionLayout.headKey(session), bytes: bytes, condition: condition)
    }

    /// Every snapshot object of the session, committed or not, oldest first.
    public func snapshots(_ session: SessionID) async throws(StoreError) -> [SnapshotEntry] {
        try await store.list(prefix: SessionLayout.snapshotsPrefix(session)).compactMap { info in
            SessionLayout.parseSnapshotKey(info.key, session: session).map {
                SnapshotEntry(id: $0.id, kind: $0.kind, parentTag: $0.parentTag, size: info.size, lastModified: info.lastModified)
            }
        }.sorted { $0.id < $1.id }
    }

    /// The snapshots a restore of the head's latest applies, base first.
    public func chain(_ session: SessionID, head: SessionHead) async throws -> [SnapshotEntry] {
        guard let latest = head.latest else { throw SnapshotError.notFound("session \(session) has no snapshot") }
        let committed = Self.committed(try await snapshots(session), head: head)
        guard let last = committed[latest.sequence], last.id == latest else {
            throw SnapshotError.notFound("snapshot \(latest) of session \(session) is not in the store")
        }
        return try Self.chain(to: last, in: committed, session: session)
    }

    /// The committed history, by sequence: the objects the head committed, one per sequence.
    ///
    /// It is a walk from the head's latest back through the parent tags each key names. Objects
    /// off the walk were never committed: a writer still committing (above the head), a racing
    /// writer that lost, a retry after a lost reply, a fenced or crashed writer. Where the walk
    /// meets a snapshot a prune deleted, it carries on from the newest object below that
    /// sequence: a prune deletes the uncommitted objects below the head before it deletes any
    /// snapshot (`RetentionPolicy.plan`), so below such a gap only committed objects remain.
    /// (Should several remain at that sequence, the newest generation, then the greatest tag,
    /// is taken: objects damaged or deleted by hand are verify's to report.)
    public static func committed(_ entries: [SnapshotEntry], head: SessionHead) -> [UInt64: SnapshotEntry] {
        guard let latest = head.latest else { return [:] }
        let byLink = Dictionary(entries.map { (Link(sequence: $0.id.sequence, tag: $0.id.tag), $0) }) { first, _ in first }
        let newestFirst = entries.filter { $0.id.generation <= head.generation }.sorted { $0.id > $1.id }
        var committed: [UInt64: SnapshotEntry] = [:]
        var wanted: Link? = Link(sequence: latest.sequence, tag: latest.tag)
        while let link = wanted {
            let found = byLink[link] ?? newestFirst.first { $0.id.sequence < link.sequence }
            guard let entry = found else { break }
            committed[entry.id.sequence] = entry
            wanted = entry.id.sequence > 0 ? entry.parentTag.map { Link(sequence: entry.id.sequence - 1, tag: $0) } : nil
        }
        return committed
    }

    /// A snapshot as its child's key names it.
    private struct Link: Hashable {
        var sequence: UInt64
        var tag: SnapshotTag
    }

    /// `last` and the committed snapshots before it back to its base (or tombstone), base first.
    public static func chain(to last: SnapshotEntry, in committed: [UInt64: SnapshotEntry], session: SessionID) throws
        -> [SnapshotEntry]
    {
        var chain: [SnapshotEntry] = [last]
        while let link = chain.last, link.kind == .delta {
            guard link.id.sequence > 0, let parentTag = link.parentTag, let previous = committed[link.id.sequence - 1],
                previous.id.tag == parentTag
            else {
                throw SnapshotError.corrupt("session \(session): the chain to \(last.id) has a gap before \(link.id.sequence)")
            }
            chain.append(previous)
        }
        return chain.reversed()
    }

    public func putSnapshot(_ session: SessionID, _ entry: SnapshotEntry, bytes: [UInt8]) async throws(StoreError) {
        try await store.put(SessionLayout.snapshotKey(session, entry), bytes: bytes, condition: nil)
    }

    func putSnapshot(_ session: SessionID, _ entry: SnapshotEntry, spool: SnapshotSpool) async throws(StoreError) {
        try await spool.upload(to: store, key: SessionLayout.snapshotKey(session, entry))
    }

    public func snapshotBytes(_ session: SessionID, _ entry: SnapshotEntry) async throws -> [UInt8] {
        guard let object = try await store.get(SessionLayout.snapshotKey(session, entry)) else {
            throw SnapshotError.corrupt("snapshot \(entry.id) of session \(session) vanished from the store")
        }
        return object.bytes
    }

    /// Downloads one snapshot and checks it whole (authenticated, every file against the
    /// manifest), returning its manifest; nil when the object is not in the store.
    public func manifest(_ session: SessionID, _ entry: SnapshotEntry) async throws -> SnapshotManifest? {
        guard let object = try await DownloadedObject(SessionLayout.snapshotKey(session, entry), from: store) else { return nil }
        return try SnapshotReader(keyring: keyring, limits: .sessionDirectory)
            .manifest(of: object.source, session: session, entry: entry)
    }
}
