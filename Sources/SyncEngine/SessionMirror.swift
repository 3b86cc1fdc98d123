import FoundationEssentials
import Glibc

/// Hybrid mode's second half: copies what the local store committed for a session to S3,
/// snapshots first and the head last. S3 only ever names snapshots it holds: a head goes to S3
/// only once every snapshot of its chain is there, and a snapshot leaves S3 only when S3's head
/// does not need it. The local store is the backlog: after an outage or a restart, mirroring a
/// session uploads whatever S3 is missing, in order.
public struct SessionMirror: Sendable {
    public let local: SessionStore
    public let remote: SessionStore
    /// Whether the remote honours conditional writes (fencing on the remote head).
    public let conditionalWrites: Bool

    public init(local: SessionStore, remote: SessionStore, conditionalWrites: Bool) {
        self.local = local
        self.remote = remote
        self.conditionalWrites = conditionalWrites
    }

    /// The generation S3 knows for the session, so a claim in the local store can go past it.
    public func remoteGeneration(_ session: SessionID) async throws -> UInt64? {
        try await remote.head(session)?.head.generation
    }

    /// Brings S3 up to the local store's committed state of the session. Throws `.fenced`
    /// when S3's head has a newer generation: another agent owns the session now. Returns the
    /// snapshots it copied.
    ///
    /// Each round works from one read of the local head: the copy set is that head's committed
    /// history, and the head object published is the one read. A local writer or prune that
    /// moves on meanwhile (a snapshot gone before it was copied, the head naming one no longer
    /// listed) starts another round from the head as it is then, up to `maxRounds`: a store that
    /// lists an object it never returns must fail this sync (retried with backoff), not spin.
    @discardableResult
    public func mirror(_ session: SessionID) async throws -> [SnapshotEntry] {
        var copied: [SnapshotEntry] = []
        var prepared = false
        round: for _ in 0..<Self.maxRounds {
            guard let (localHead, localETag) = try await local.head(session) else { return copied }
            guard localHead.latest != nil else { return copied }
            if !prepared {
                // S3's copy of a session of format version 2 moves to its keyed place first.
                try await remote.prepareForWriting(session, conditionalWrites: conditionalWrites)
                prepared = true
            }
            let remoteHead = try await remote.head(session)
            if let remoteHead, isNewerClaim(remoteHead.head, than: localHead) {
                throw SnapshotError.fenced(session: session.rawValue, by: remoteHead.head.owner)
            }
            if remoteHead?.head == localHead { return copied }

            // The committed history only, each object under its exact key: an uncommitted one
            // (a racing writer's, a retry's) is no use to S3, and a tag names one write attempt.
            let entries = try await local.snapshots(session)
            let found: CommittedHistory?
            do {
                found = try SessionStore.committed(entries, head: localHead, session: session)
            } catch {
                // The local head moved on since it was read, and a prune took the snapshot it named.
                if try await local.head(session)?.etag != localETag { continue round }
                throw error
            }
            guard let history = found else { return copied }
            let present = Set(try await remote.snapshots(session).map(SessionLayout.snapshotName))
            for entry in history.sorted where !present.contains(SessionLayout.snapshotName(entry)) {
                // Gone since the listing: a local prune took it; the next round's walk knows.
                guard let object = try await DownloadedSnapshot(try await local.place(session).snapshotKey(entry), size: entry.size, from: local.store)
                else { continue round }
                try await remote.putSnapshot(session, entry, downloaded: object)
                copied.append(entry)
            }
            var condition: WriteCondition?
            if conditionalWrites {
                condition = remoteHead.map { .ifMatch(etag: $0.etag) } ?? .ifAbsent
            }
            // The head is written again, not copied: each store names its sessions with a naming
            // secret of its own, and the head is bound to the keyed id of its store.
            guard try await putHead(localHead, session: session, condition: condition) else {
                continue round  // S3's head moved since it was read: look again
            }
            try await deletePruned(session, remoteHead: localHead)
            return copied
        }
        throw SnapshotError.io("session \(session): the stores kept changing while it was mirrored (\(Self.maxRounds) rounds); trying again later")
    }

    private static let maxRounds = 8

    /// False when the condition failed.
    private func putHead(_ head: SessionHead, session: SessionID, condition: WriteCondition?) async throws -> Bool {
        do {
            try await remote.writeHead(head, session: session, condition: condition)
            return true
        } catch StoreError.preconditionFailed {
            return false
        }
    }

    /// Another agent's claim: a newer generation, or the same one by someone else (two
    /// claims made while S3 was unreachable).
    private func isNewerClaim(_ remote: SessionHead, than local: SessionHead) -> Bool {
        remote.generation > local.generation || (remote.generation == local.generation && remote.owner != local.owner)
    }

    /// Hybrid restores take the newer of the two copies: the higher generation, then the
    /// later snapshot. Either store failing to answer fails the choice: restoring the older
    /// copy could resurrect a state the session has moved past.
    public func newest(_ session: SessionID) async throws -> SessionStore {
        let localHead = try await local.head(session)?.head
        guard let remoteHead = try await remote.head(session)?.head else { return local }
        guard let localHead else { return remote }
        let localRank = (localHead.generation, localHead.latest?.sequence ?? 0)
        let remoteRank = (remoteHead.generation, remoteHead.latest?.sequence ?? 0)
        return remoteRank > localRank ? remote : local
    }

    /// After a prune of the local store: deletes from S3 what the local store no longer has, when
    /// S3's head is the local one. When S3 is behind, the next `mirror` does it once it caught up.
    public func mirrorDeletions(_ session: SessionID) async throws {
        guard let localHead = try await local.head(session)?.head, localHead.latest != nil,
            try await remote.head(session)?.head == localHead
        else { return }
        try await deletePruned(session, remoteHead: localHead)
    }

    /// Snapshots the local store pruned go from S3 too, below the latest of S3's head and never
    /// one of its chain, whatever the local store did since that head was read.
    private func deletePruned(_ session: SessionID, remoteHead: SessionHead) async throws {
        let remoteEntries = try await remote.snapshots(session)
        guard let history = try SessionStore.committed(remoteEntries, head: remoteHead, session: session) else { return }
        let needed = Set(try history.chain(to: history.latest, session: session).map(SessionLayout.snapshotName))
        let kept = Set(try await local.snapshots(session).map(SessionLayout.snapshotName)).union(needed)
        let doomed = remoteEntries
            .filter { !kept.contains(SessionLayout.snapshotName($0)) && $0.id.sequence < history.latest.id.sequence }
        if !doomed.isEmpty { try await remote.store.delete(try await remote.snapshotKeys(session, doomed)) }
    }
}
