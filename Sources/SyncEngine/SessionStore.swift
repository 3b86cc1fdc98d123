import FoundationEssentials
import Glibc
import SessionArchive
import SessionCrypto
import Synchronization
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

/// A session's objects in one store: its head and snapshots, encrypted and decrypted here, at
/// the session's place (`SessionPlace`): its keyed id, or its name in a store of format version 2
/// whose session no writer has moved yet (`prepareForWriting`).
public struct SessionStore: Sendable {
    public let store: any ObjectStore
    public let keyring: Keyring
    private let known = KnownPlaces()

    public init(store: any ObjectStore, keyring: Keyring) {
        self.store = store
        self.keyring = keyring
    }

    /// Proves the store answers, cheaply: lists a prefix that holds nothing. Start-up checks
    /// and the sidecar's readiness use it.
    public func probe() async throws(StoreError) {
        _ = try await store.list(prefix: SessionLayout.root + ".sync-agent-check")
    }

    /// The store's naming secret; nil when it holds none (written by version 2 only, or empty).
    public func naming() async throws -> StoreNaming? {
        if let naming = known.naming { return naming }
        guard let loaded = try await NamingWraps.load(from: store, keyring: keyring)?.naming else { return nil }
        known.naming = loaded
        return loaded
    }

    /// Where the session's objects are: its keyed place once its head is there, or when the store
    /// holds nothing at its plain place; otherwise the plain place (a session of version 2 not
    /// moved yet, or a move under way: its objects stay there until the keyed head exists).
    public func place(_ session: SessionID) async throws -> SessionPlace {
        if let place = known.place(of: session) { return place }
        let plain = SessionPlace.plain(session)
        guard let naming = try await naming() else { return plain }
        let keyed = SessionPlace.keyed(session, naming: naming)
        if try await store.head(keyed.headKey) != nil {
            known.remember(keyed, for: session)  // a session never moves back
            return keyed
        }
        return try await store.list(prefix: plain.prefix).isEmpty ? keyed : plain
    }

    /// Every session that has objects in the store. A keyed place names its session only in its
    /// head, so each is read; a place whose head is missing or unreadable is listed by its
    /// component as a session id, and reading it then reports why.
    public func sessions() async throws -> [SessionID] {
        let keys = try await store.list(prefix: SessionLayout.root).map(\.key)
        var found = Set(SessionLayout.plainSessionIDs(in: keys))
        let keyedComponents = Set(keys.map { $0.dropFirst(SessionLayout.root.count).prefix { $0 != "/" } }.filter(StoreNaming.isKeyedID).map(String.init))
        guard !keyedComponents.isEmpty else { return found.sorted() }
        let naming = try await naming()
        // A session of version 2 being moved is at both places: its name is known already.
        let moving = Set(naming.map { naming in found.map { SessionPlace.keyed($0, naming: naming).component } } ?? [])
        let named = try await keyedComponents.subtracting(moving).sorted().concurrentMap(limit: Self.headReadsAtOnce) {
            component in try await self.session(at: component, naming: naming)
        }
        found.formUnion(named)
        return found.sorted()
    }

    private static let headReadsAtOnce = 8

    /// The session whose place is `component` (32 hex digits): the one its head names when that
    /// head is of version 3 and `component` is its keyed id; otherwise the component itself as
    /// a name (a session of version 2 so named, or a place whose reading will say what is wrong).
    private func session(at component: String, naming: StoreNaming?) async throws -> SessionID {
        let place = SessionPlace(component: component, isKeyed: true)
        func named(_ name: String?) -> SessionID? {
            guard let name, let id = SessionID(name), let naming, SessionPlace.keyed(id, naming: naming) == place else { return nil }
            return id
        }
        if let object = try await store.get(place.headKey, maxSize: Self.maxHeadSize),
            let plaintext = try? decrypt(object.bytes, keyring: keyring, identity: place.headIdentity(SessionID(component)!)),
            let id = named((try? SessionHead.decode(plaintext))?.session)
        {
            known.remember(place, for: id)
            return id
        }
        // The head is damaged or gone: the name object still names the session, whose reading then says what is wrong.
        if let object = try await store.get(place.nameKey, maxSize: Self.maxNameSize),
            let plaintext = try? decrypt(object.bytes, keyring: keyring, identity: place.nameIdentity),
            let id = named(FileName.decode(plaintext))
        {
            return id
        }
        return SessionID(component)!
    }

    /// A name object holds at most 255 bytes of name, encrypted.
    static let maxNameSize: Int64 = 1 << 10

