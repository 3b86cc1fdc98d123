import Crypto
import FoundationEssentials
import Glibc
import S3Client
import SessionArchive

/// One snapshot object as a listing shows it.
public struct SnapshotEntry: Sendable, Equatable {
    public var id: SnapshotID
    public var kind: SnapshotKind
    public var size: Int64
    public var lastModified: Date?

    public init(id: SnapshotID, kind: SnapshotKind, size: Int64, lastModified: Date?) {
        self.id = id
        self.kind = kind
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
                SnapshotEntry(id: $0.0, kind: $0.1, size: info.size, lastModified: info.lastModified)
            }
        }.sorted { $0.id < $1.id }
    }

    /// The snapshots a restore of `target` (default: the head's latest) applies, base first.
    public func chain(_ session: SessionID, head: SessionHead, upTo target: SnapshotID? = nil) async throws
        -> [SnapshotEntry]
    {
        guard let latest = head.latest else { throw SnapshotError.notFound("session \(session) has no snapshot") }
        let goal = target ?? latest
        let committed = Self.committed(try await snapshots(session), head: head, upTo: goal)
        guard let last = committed[goal.sequence], target == nil || last.id == goal else {
            throw SnapshotError.notFound("snapshot \(goal) of session \(session) is not in the store")
        }
        return try Self.chain(to: last, in: committed, session: session)
    }

    /// The objects that count, by sequence, up to `goal` (default: the head's latest).
    ///
    /// Only what the head committed counts: sequences up to the head's, and for each
    /// sequence the newest generation not newer than the head's (a fenced or crashed writer
    /// can leave an object at a sequence its successor then wrote again).
    public static func committed(_ entries: [SnapshotEntry], head: SessionHead, upTo goal: SnapshotID? = nil)
        -> [UInt64: SnapshotEntry]
    {
        guard let goal = goal ?? head.latest else { return [:] }
        var committed: [UInt64: SnapshotEntry] = [:]
        for entry in entries where entry.id.sequence <= goal.sequence && entry.id.generation <= head.generation {
            if let existing = committed[entry.id.sequence], existing.id.generation >= entry.id.generation { continue }
            committed[entry.id.sequence] = entry
        }
        return committed
    }

    /// `last` and the committed snapshots before it back to its base (or tombstone), base first.
    public static func chain(to last: SnapshotEntry, in committed: [UInt64: SnapshotEntry], session: SessionID) throws
        -> [SnapshotEntry]
    {
        var chain: [SnapshotEntry] = [last]
        var sequence = last.id.sequence
        while chain.last!.kind == .delta {
            guard sequence > 0, let previous = committed[sequence - 1] else {
                throw SnapshotError.corrupt("session \(session): the chain to \(last.id) has a gap before \(sequence)")
            }
            chain.append(previous)
            sequence -= 1
        }
        return chain.reversed()
    }

    public func putSnapshot(_ session: SessionID, _ id: SnapshotID, kind: SnapshotKind, bytes: [UInt8]) async throws(StoreError) {
        try await store.put(SessionLayout.snapshotKey(session, id, kind: kind), bytes: bytes, condition: nil)
    }

    func putSnapshot(_ session: SessionID, _ id: SnapshotID, kind: SnapshotKind, spool: SnapshotSpool) async throws(StoreError) {
        try await spool.upload(to: store, key: SessionLayout.snapshotKey(session, id, kind: kind))
    }

    public func snapshotBytes(_ session: SessionID, _ entry: SnapshotEntry) async throws -> [UInt8] {
        guard let object = try await store.get(SessionLayout.snapshotKey(session, entry.id, kind: entry.kind)) else {
            throw SnapshotError.corrupt("snapshot \(entry.id) of session \(session) vanished from the store")
        }
        return object.bytes
    }

    /// Downloads one snapshot and checks it whole (authenticated, every file against the
    /// manifest), returning its manifest; nil when the object is not in the store.
    public func manifest(_ session: SessionID, _ entry: SnapshotEntry) async throws -> SnapshotManifest? {
        guard let object = try await store.get(SessionLayout.snapshotKey(session, entry.id, kind: entry.kind)) else {
            return nil
        }
        return try SnapshotReader(keyring: keyring, limits: .sessionDirectory)
            .manifest(of: BufferSource(object.bytes), session: session, id: entry.id, kind: entry.kind)
    }
}
