import ArgumentParser
import FoundationEssentials
import SyncEngine

struct PruneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Delete the snapshots a retention policy no longer keeps.",
        discussion: """
            Like restic's forget --prune, per session: a snapshot stays when any --keep-* rule
            keeps it, with everything it needs to restore (a delta's chain back to its base). The
            head's snapshot always stays. Times are when each object was written to the store, as
            `snapshots` lists them; hours, days and ISO weeks are in UTC. Objects
            no head committed (a crashed or fenced writer's) are deleted; objects above the head,
            which a running writer may be committing, are never touched. Safe beside `watch` and
            `backup`. In hybrid mode the local store is pruned and S3 follows it. Exit codes: 0
            every session pruned, 1 some could not be, 64 bad usage.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup(title: "Retention") var retention: RetentionOptions
    @Flag(help: "Say what would be kept and deleted; delete nothing.") var dryRun = false
    @Flag(help: "Print the report as JSON.") var json = false
    @Argument(help: "Session ids (default: every session in the store, as for backup).") var sessions: [SessionID] = []

    func validate() throws {
        // restic refuses too: without a rule, "keep nothing but the newest" is too easy to run by mistake.
        guard try retention.policy() != nil else {
            throw ValidationError("no retention policy: pass at least one --keep-* flag (or set SYNC_AGENT_KEEP_*)")
        }
    }

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.prune")
        let policy = try retention.policy()!
        let opened = try await OpenedStorage.open(storage, logger: logger, access: .write)
        let ids = try sessions.isEmpty ? await opened.primary.sessions() : sessions
        let pruner = SnapshotPruner(sessionStore: opened.primary, mirror: opened.mirror)
        let progress = ProgressLine(dryRun ? "checking" : "pruning", total: ids.count)
        var report = PruneReport(dryRun: dryRun)
        for id in ids {
            do {
                let outcome = try await pruner.prune(id, policy: policy, dryRun: dryRun)
                report.sessions.append(.init(outcome))
                // A session with nothing to delete is in the report, not in the log: a store of
                // thousands of sessions would otherwise log thousands of lines saying nothing.
                if dryRun || outcome.plan.deletedCount > 0 {
                    logger.log(
                        level: progress.isShown ? .debug : .info, dryRun ? "prune planned" : "pruned",
                        metadata: ["session": "\(id)", "kept": "\(outcome.plan.kept.count)", "deleted": "\(outcome.plan.deletedCount)"])
                }
                await progress.finished(failed: false)
            } catch {
                report.sessions.append(.init(sessionId: id.description, error: "\(error)"))
                logger.log(level: progress.isShown ? .debug : .error, "prune failed", metadata: ["session": "\(id)", "error": "\(error)"])
                await progress.finished(failed: true)
            }
        }
        await progress.end()
        if json {
            try printJSON(report)
        } else {
            printHuman(report)
        }
        if report.failures > 0 { throw ExitCode(1) }
    }

    private func printHuman(_ report: PruneReport) {
        if dryRun {
            var rows: [[String]] = []
            for session in report.sessions {
                for snapshot in session.kept {
                    rows.append([session.sessionId, snapshot.id, snapshot.tag, snapshot.kind, snapshot.time ?? "-", "keep (\(snapshot.reasons?.joined(separator: ", ") ?? ""))"])
                }
                for snapshot in session.deleted {
                    rows.append([session.sessionId, snapshot.id, snapshot.tag, snapshot.kind, snapshot.time ?? "-", snapshot.orphan == true ? "delete (orphan)" : "delete"])
                }
            }
            printTable(["SESSION", "SNAPSHOT", "TAG", "KIND", "TIME", "DECISION"], rows)
        }
        for session in report.sessions {
            if let error = session.error { print("\(session.sessionId): failed: \(error)") }
        }
        let verb = dryRun ? "would delete" : "deleted"
        print("\(verb) \(report.deleted) snapshot object(s) (\(byteCount(report.deletedBytes))), kept \(report.kept), in \(report.sessions.count) session(s); \(report.failures) failed")
    }
}

struct PruneReport: Encodable {
    struct Snapshot: Encodable {
        /// `SEQ.GEN`; an orphan may share it with a committed snapshot.
        var id: String
        /// The write attempt's tag, which tells such objects apart (as in `snapshots --json`).
        var tag: String
        var kind: String
        var time: String?
        var size: Int64
        /// Kept: the rules that keep it (`newest`, `last`, `hourly`, `daily`, `weekly`, `within`, `chain`…).
        var reasons: [String]?
        /// Deleted: whether it is an object no head committed.
        var orphan: Bool?

        init(_ entry: SnapshotEntry) {
            id = "\(entry.id)"
            tag = entry.id.tag.rawValue
            kind = entry.kind.rawValue
            time = entry.lastModified.map(timestamp)
            size = entry.size
        }
    }

    struct Session: Encodable {
        var sessionId: String
        var kept: [Snapshot] = []
        var deleted: [Snapshot] = []
        var error: String?

        init(sessionId: String, error: String) {
            self.sessionId = sessionId
            self.error = error
        }

        init(_ outcome: PruneOutcome) {
            sessionId = outcome.session.description
            kept = outcome.plan.kept.map { kept in
                var snapshot = Snapshot(kept.entry)
                snapshot.reasons = kept.reasons.map(\.rawValue)
                return snapshot
            }
            deleted = (outcome.plan.deleted.map { ($0, false) } + outcome.plan.orphans.map { ($0, true) }).map { entry, orphan in
                var snapshot = Snapshot(entry)
                snapshot.orphan = orphan
                return snapshot
            }
        }
    }

    var dryRun: Bool
    var sessions: [Session] = []

    var kept: Int { sessions.reduce(0) { $0 + $1.kept.count } }
    var deleted: Int { sessions.reduce(0) { $0 + $1.deleted.count } }
    var deletedBytes: Int64 { sessions.reduce(0) { $0 + $1.deleted.reduce(0) { $0 + $1.size } } }
    var failures: Int { sessions.filter { $0.error != nil }.count }

    enum CodingKeys: String, CodingKey { case dryRun, sessions, kept, deleted, deletedBytes, failures }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(dryRun, forKey: .dryRun)
        try container.encode(sessions, forKey: .sessions)
        try container.encode(kept, forKey: .kept)
        try container.encode(deleted, forKey: .deleted)
        try container.encode(deletedBytes, forKey: .deletedBytes)
        try container.encode(failures, forKey: .failures)
    }
}
