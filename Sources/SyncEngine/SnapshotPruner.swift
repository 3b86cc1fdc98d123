
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

    public func prune(_ session: SessionID, policy: RetentionPolicy, dryRun: Bool = false) async throws -> PruneOutcome {
        guard let head = try await sessionStore.head(session)?.head else {
            return PruneOutcome(session: session, plan: RetentionPlan(), dryRun: dryRun)
        }
        let entries = try await sessionStore.snapshots(session)
        let plan = try policy.plan(entries, head: head, session: session)
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