    /// The largest head object read. Its JSON is a few hundred bytes (the owner is a host name, a
    /// pid and a random part); a larger one is not a head, and reading it whole could take the
    /// memory of every session.
    public static let maxHeadSize: Int64 = 16 << 10

    /// The head and its ETag, or nil when the session was never committed.
    public func head(_ session: SessionID) async throws -> (head: SessionHead, etag: String)? {
        let place = try await place(session)
        guard let object = try await store.get(place.headKey, maxSize: Self.maxHeadSize) else { return nil }
        return (try decodeHead(object.bytes, session: session, place: place), object.info.etag)
    }

    /// The session as a reader of its history needs it: the head, then the listing of its
    /// snapshots (in this order, as `SnapshotPruner` relies on). Nil when the store has neither;
    /// throws `SnapshotError.headMissing` when it has snapshots but no head: which one is the
    /// session's state is then unknown, which is a failure of the session, not an absence.
    public func stored(_ session: SessionID) async throws -> StoredSession? {
        let place = try await place(session)
        let object = try await store.get(place.headKey, maxSize: Self.maxHeadSize)
        let entries = try await snapshots(session, at: place)
        guard let object else {
            if entries.isEmpty { return nil }
            throw SnapshotError.headMissing(
                "session \(session) has \(entries.count) snapshot object(s) in \(store.location) but no head: which one is its state is unknown")
        }
        return StoredSession(
            session: session, head: try decodeHead(object.bytes, session: session, place: place), headWritten: object.info.lastModified,
            entries: entries)
    }

    /// A head object's bytes as stored at `place`, decrypted and decoded; a head of version 3
    /// must name `session` (a head copied from another session's place fails to decrypt; one at
    /// the right place naming another session was written wrong).
    func decodeHead(_ bytes: [UInt8], session: SessionID, place: SessionPlace) throws -> SessionHead {
        let head: SessionHead
        do {
            head = try SessionHead.decode(try decrypt(bytes, keyring: keyring, identity: place.headIdentity(session)))
        } catch let error as CryptoError {
            if case .unknownKeyID = error { throw SnapshotError.wrongKey("head of session \(session): \(error)") }
            throw SnapshotError.corrupt("head of session \(session): \(error)")
        }
        guard head.formatVersion < 3 ? !place.isKeyed : head.session == session.rawValue else {
            throw SnapshotError.corrupt("head of session \(session) at \(place.headKey) names another session")
        }
        return head
    }

    /// The head's bytes for `place`: this version's format, naming the session.
    func encodeHead(_ head: SessionHead, session: SessionID, place: SessionPlace) throws -> [UInt8] {
        var head = head
        head.formatVersion = SessionHead.currentFormatVersion
        head.session = session.rawValue
        return encrypt(head.encoded(), key: keyring.primary, identity: place.headIdentity(session))
    }

    /// Writes the head; with a condition, it is the fencing and commit step. A writer has called
    /// `prepareForWriting` first, so the place is the keyed one (a head of this version written
    /// at a plain place seals it: see `move`).
    @discardableResult
    public func writeHead(_ head: SessionHead, session: SessionID, condition: WriteCondition?) async throws -> String {
        let place = try await place(session)
        let etag = try await store.put(place.headKey, body: .bytes(try encodeHead(head, session: session, place: place)), condition: condition)
        if place.isKeyed { known.remember(place, for: session) }
        return etag
    }

    /// Every snapshot object of the session, committed or not, oldest first.
    public func snapshots(_ session: SessionID) async throws -> [SnapshotEntry] {
        try await snapshots(session, at: try await place(session))
    }

    func snapshots(_ session: SessionID, at place: SessionPlace) async throws(StoreError) -> [SnapshotEntry] {
        entries(try await store.list(prefix: place.snapshotsPrefix), at: place)
    }

    private func entries(_ listed: [StoredObjectInfo], at place: SessionPlace) -> [SnapshotEntry] {
        listed.compactMap { info in
            SessionLayout.parseSnapshotKey(info.key, place: place).map {
                SnapshotEntry(id: $0.id, kind: $0.kind, parentTag: $0.parentTag, size: info.size, lastModified: info.lastModified)
            }
        }.sorted { $0.id < $1.id }
    }

    /// Forgets what was learnt of the session's place, after its objects were deleted.
    func forget(_ session: SessionID) { known.forget(session) }

    /// The keys of these snapshots of the session, where they are now.
    public func snapshotKeys(_ session: SessionID, _ entries: [SnapshotEntry]) async throws -> [String] {
        let place = try await place(session)
        return entries.map(place.snapshotKey)
    }

