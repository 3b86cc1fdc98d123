import ArgumentParser
import FoundationEssentials
import Glibc
import SessionArchive
import SyncEngine

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Download and fully check committed snapshots; writes nothing.",
        discussion: """
            Every committed snapshot (or a sample, always with the newest) is decrypted, each file
            checked against its manifest's content hash, each delta against the snapshot before
            it, and the session its chain rebuilds against the state its manifest records. In
            hybrid mode both stores are checked. Exit codes: 0 no defect, 1 a defect or a session
            that could not be checked.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @Flag(help: "Verify every session the store has.") var all = false
    @Option(help: "Check this share of each session's snapshots, chosen at random (e.g. 10%); the newest always.")
    var sample: String?
    @Flag(help: "Print the report as JSON.") var json = false
    @Argument(help: "Session ids.") var sessions: [SessionID] = []

    func validate() throws {
        guard all != !sessions.isEmpty else { throw ValidationError("name session ids or pass --all (not both)") }
        if let sample, Self.share(sample) == nil {
            throw ValidationError("--sample \(FileName.displayed(sample)): expected a percentage above 0 and at most 100, e.g. 10%")
        }
    }

    /// "10%" or "10" → 0.1.
    static func share(_ text: String) -> Double? {
        let digits = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let percent = Double(digits), percent > 0, percent <= 100 else { return nil }
        return percent / 100
    }

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.verify")
        let opened = try await OpenedStorage.open(storage, logger: logger, access: .read)
        let stores = [opened.primary] + (opened.mirror.map { [$0.remote] } ?? [])
        let ids = try all ? await opened.sources.sessions() : sessions
        var report = VerifyReport()
        for id in ids {
            var found = false
            for store in stores {
                var result = VerifyReport.Session(sessionId: id.description, store: store.store.location)
                do {
                    let checks = try await SnapshotVerifier(sessionStore: store).verify(id, sample: sample.flatMap(Self.share))
                    found = found || !checks.isEmpty
                    result.snapshots = checks.map(VerifyReport.Snapshot.init)
                } catch {
                    found = true
                    result.error = "\(error)"
                    logger.error("verify failed", metadata: ["session": "\(id)", "store": "\(store.store.location)", "error": "\(error)"])
                }
                if result.error != nil || !result.snapshots.isEmpty { report.sessions.append(result) }
            }
            if !found && !all {
                report.sessions.append(.init(sessionId: id.description, store: stores[0].store.location, error: "no committed snapshot in the store"))
            }
        }
        if json {
            try printJSON(report)
        } else {
            for session in report.sessions {
                if let error = session.error { print("\(session.sessionId)\t\(session.store)\tfailed\t\(error)") }
                for snapshot in session.snapshots {
                    let verdict = snapshot.status == "ok" ? "ok" : "\(snapshot.status)\t\(snapshot.error ?? "")"
                    print("\(session.sessionId)\t\(snapshot.id)\t\(snapshot.kind)\t\(verdict)")
                }
            }
            let checked = report.sessions.reduce(0) { $0 + $1.snapshots.count }
            print("checked \(checked) snapshot(s) of \(ids.count) session(s): \(report.defects) defect(s), \(report.failures) session(s) not checked")
        }
        if report.defects > 0 || report.failures > 0 { throw ExitCode(1) }
    }
}

struct VerifyReport: Encodable {
    struct Snapshot: Encodable {
        var id: String
        var kind: String
        /// "ok", or the defect's reason (`corrupt`, `missing`, `broken_chain`, `state_mismatch`, `depends_on_defective`).
        var status: String
        var error: String?

        init(_ check: SnapshotCheck) {
            id = "\(check.id)"
            kind = check.kind.rawValue
            status = check.defect?.reason ?? "ok"
            error = check.defect.map { "\($0)" }
        }
    }

    struct Session: Encodable {
        var sessionId: String
        var store: String
        var snapshots: [Snapshot] = []
        /// The session could not be checked (store unreachable, head unreadable, nothing stored).
        var error: String?
    }

    var sessions: [Session] = []

    var defects: Int { sessions.reduce(0) { $0 + $1.snapshots.filter { $0.status != "ok" }.count } }
    var failures: Int { sessions.filter { $0.error != nil }.count }

    enum CodingKeys: String, CodingKey { case sessions, defects, failures }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(sessions, forKey: .sessions)
        try container.encode(defects, forKey: .defects)
        try container.encode(failures, forKey: .failures)
    }
}
