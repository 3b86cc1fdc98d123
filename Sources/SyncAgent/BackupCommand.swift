import ArgumentParser
import FoundationEssentials
import Glibc
import SessionArchive
import SyncEngine

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Take a full snapshot (a new base) of every session, or the named ones.",
        discussion: """
            For cron, systemd timers and Kubernetes CronJobs. After each new base the retention
            policy applies (without --keep-* flags or their variables: the new chain and the one
            before it stay). Exits non-zero when any session failed.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var agent: AgentOptions
    @OptionGroup(title: "Retention") var retention: RetentionOptions
    @Flag(help: "Print the summary as JSON.") var json = false
    @Argument(help: "Session ids (default: every session directory).", transform: SessionID.init(parsing:)) var sessions: [SessionID] = []

    func validate() throws {
        try rejectingUsageErrors { _ = try agent.identity(sessionsDirectory: storage.resolvedSessionsDir) }
    }

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.backup")
        let opened = try await OpenedStorage.open(storage, logger: logger, access: .create)
        let root = storage.resolvedSessionsDir
        var report = BackupReport()
        let ids: [SessionID]
        if sessions.isEmpty {
            let directories = try sessionDirectories(in: root)
            ids = directories.sessions
            for (name, refusal) in directories.refused {
                // Not backed up, as `watch` does not back it up: a failure, named.
                let shown = Refusal.printed(name)
                report.failed.append(.init(sessionId: shown, error: refusal.message, refusal: refusal.rawValue))
                logger.error("session directory \(refusal.message)", metadata: ["name": "\(shown)", "reason": "\(refusal.rawValue)"])
            }
        } else {
            ids = sessions
        }
        let identity = try agent.identity(sessionsDirectory: root)
        var policy = CompactionPolicy()
        policy.retention = try retention.compactionRetention()
        for id in ids {
            let replicator = SessionReplicator(
                session: id, directory: "\(root)/\(id.rawValue)", sessionStore: opened.primary, owner: identity.instance, agent: identity.id,
                conditionalWrites: opened.conditionalWrites, claimsOwnership: false,
                largeBasesOnWorkerThread: true, format: try storage.resolvedSessionFormat, policy: policy, logger: logger)
            do {
                let result = try await replicator.sync(forceBase: true)
                try await opened.mirror?.mirror(id)
                let skipped = await replicator.skippedFiles
                if !skipped.isEmpty {
                    // A backup that exits 0 must hold the whole directory.
                    let files = skipped.map { "\($0.name) (\($0.reason))" }.joined(separator: ", ")
                    report.failed.append(.init(sessionId: id.description, error: "files not backed up: \(files)"))
                    logger.error("backed up without files it cannot take", metadata: ["session": "\(id)", "files": "\(files)"])
                    continue
                }
                switch result {
                case .uploaded(let snapshot, _, _, let unsettled) where !unsettled.isEmpty:
                    // Committed, but holding an earlier version of these files or none at all: a
                    // backup that exits 0 must hold the whole directory, so a cron job tries again.
                    report.failed.append(.init(
                        sessionId: id.description, error: "snapshot \(snapshot) left out files being written: \(unsettled.count)"))
                    logger.error("backed up without files being written", metadata: [
                        "session": "\(id)", "snapshot": "\(snapshot)", "unsettled": "\(unsettled.count)",
                    ])
                case .uploaded(let snapshot, _, let bytes, _):
                    let pruned = await replicator.lastPrune?.plan.deletedCount ?? 0
                    report.backedUp.append(.init(sessionId: id.description, snapshot: "\(snapshot)", bytes: bytes, pruned: pruned))
                    logger.info("backed up", metadata: ["session": "\(id)", "snapshot": "\(snapshot)", "bytes": "\(bytes)"])
                case .unchanged(let unsettled):
                    report.failed.append(.init(sessionId: id.description, error: "files being written: \(unsettled.count)"))
                }
            } catch {
                report.failed.append(.init(sessionId: id.description, error: "\(error)"))
                logger.error("backup failed", metadata: ["session": "\(id)", "error": "\(error)"])
            }
        }
        if json {
            try printJSON(report)
        } else {
            print("backed up \(report.backedUp.count) session(s), \(report.failed.count) failed")
        }
        if !report.failed.isEmpty { throw ExitCode(1) }
    }
}

struct BackupReport: Encodable {
    struct Success: Encodable {
        var sessionId: String
        var snapshot: String
        var bytes: Int64
        /// Snapshot objects the retention policy deleted after this base.
        var pruned: Int
    }
    struct Failure: Encodable {
        var sessionId: String
        var error: String
        /// Why a session directory is not backed up at all (`Refusal`): "symlink" or "unreadable".
        var refusal: String?
    }
    var backedUp: [Success] = []
    var failed: [Failure] = []
}