    /// What a writer does before it writes a session: makes the store's naming secret (or wraps it
    /// for the primary key after a rotation) and moves the session from its plain place of
    /// version 2 to its keyed place (`move`). Every write after it goes to the keyed place.
    public func prepareForWriting(_ session: SessionID, conditionalWrites: Bool) async throws {
        let naming = try await preparedNaming(conditionalWrites: conditionalWrites)
        // Found at its keyed place: moved (leftovers of a move stopped halfway wait for the next start).
        if known.place(of: session)?.isKeyed != true {
            _ = try await move(session, naming: naming, conditionalWrites: conditionalWrites, dryRun: false)
            // Nothing is left at the plain place: the session is at its keyed place from now on,
            // and `place` need not look for its head again (a request per session at every start).
            known.remember(SessionPlace.keyed(session, naming: naming), for: session)
        }
        if !known.isNamed(session) {
            let place = SessionPlace.keyed(session, naming: naming)
            // Named before (every start but the session's first): a look suffices. The conditional
            // write alone wrote the object (fsynced, in the filesystem store) before it found
            // the name there, at every claim of every session.
            if try await store.head(place.nameKey) == nil {
                let bytes = encrypt(FileName.bytes(of: session.rawValue), key: keyring.primary, identity: place.nameIdentity)
                do {
                    try await store.put(place.nameKey, body: .bytes(bytes), condition: conditionalWrites ? .ifAbsent : nil)
                } catch StoreError.preconditionFailed {
                    // Named meanwhile: the name never changes.
                }
            }
            known.markNamed(session)
        }
    }

    /// The naming secret, made or wrapped for the primary key if need be, once per process.
    public func preparedNaming(conditionalWrites: Bool) async throws -> StoreNaming {
        if let naming = known.preparedNaming { return naming }
        let naming = try await NamingWraps.loadOrCreate(in: store, keyring: keyring, conditionalWrites: conditionalWrites)
        known.preparedNaming = naming
        return naming
    }

    /// Moves a session of format version 2 to its keyed place, every step safe to stop at and to
    /// race: (1) seal the plain place, replacing its head by a head of this version, conditionally
    /// on the head read (a writer of the plain place then loses its commit, reloads and finds the
    /// move); (2) copy the committed history byte for byte (a snapshot is bound to the session's
    /// name and its name below the place, not to the place) in sequence order; (3) write the keyed
    /// head if absent; (4) delete the plain place, the seal last. Until (3) readers read the plain
    /// place, sealed or not; from (3) on, the keyed one. Whoever finds a move half done finishes
    /// it. Returns what it moved (or, with `dryRun`, would move); nil when nothing is left at the
    /// plain place.
    ///
    /// `naming` is nil only for a dry run on a store that has no naming secret yet (the first
    /// writer makes it): the keyed place is then unknown.
    public func move(_ session: SessionID, naming: StoreNaming?, conditionalWrites: Bool, dryRun: Bool) async throws -> SessionMove? {
        precondition(dryRun || naming != nil, "a move needs the naming secret")
        let plain = SessionPlace.plain(session)
        let keyedPlace = naming.map { SessionPlace.keyed(session, naming: $0) }
        for _ in 0..<Self.maxMoveRounds {
            let listed = try await store.list(prefix: plain.prefix)
            guard !listed.isEmpty else { return nil }
            var keyedHead: StoredObjectInfo?
            if let keyedPlace { keyedHead = try await store.head(keyedPlace.headKey) }
            guard let object = try await store.get(plain.headKey, maxSize: Self.maxHeadSize) else {
                // Leftovers after the move's deletions (a late upload) go; snapshots with no head anywhere are a
                // headless session, which a writer must not paper over.
                guard keyedHead != nil else {
                    throw SnapshotError.headMissing(
                        "session \(session) has \(listed.count) object(s) at its plain place in \(store.location) but no head: which one is its state is unknown")
                }
                if !dryRun { try await store.delete(listed.map(\.key)) }
                return SessionMove(session: session, place: keyedPlace, copied: [], leftovers: listed.count)
            }
            let head = try decodeHead(object.bytes, session: session, place: plain)
            let history = keyedHead == nil ? try Self.committed(entries(listed, at: plain), head: head, session: session)?.sorted ?? [] : []
            if dryRun { return SessionMove(session: session, place: keyedPlace, copied: history, leftovers: listed.count - history.count - 1) }
            let keyed = keyedPlace!
            if head.formatVersion < SessionHead.currentFormatVersion {
                do {
                    try await store.put(
                        plain.headKey, body: .bytes(try encodeHead(head, session: session, place: plain)),
                        condition: conditionalWrites ? .ifMatch(etag: object.info.etag) : nil)
                } catch StoreError.preconditionFailed {
                    continue  // a writer committed meanwhile: seal its head
                }
            }
            if keyedHead == nil {
                let present = Set(try await store.list(prefix: keyed.snapshotsPrefix).map(\.key))
                for entry in history where !present.contains(keyed.snapshotKey(entry)) {
                    // Gone: another writer finished this move and deleted the plain place.
                    guard let copy = try await DownloadedSnapshot(plain.snapshotKey(entry), size: entry.size, from: store) else { continue }
                    try await copy.upload(to: store, key: keyed.snapshotKey(entry))
                }
                do {
                    // Without conditional writes, at least not over a keyed head another mover wrote meanwhile.
                    let writtenMeanwhile = conditionalWrites ? false : try await store.head(keyed.headKey) != nil
                    if !writtenMeanwhile {
                        try await store.put(
                            keyed.headKey, body: .bytes(try encodeHead(head, session: session, place: keyed)),
                            condition: conditionalWrites ? .ifAbsent : nil)
                    }
                } catch StoreError.preconditionFailed {
                    // Another writer finished the move first.
                }
            }
            known.remember(keyed, for: session)
            let snapshotKeys = listed.map(\.key).filter { $0 != plain.headKey }
            if !snapshotKeys.isEmpty { try await store.delete(snapshotKeys) }
            try await store.delete([plain.headKey])
            return SessionMove(session: session, place: keyed, copied: history, leftovers: listed.count - history.count - 1)
        }
        throw SnapshotError.io("session \(session): its plain place kept changing while it was moved (\(Self.maxMoveRounds) rounds); trying again later")
    }

