
/// What pruning one session did (or, in a dry run, would do).
public struct PruneOutcome: Sendable, Equatable {
    public var session: SessionID
    public var plan: RetentionPlan
    public var dryRun: Bool
    /// `forgetIdentity`: the snapshot the identity hold named, which retention no longer keeps for it.
    public var forgottenIdentity: SnapshotID? = nil
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
    ///
    /// `forgetIdentity`: first ends the session's identity hold (an operator's decision that the
    /// registered identity it kept is not wanted back), so the policy alone decides.
    public func prune(
        _ session: SessionID, policy: RetentionPolicy, dryRun: Bool = false, forgetIdentity: Bool = false
    ) async throws -> PruneOutcome {
        guard let stored = try await sessionStore.stored(session) else {
            return PruneOutcome(session: session, plan: RetentionPlan(), dryRun: dryRun)
        }
        try stored.checkHeadIsNewest()
        var head = stored.head
        let forgotten = forgetIdentity ? head.identityHold?.snapshot : nil
        if forgotten != nil {
            head.identityHold = nil
            if !dryRun {
                try await endIdentityHold(session)
                _ = try await mirror?.mirror(session)  // S3's head follows
            }
        }
        let plan = try policy.plan(stored.entries, head: head, session: session)
        if !dryRun {
            // Orphans go first, in a call of their own: once a snapshot is deleted, the walk of the
            // committed history crosses the gap by taking the newest object below it, which must
            // then be a committed one (`SessionStore.committed`).
            for doomed in [plan.orphans, plan.deleted] where !doomed.isEmpty {
                try await sessionStore.store.delete(try await sessionStore.snapshotKeys(session, doomed))
            }
            try await mirror?.mirrorDeletions(session)
        }
        return PruneOutcome(session: session, plan: plan, dryRun: dryRun, forgottenIdentity: forgotten)
    }

    /// Writes the head without its identity hold, over whatever a writer committed meanwhile.
    private func endIdentityHold(_ session: SessionID) async throws {
        while let current = try await sessionStore.head(session), current.head.identityHold != nil {
            var next = current.head
            next.identityHold = nil
            do {
                _ = try await sessionStore.writeHead(next, session: session, condition: .ifMatch(etag: current.etag))
                return
            } catch StoreError.preconditionFailed {
                continue  // a writer committed in between: drop the hold from its head
            }
        }
    }
}
