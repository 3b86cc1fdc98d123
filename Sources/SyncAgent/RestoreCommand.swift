import ArgumentParser
import FoundationEssentials
import Glibc
import SessionArchive
import SyncEngine

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Bring session directories back from their newest snapshots, atomically.",
        discussion: """
            Run before the worker recovers its sessions. A directory is only ever replaced by a
            complete, verified snapshot; when the store cannot answer, it is left as it is.
            Exit codes: 0 every session restored or up to date, 3 some failed, 4 all failed.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @Flag(help: "Restore every session the store has.") var all = false
    @Flag(help: "Restore only sessions whose directory is absent or empty.") var ifMissing = false
    @Option(help: "Restore this snapshot (as `snapshots` prints it, e.g. 42.3) instead of the newest; one session only.")
    var snapshot: String?
    @Flag(help: "Print the report as JSON.") var json = false
    @Argument(help: "Session ids.") var sessions: [String] = []

    func validate() throws {
        guard all != !sessions.isEmpty else { throw ValidationError("name session ids or pass --all (not both)") }
        if let snapshot {
            guard SnapshotID(parsing: snapshot) != nil else { throw ValidationError("--snapshot \(snapshot): expected SEQUENCE.GENERATION, e.g. 42.3") }
            guard sessions.count == 1 else { throw ValidationError("--snapshot restores one session: name exactly one") }
        }
    }

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.restore")
        let opened = try await OpenedStorage.open(storage, logger: logger, writes: false)
        let root = storage.resolvedSessionsDir
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try DirectorySwap.recoverLeftovers(in: root)
        let ids = try all ? await opened.storedSessions() : sessions.map { name in
            guard let id = SessionID(name) else { throw ValidationError("\"\(name)\" is not a valid session id") }
            return id
        }
        var report = RestoreReport()
        for id in ids {
            let started = ContinuousClock.now
            do {
                let restorer = SessionRestorer(sessionStore: try await opened.restoreSource(for: id))
                let outcome = try await restorer.restore(
                    id, into: root, target: snapshot.flatMap(SnapshotID.init(parsing:)), onlyIfMissing: ifMissing)
                report.record(outcome)
                logger.info("restore", metadata: [
                    "session": "\(id)", "status": "\(outcome.status.rawValue)",
                    "snapshot": "\(outcome.snapshot.map(String.init(describing:)) ?? "-")",
                    "files": "\(outcome.files)", "bytes": "\(outcome.bytes)", "duration": "\(ContinuousClock.now - started)",
                ])
            } catch {
                report.failedSessions.append(.init(sessionId: id.rawValue, error: "\(error)", reason: RestoreReport.reason(for: error)))
                logger.error("restore failed", metadata: ["session": "\(id)", "error": "\(error)"])
            }
        }
        if json {
            try printJSON(report)
        } else {
            for entry in report.recoveredSessions {
                print("\(entry.sessionId)\t\(entry.status)\t\(entry.snapshot ?? "-")\t\(entry.files) files\t\(entry.bytes) bytes")
            }
            for entry in report.failedSessions { print("\(entry.sessionId)\tfailed (\(entry.reason))\t\(entry.error)") }
        }
        if !report.failedSessions.isEmpty {
            throw ExitCode(report.recoveredSessions.isEmpty ? 4 : 3)
        }
    }
}

/// The report a worker can post to its backend as is.
struct RestoreReport: Encodable {
    struct Recovered: Encodable {
        var sessionId: String
        var status: String
        var snapshot: String?
        var files: Int
        var bytes: Int64
    }

    struct Failed: Encodable {
        var sessionId: String
        var error: String
        var reason: String
    }

    var recoveredSessions: [Recovered] = []
    var failedSessions: [Failed] = []

    mutating func record(_ outcome: RestoreOutcome) {
        switch outcome.status {
        case .restored, .upToDate, .present:
            recoveredSessions.append(.init(
                sessionId: outcome.session.rawValue, status: outcome.status.rawValue,
                snapshot: outcome.snapshot.map(String.init(describing:)), files: outcome.files, bytes: outcome.bytes))
        case .notFound, .loggedOut:
            failedSessions.append(.init(
                sessionId: outcome.session.rawValue,
                error: outcome.status == .notFound ? "no snapshot in the store" : "the session logged out",
                reason: outcome.status.rawValue))
        }
    }

    static func reason(for error: any Error) -> String {
        switch error {
        case StoreError.unavailable: "unreachable"
        case StoreError.rejected: "store_refused"
        case SnapshotError.corrupt: "corrupt"
        case SnapshotError.notFound: "not_found"
        default: "failed"
        }
    }
}