    private static let maxMoveRounds = 8

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

    func putSnapshot(_ session: SessionID, _ entry: SnapshotEntry, spool: SnapshotSpool) async throws {
        try await spool.upload(to: store, key: try await place(session).snapshotKey(entry))
    }

    func putSnapshot(_ session: SessionID, _ entry: SnapshotEntry, downloaded: DownloadedSnapshot) async throws {
        try await downloaded.upload(to: store, key: try await place(session).snapshotKey(entry))
    }

    func downloadSnapshot(_ session: SessionID, _ entry: SnapshotEntry) async throws -> DownloadedSnapshot {
        guard let object = try await DownloadedSnapshot(try await place(session).snapshotKey(entry), size: entry.size, from: store) else {
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
        guard let object = try await DownloadedSnapshot(try await place(session).snapshotKey(entry), size: entry.size, from: store)
        else { return nil }
        // Decrypting, decompressing and hashing a whole snapshot blocks its thread: off the pool.
        let reader = SnapshotReader(keyring: keyring, limits: .sessionDirectory)
        return try await runBlocking { () throws in
            try reader.manifest(of: try object.source(), session: session, entry: entry, checkingDatabases: checkingDatabases)
        }
    }
}

/// What `SessionStore.move` moved of a session: the committed snapshots copied to its keyed
/// place, and how many other objects (uncommitted ones, a late upload) it deleted with the plain place.
public struct SessionMove: Sendable {
    public let session: SessionID
    /// Nil in a dry run on a store without a naming secret yet.
    public let place: SessionPlace?
    public let copied: [SnapshotEntry]
    public let leftovers: Int
}

/// What a `SessionStore` learnt of its store and keeps: the naming secret, and the sessions found
/// at their keyed place (a session never moves back, so this never goes stale).
private final class KnownPlaces: Sendable {
    private let state = Mutex<(naming: StoreNaming?, prepared: Bool, places: [SessionID: SessionPlace], named: Set<SessionID>)>(
        (nil, false, [:], []))

    var naming: StoreNaming? {
        get { state.withLock { $0.naming } }
        set { state.withLock { $0.naming = newValue } }
    }

    /// The secret once a writer made sure the store holds it wrapped for the primary key.
    var preparedNaming: StoreNaming? {
        get { state.withLock { $0.prepared ? $0.naming : nil } }
        set { state.withLock { ($0.naming, $0.prepared) = (newValue, newValue != nil) } }
    }

    func place(of session: SessionID) -> SessionPlace? { state.withLock { $0.places[session] } }

    func remember(_ place: SessionPlace, for session: SessionID) { state.withLock { $0.places[session] = place } }

    /// The session's objects were deleted (`--on-delete purge`): a new write starts afresh.
    func forget(_ session: SessionID) {
        state.withLock {
            $0.places[session] = nil
            $0.named.remove(session)
        }
    }

    /// Whether this process wrote (or found) the session's name object.
    func isNamed(_ session: SessionID) -> Bool { state.withLock { $0.named.contains(session) } }

    func markNamed(_ session: SessionID) { _ = state.withLock { $0.named.insert(session) } }
}
