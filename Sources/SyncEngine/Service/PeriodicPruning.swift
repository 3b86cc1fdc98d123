import Logging

/// Applies the retention policy to sessions now and then, beside the pruning after each new base
/// (which alone never trims a session that only gets deltas).
struct PeriodicPruning: Sendable {
    let pruner: SnapshotPruner
    let policy: RetentionPolicy
    let logger: Logger

    /// Prunes `sessions` one at a time, until done or cancelled; a failure is logged, and the
    /// next round tries again.
    func prune(_ sessions: [SessionID]) async {
        for id in sessions where !Task.isCancelled {
            do {
                let outcome = try await pruner.prune(id, policy: policy)
                let deleted = outcome.plan.deletedCount
                if deleted > 0 {
                    logger.info("pruned", metadata: ["session": "\(id)", "deleted": "\(deleted)", "kept": "\(outcome.plan.kept.count)"])
                }
            } catch {
                logger.warning("scheduled prune failed", metadata: ["session": "\(id)", "error": "\(error)"])
            }
        }
    }
}
