
/// What pruning one session did (or, in a dry run, would do).
public struct PruneOutcome: Sendable, Equatable {
    public var session: SessionID
    public var plan: RetentionPlan
    public var dryRun: Bool
}

/// Applies a `RetentionPolicy` to sessions in a store: reads the head, then the listing, plans,
/// and deletes what the plan drops.
///
/// Safe beside a running writer (`watch`, `backup`) and other prunes: the head is read before the
/// listing, so everything a writer commits meanwhile is above the head the plan keeps whole, and
/// the plan always keeps the head's snapshot with its chain, which is the chain a writer appends
/// to. A writer that committed a new base since has no use for the old chain any more.
public struct SnapshotPruner: Sendable {
    public let sessionStore: SessionStore
    /// Hybrid mode: S3 follows the local store's deletions.
    public let mirror: SessionMirror?

    public init(sessionStore: SessionStore, mirror: SessionMirror? = nil) {
        self.sessionStore = sessionStore
        self.mirror = mirror
    }

    /// Throws, deleting nothing, when the session's head is missing beside its snapshots or is
    /// behind a newer committed chain: a plan from such a head could delete what the session's
    /// real state needs.
    public func prune(_ session: SessionID, policy: RetentionPolicy, dryRun: Bool = false) async throws -> PruneOutcome {
        guard let stored = try await sessionStore.stored(session) else {
            return PruneOutcome(session: session, plan: RetentionPlan(), dryRun: dryRun)
        }
        try stored.checkHeadIsNewest()
        let plan = try policy.plan(stored.entries, head: stored.head, session: session)
        if !dryRun {
            // Orphans go first, in a call of their own: once a snapshot is deleted, the walk of the
            // committed history crosses the gap by taking the newest object below it, which must
            // then be a committed one (`SessionStore.committed`).
            for doomed in [plan.orphans, plan.deleted] where !doomed.isEmpty {
                try await sessionStore.store.delete(doomed.map { SessionLayout.snapshotKey(session, $0) })
            }
            try await mirror?.mirrorDeletions(session)
        }
        return PruneOutcome(session: session, plan: plan, dryRun: dryRun)
    }
}
