import ArgumentParser
import FoundationEssentials
import Glibc
import Logging
import SyncEngine

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print each session's state, from the running agent or else from the store.",
        discussion: """
            Asks the agent's endpoint (GET /sessions) first. When no agent answers, reads the
            store instead: each stored session with its latest snapshot, as "stored" or
            "tombstoned" (only a running agent knows what is pending), or "failed" with the error
            for a session whose head cannot be read. Reads only.
            Exit codes: 0 the table was printed, 1 neither the agent nor the store answered, or a
            session's head read from the store failed.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @Option(help: "The running agent's endpoint (env SYNC_AGENT_URL; default http://127.0.0.1:9797).")
    var agent: String?
    @Flag(help: "Print the table as JSON.") var json = false

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.status")
        let url = agent ?? environment("SYNC_AGENT_URL") ?? "http://127.0.0.1:9797"
        var report: StatusReport
        do {
            let body = try await EndpointClient(baseURL: url).get("/sessions")
            let answer = try JSONDecoder().decode(SessionsReport.self, from: Data(body))
            report = StatusReport(source: url, generatedAt: answer.generatedAt, sessions: answer.sessions.map(StatusReport.Row.init))
        } catch {
            logger.notice("no agent answered; reading the store", metadata: ["agent": "\(url)", "error": "\(error)"])
            report = try await storeReport(logger: logger)
        }
        if json {
            try printJSON(report)
        } else {
            for row in report.sessions {
                print([
                    row.sessionId, row.state, row.lastSnapshot ?? "-", row.lastSnapshotAt ?? "-",
                    row.lagSeconds.map { "lag \(($0 * 10).rounded() / 10)s" } ?? "lag -",
                    row.pendingChanges.map { "\($0) pending" } ?? "- pending", row.lastError ?? "",
                ].joined(separator: "\t"))
            }
        }
        if report.sessions.contains(where: { $0.state == StatusReport.Row.unreadableState }) { throw ExitCode(1) }
    }

    private func storeReport(logger: Logger) async throws -> StatusReport {
        let opened = try await OpenedStorage.open(storage, logger: logger, access: .read)
        var report = StatusReport(source: opened.primary.store.location, generatedAt: timestamp(Date()), sessions: [])
        for id in try await opened.sources.sessions() {
            do {
                let head = try await opened.sources.store(for: id).head(id)?.head
                report.sessions.append(StatusReport.Row(
                    sessionId: id.description, state: head?.isTombstoned == true ? "tombstoned" : "stored",
                    lastSnapshot: head?.latest.map { "\($0)" }, lastSnapshotAt: head.map { timestamp($0.updatedAt) },
                    lagSeconds: nil, pendingChanges: nil, lastError: nil))
            } catch {
                // One head that cannot be read (corrupt, oversized, no regular file) must not hide the others.
                report.sessions.append(StatusReport.Row(
                    sessionId: id.description, state: StatusReport.Row.unreadableState, lastSnapshot: nil, lastSnapshotAt: nil,
                    lagSeconds: nil, pendingChanges: nil, lastError: "\(error)"))
            }
        }
        return report
    }
}

/// `status --json`: the agent's view of each session, or the store's when no agent answered
/// (then lag and pending changes are unknown: null).
struct StatusReport: Encodable {
    struct Row: Encodable {
        var sessionId: String
        var state: String
        var lastSnapshot: String?
        var lastSnapshotAt: String?
        var lagSeconds: Double?
        var pendingChanges: Int?
        var lastError: String?

        /// The state, read from the store, of a session whose head cannot be read (`lastError` says why).
        static let unreadableState = "failed"
    }

    /// The agent's URL, or the store's location.
    var source: String
    var generatedAt: String
    var sessions: [Row]
}

extension StatusReport.Row {
    init(_ status: SessionStatus) {
        self.init(
            sessionId: status.sessionId, state: status.state.rawValue, lastSnapshot: status.lastSnapshot,
            lastSnapshotAt: status.lastSnapshotAt, lagSeconds: status.lagSeconds, pendingChanges: status.pendingChanges,
            lastError: status.lastError)
    }
}
