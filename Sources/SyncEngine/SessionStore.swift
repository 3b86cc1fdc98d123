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

extension SnapshotEntry {
    /// Whether this is the object `child`'s key names as its parent: the sequence before, with
    /// the parent tag.
    public func isParent(of child: SnapshotEntry) -> Bool {
        child.id.sequence > 0 && id.sequence == child.id.sequence - 1 && child.parentTag == id.tag
    }

    /// Whether the store listed this object as written after `other`; false when either has no time.
    func isNewer(than other: SnapshotEntry) -> Bool {
        guard let time = lastModified, let otherTime = other.lastModified else { return false }
        return time > otherTime
    }
}

/// A session's committed history (`SessionStore.committed`): the snapshot the head names, and
/// the committed snapshot of each sequence before it that is still in the store.
public struct CommittedHistory: Sendable, Equatable {
    /// The head's latest snapshot.
    public let latest: SnapshotEntry
    /// By sequence, `latest` included.
    public let snapshots: [UInt64: SnapshotEntry]

    /// Whether `entry` is the committed object of its sequence (and not an orphan sharing it).
    public func contains(_ entry: SnapshotEntry) -> Bool { snapshots[entry.id.sequence] == entry }

    /// Oldest first.
    public var sorted: [SnapshotEntry] { snapshots.values.sorted { $0.id < $1.id } }

    /// `last` and the committed snapshots before it back to its base (or tombstone), base first.
    public func chain(to last: SnapshotEntry, session: SessionID) throws -> [SnapshotEntry] {
        var chain: [SnapshotEntry] = [last]
        while let link = chain.last, link.kind == .delta {
            guard let previous = snapshots[link.id.sequence &- 1], previous.isParent(of: link) else {
                throw SnapshotError.corrupt("session \(session): the chain to \(last.id.tagged) has a gap before \(link.id.sequence)")
            }
            chain.append(previous)
        }
        return chain.reversed()
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
        return (try decodeHead(object.bytes, session: session), object.info.etag)
    }

    /// A head object's bytes as stored, decrypted and decoded.
    func decodeHead(_ bytes: [UInt8], session: SessionID) throws -> SessionHead {
        let identity = SessionLayout.identity(session, objectName: "head")
        do {
            return try SessionHead.decode(try decrypt(bytes, keyring: keyring, identity: identity))
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
        guard let history = try Self.committed(try await snapshots(session), head: head, session: session) else {
            throw SnapshotError.notFound("session \(session) has no snapshot")
        }
        return try history.chain(to: history.latest, session: session)
    }

    /// The committed history: the objects the head committed, one per sequence; nil when the head
    /// names no snapshot yet. Throws `SnapshotError.notFound` when the object the head names is
    /// not listed: the head's own snapshot is found exactly or not at all, never stood in for by
    /// another object (a blind head write on a store without conditional writes can name an
    /// object a prune deleted as an orphan; the next commit heals that).
    ///
    /// It is a walk from the head's latest back through the parent tags each key names. Objects
    /// off the walk were never committed: a writer still committing (above the head), a racing
    /// writer that lost, a retry after a lost reply, a fenced or crashed writer. Where the walk
    /// meets a snapshot a prune deleted, it carries on from the newest object below that
    /// sequence that was written no later than the snapshot naming the deleted one (a committed
    /// object was uploaded before anything that follows it; an object without a listed time is
    /// taken on trust): a prune deletes the uncommitted objects below the head before it deletes
    /// any snapshot (`RetentionPolicy.plan`), so below such a gap only committed objects remain,
    /// and uploads that land later (a writer paused mid-upload, fenced long ago) are newer than
    /// the snapshot above the gap. (Should several remain at that sequence, the newest
    /// generation, then the greatest tag, is taken: objects damaged or deleted by hand are
    /// verify's to report.)
    public static func committed(_ entries: [SnapshotEntry], head: SessionHead, session: SessionID) throws(SnapshotError)
        -> CommittedHistory?
    {
        guard let latestID = head.latest else { return nil }
        let byLink = Dictionary(entries.map { (Link(sequence: $0.id.sequence, tag: $0.id.tag), $0) }) { first, _ in first }
        guard let latest = byLink[Link(sequence: latestID.sequence, tag: latestID.tag)], latest.id == latestID else {
            throw .notFound("the head of session \(session) names snapshot \(latestID.tagged), which is not in the store")
        }
        // Only a walk that meets a pruned gap needs the entries newest first.
        var newestFirst: [SnapshotEntry]?
        func newestBelowGap(_ link: Link, child: SnapshotEntry) -> SnapshotEntry? {
            let sorted = newestFirst ?? entries.filter { $0.id.generation <= head.generation }.sorted { $0.id > $1.id }
            newestFirst = sorted
            return sorted.first { $0.id.sequence < link.sequence && !$0.isNewer(than: child) }
        }
        var snapshots = [latest.id.sequence: latest]
        var child = latest
        while child.id.sequence > 0, let parentTag = child.parentTag {
            let link = Link(sequence: child.id.sequence - 1, tag: parentTag)
            let found = byLink[link] ?? newestBelowGap(link, child: child)
            guard let parent = found else { break }
            snapshots[parent.id.sequence] = parent
            child = parent
        }
        return CommittedHistory(latest: latest, snapshots: snapshots)
    }

    /// A snapshot as its child's key names it.
    private struct Link: Hashable {
        var sequence: UInt64
        var tag: SnapshotTag
    }

    func putSnapshot(_ session: SessionID, _ entry: SnapshotEntry, spool: SnapshotSpool) async throws(StoreError) {
        try await spool.upload(to: store, key: SessionLayout.snapshotKey(session, entry))
    }

    func putSnapshot(_ session: SessionID, _ entry: SnapshotEntry, downloaded: DownloadedSnapshot) async throws(StoreError) {
        try await downloaded.upload(to: store, key: SessionLayout.snapshotKey(session, entry))
    }

    func downloadSnapshot(_ session: SessionID, _ entry: SnapshotEntry) async throws -> DownloadedSnapshot {
        guard let object = try await DownloadedSnapshot(SessionLayout.snapshotKey(session, entry), size: entry.size, from: store) else {
            throw SnapshotError.corrupt("snapshot \(entry.id) of session \(session) vanished from the store")
        }
        return object
    }

    /// Downloads one snapshot and checks it whole (authenticated, every file against the
    /// manifest), returning its manifest; nil when the object is not in the store.
    public func manifest(_ session: SessionID, _ entry: SnapshotEntry) async throws -> SnapshotManifest? {
        guard let object = try await DownloadedSnapshot(SessionLayout.snapshotKey(session, entry), size: entry.size, from: store)
        else { return nil }
        return try SnapshotReader(keyring: keyring, limits: .sessionDirectory)
            .manifest(of: try object.source(), session: session, entry: entry)
    }
}
