import SessionCrypto
import FoundationEssentials
import Glibc
import SessionArchive
import SystemSupport

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

/// A session's head and snapshot listing, read by `SessionStore.stored`.
public struct StoredSession: Sendable {
    public let session: SessionID
    public let head: SessionHead
    /// When the store says the head object was written.
    public let headWritten: Date?
    /// Every snapshot object, committed or not, oldest first.
    public let entries: [SnapshotEntry]

    /// `SessionStore.committed` of this head and listing.
    public func committed() throws(SnapshotError) -> CommittedHistory? {
        try SessionStore.committed(entries, head: head, session: session)
    }

    /// The newest chain of snapshots above the head's latest that another, newer head must have
    /// committed, oldest first; empty when there is none (`checkHeadIsNewest` throws
    /// `headBehind` when there is one).
    ///
    /// Objects above the head's sequence are normal: a writer uploads its next snapshot before
    /// the head that names it, and one that lost a race, crashed or was fenced leaves its upload
    /// there. But a writer only uploads a snapshot whose parent is the snapshot the head named
    /// when it read it: a committed one. So an object above the head whose key names another
    /// object above the head as its parent proves that parent was committed, by a head newer
    /// than this one, when the chain from it links back, tag by tag, to the head's latest (or,
    /// for a head naming none, to a session's first snapshot): this head was put back over a
    /// newer one. A writer's uploads in flight, one per sequence above the head, never link so.
    ///
    /// The one legitimate such chain: the hybrid mirror copies the snapshots S3 is missing
    /// before it replaces S3's head, so S3 holds a linked chain above its head until the head
    /// follows. Those objects are written after the head object; a head put back is written after
    /// them. So a link counts only when the store lists the head as written after the object that
    /// proves it (or either time is unknown).
    public func newerChain() -> [SnapshotEntry] {
        let above = entries.filter { $0.id.sequence > (head.latest?.sequence ?? 0) }
        func linksToHead(_ entry: SnapshotEntry) -> Bool {
            guard let latest = head.latest else { return entry.id.sequence == 1 && entry.parentTag == nil }
            return entry.id.sequence == latest.sequence + 1 && entry.parentTag == latest.tag
        }
        // The chain reaching each object above the head from the head's latest, oldest first.
        var chains: [SnapshotID: [SnapshotEntry]] = [:]
        var newest: [SnapshotEntry] = []
        for entry in above {  // oldest first: a parent before its children
            let chain: [SnapshotEntry]
            if linksToHead(entry) {
                chain = [entry]
            } else if let parent = above.first(where: { $0.isParent(of: entry) }), let parentChain = chains[parent.id] {
                chain = parentChain + [entry]
            } else {
                continue
            }
            chains[entry.id] = chain
            let writtenBefore = headWritten.flatMap { head in entry.lastModified.map { $0 < head } } ?? true
            if chain.count >= 2, writtenBefore, chain.count > newest.count { newest = chain }
        }
        return newest
    }

    /// Throws `SnapshotError.headBehind` when `newerChain` finds one.
    public func checkHeadIsNewest() throws(SnapshotError) {
        let newer = newerChain()
        guard let last = newer.last else { return }
        throw .headBehind(
            "the head of session \(session) names \(head.latest.map { "snapshot \($0)" } ?? "no snapshot"), but the store holds a "
                + "newer committed chain up to \(last.id) above it: an older head was put back over a newer one (restoring it would "
                + "roll the session back); `restore --snapshot \(last.id.label) \(session)` restores the newest")
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

    /// The largest head object read. Its JSON is a few hundred bytes (the owner is a host name, a
    /// pid and a random part); a larger one is not a head, and reading it whole could take the
    /// memory of every session.
    public static let maxHeadSize: Int64 = 16 << 10

    /// The head and its ETag, or nil when the session was never committed.
    public func head(_ session: SessionID) async throws -> (head: SessionHead, etag: String)? {
        guard let object = try await store.get(SessionLayout.headKey(session), maxSize: Self.maxHeadSize) else { return nil }
        return (try decodeHead(object.bytes, session: session), object.info.etag)
    }

    /// The session as a reader of its history needs it: the head, then the listing of its
    /// snapshots (in this order, as `SnapshotPruner` relies on). Nil when the store has neither;
    /// throws `SnapshotError.headMissing` when it has snapshots but no head: which one is the
    /// session's state is then unknown, which is a failure of the session, not an absence.
    public func stored(_ session: SessionID) async throws -> StoredSession? {
        let object = try await store.get(SessionLayout.headKey(session), maxSize: Self.maxHeadSize)
        let entries = try await snapshots(session)
        guard let object else {
            if entries.isEmpty { return nil }
            throw SnapshotError.headMissing(
                "session \(session) has \(entries.count) snapshot object(s) in \(store.location) but no head: which one is its state is unknown")
        }
        return StoredSession(
            session: session, head: try decodeHead(object.bytes, session: session), headWritten: object.info.lastModified,
            entries: entries)
    }

    /// A head object's bytes as stored, decrypted and decoded.
    func decodeHead(_ bytes: [UInt8], session: SessionID) throws -> SessionHead {
        let identity = SessionLayout.identity(session, objectName: "head")
        do {
            return try SessionHead.decode(try decrypt(bytes, keyring: keyring, identity: identity))
        } catch let error as CryptoError {
            if case .unknownKeyID = error { throw SnapshotError.wrongKey("head of session \(session): \(error)") }
            throw SnapshotError.corrupt("head of session \(session): \(error)")
        }
    }

    /// Writes the head; with a condition, it is the fencing and commit step.
    @discardableResult
    public func writeHead(_ head: SessionHead, session: SessionID, condition: WriteCondition?) async throws -> String {
        let identity = SessionLayout.identity(session, objectName: "head")
        let bytes = encrypt(try head.encoded(), key: keyring.primary, identity: identity)
        return try await store.put(SessionLayout.headKey(session), body: .bytes(bytes), condition: condition)
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
            throw SnapshotError.changedDuringRead(
                "snapshot \(entry.id.tagged) of session \(session) was listed but is gone from \(store.location) (deleted meanwhile, by a prune beside this read?)")
        }
        return object
    }

    /// Downloads one snapshot and checks it whole (authenticated, every file against the
    /// manifest, with `checkingDatabases` every SQLite database against `PRAGMA integrity_check`),
    /// returning its manifest; nil when the object is not in the store.
    public func manifest(_ session: SessionID, _ entry: SnapshotEntry, checkingDatabases: Bool = false) async throws
        -> SnapshotManifest?
    {
        guard let object = try await DownloadedSnapshot(SessionLayout.snapshotKey(session, entry), size: entry.size, from: store)
        else { return nil }
        // Decrypting, decompressing and hashing a whole snapshot blocks its thread: off the pool.
        let reader = SnapshotReader(keyring: keyring, limits: .sessionDirectory)
        return try await runBlocking { () throws in
            try reader.manifest(of: try object.source(), session: session, entry: entry, checkingDatabases: checkingDatabases)
        }
    }
}
