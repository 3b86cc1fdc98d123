import Foundation
import Glibc
import TestSupport
import Testing

/// `sync-agent watch` beside applications that keep their sessions in SQLite (WAL,
/// `synchronous=NORMAL`, Baileys' schema), written 100 transactions a second through a connection
/// kept open: every snapshot the agent commits restores to a database that passes
/// `integrity_check` and holds exactly the rows after one of the writer's commits, also when the
/// agent is SIGKILLed at random moments; the writer's WAL stays bounded (its checkpoints are not
/// starved by the agent's reads).
///
/// Environment: SYNC_AGENT_SQLITE_KILLS (the kills of the crash loop; default 50),
/// SYNC_AGENT_CRASH_SEED (default 1).
@Suite("watch: SQLite sessions", .serialized)
struct SQLiteWatchTests {
    static let seed = ProcessInfo.processInfo.environment["SYNC_AGENT_CRASH_SEED"].flatMap(Int.init) ?? 1
    let watchOptions = ["--quiet-period", "50ms", "--max-delay", "300ms"]

    /// Writers of databases in sessions: by default a session holding a database and JSON files
    /// (`mixed`), and one holding two databases (`two`).
    struct Writers {
        var all: [(session: String, name: String, writer: SQLiteWriterProcess)]

        init(
            workspace: Workspace, rate: Int, journalMode: String = "wal",
            databases: [(session: String, name: String, share: Int)] = [("mixed", "auth.db", 1), ("two", "a.db", 4), ("two", "b.db", 4)]
        ) throws {
            for session in Set(databases.map(\.session)) {
                try FileManager.default.createDirectory(atPath: workspace.session(session), withIntermediateDirectories: true)
            }
            if databases.contains(where: { $0.session == "mixed" }) {
                for name in ["app-state-sync-version-regular.json", "pre-key-1.json"] {
                    try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small/\(name)"), toPath: workspace.session("mixed") + "/" + name)
                }
            }
            try FileManager.default.createDirectory(atPath: workspace.logs, withIntermediateDirectories: true)
            all = try databases.enumerated().map { index, database in
                let writer = try SQLiteWriterProcess(
                    database: workspace.session(database.session) + "/" + database.name, rate: rate / database.share,
                    seed: SQLiteWatchTests.seed * 10 + index, journalMode: journalMode, logs: workspace.logs)
                return (database.session, database.name, writer)
            }
        }

        /// Until the newest snapshots restore to every writer's final state (they stopped), or 90 s.
        func waitForFinalStates(_ runner: SyncAgentRunner, workspace: Workspace) async throws {
            let deadline = ContinuousClock.now + .seconds(90)
            var remaining: [String] = []
            repeat {
                try await Task.sleep(for: .milliseconds(500))
                let latest = try workspace.freshDirectory()
                try await runner.restore(into: latest)
                remaining = try await defects(restoredUnder: latest, final: true)
            } while !remaining.isEmpty && ContinuousClock.now < deadline
            #expect(remaining.isEmpty, "\(remaining)")
        }

        /// Restores each snapshot of `session` the agent logged and checks its databases.
        func checkEverySnapshot(of session: String, agent: RunningAgent, runner: SyncAgentRunner, workspace: Workspace) async throws {
            let snapshots = agent.uploads.filter { $0.session == session }.map(\.snapshot)
            #expect(snapshots.count >= 5, "\(agent.log)")
            for snapshot in Set(snapshots).sorted() {
                let target = try workspace.freshDirectory()
                try await runner.restore(into: target, ["--snapshot", snapshot, session])
                let defects = try await defects(restoredUnder: target, sessions: [session])
                #expect(defects.isEmpty, "snapshot \(snapshot) of \(session): \(defects)")
                if session == "mixed" {
                    #expect(try sortedFiles("\(target)/mixed").filter { $0.hasSuffix(".json") } == ["app-state-sync-version-regular.json", "pre-key-1.json"])
                }
            }
        }

        func stop() async throws {
            for (_, _, writer) in all { try await writer.stop() }
        }

        /// Every database of the sessions restored under `root`: whole, and in a state its writer
        /// committed (`final`: the state it stopped in). A message per defect.
        func defects(restoredUnder root: String, sessions: [String]? = nil, final: Bool = false) async throws -> [String] {
            var defects: [String] = []
            for (session, name, writer) in all where sessions?.contains(session) ?? true {
                let path = "\(root)/\(session)/\(name)"
                guard FileManager.default.fileExists(atPath: path) else {
                    // Created by the writer after the snapshot: only the last snapshot must have it.
                    if final { defects.append("\(session)/\(name) is missing") }
                    continue
                }
                let (integrity, digest) = try await SQLiteWriterProcess.check(path)
                let log = try writer.log()
                if integrity != "ok" { defects.append("\(session)/\(name) fails integrity_check: \(integrity)") }
                if final, digest != log.final { defects.append("\(session)/\(name) is not the writer's final state") }
                if !log.digests.contains(digest) { defects.append("\(session)/\(name) holds a state its writer never committed") }
                let companions = try FileManager.default.contentsOfDirectory(atPath: "\(root)/\(session)").filter { $0.hasSuffix("-wal") || $0.hasSuffix("-shm") || $0.hasSuffix("-journal") }
                if !companions.isEmpty { defects.append("\(session) restored with \(companions)") }
            }
            return defects
        }
    }

    @Test func everyCommittedSnapshotIsAStateTheWriterCommittedAndTheWALStaysBounded() async throws {
        let workspace = try Workspace(sessions: [])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let writers = try Writers(workspace: workspace, rate: 100)
        // Every snapshot kept, so that each one the agent committed can be restored.
        let agent = try runner.watch(workspace.sessions, watchOptions + ["--keep-within", "1h"])
        try await Task.sleep(for: .seconds(12))
        let metrics = try await httpGet(try await agent.endpoint() + "/metrics").body
        try await writers.stop()
        try await writers.waitForFinalStates(runner, workspace: workspace)
        for session in ["mixed", "two"] {
            try await writers.checkEverySnapshot(of: session, agent: agent, runner: runner, workspace: workspace)
        }
        #expect(try await agent.terminate() == .exited(0))

        let main = try writers.all[0].writer.log()
        // SQLite checkpoints at 1,000 pages (4 MB) and then reuses the WAL from its start: a WAL
        // the agent's readers starved would grow on past it.
        #expect(main.largestWAL < 8 << 20, "the -wal reached \(main.largestWAL) bytes")
        // The histogram's first bucket that holds every read transaction bounds the longest.
        let readTransactions = metrics.split(separator: "\n").filter {
            $0.hasPrefix("sync_agent_sqlite_read_transaction_seconds_sum") || $0.hasPrefix("sync_agent_sqlite_read_transaction_seconds_count")
                || $0.hasPrefix("sync_agent_sqlite_read_transaction_seconds_bucket{le=\"0.005\"}")
                || $0.hasPrefix("sync_agent_sqlite_read_transaction_seconds_bucket{le=\"0.05\"}")
        }
        print("""
            SQLite watch: \(main.commits) commits of auth.db, longest commit (the writer's stall) \(String(format: "%.1f", main.longestCommit * 1000)) ms, \
            largest -wal \(main.largestWAL) bytes; snapshots: \(agent.uploads.count); the agent's read transactions: \(readTransactions.joined(separator: "; "))
            """)
    }

    @Test func theAgentKilledAtRandomMomentsOnlyEverCommitsStatesTheWriterCommitted() async throws {
        let kills = ProcessInfo.processInfo.environment["SYNC_AGENT_SQLITE_KILLS"].flatMap(Int.init) ?? 50
        let workspace = try Workspace(sessions: [])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let writers = try Writers(workspace: workspace, rate: 100)
        var random = SplitMix64(seed: UInt64(Self.seed))
        for kill in 1...kills {
            let agent = try runner.watch(workspace.sessions, watchOptions)
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...1200, using: &random)))
            try await agent.process.kill()
            let context = "kill \(kill) of \(kills) (seed \(Self.seed)), the agent's log ends:\n" + agent.logLines.suffix(10).joined(separator: "\n")
            try #require(agent.process.exitStatus == .signaled(SIGKILL), "the agent ended by itself: \(context)")
            let restored = try workspace.freshDirectory()
            try await runner.restore(into: restored)
            let defects = try await writers.defects(restoredUnder: restored)
            #expect(defects.isEmpty, "\(defects); \(context)")
        }
        try await writers.stop()
        let agent = try runner.watch(workspace.sessions, watchOptions)
        try await writers.waitForFinalStates(runner, workspace: workspace)
        #expect(try await agent.terminate() == .exited(0))
        print("SQLite crash loop: \(kills) kills (seed \(Self.seed))")
    }

    /// A rollback-journal database (`journal_mode = DELETE`): each commit writes the main file and
    /// deletes its `-journal`, and the agent reads it under SQLite's shared lock.
    @Test func aRollbackJournalDatabaseIsTakenAtItsCommits() async throws {
        let workspace = try Workspace(sessions: [])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let writers = try Writers(workspace: workspace, rate: 50, journalMode: "delete", databases: [("journal", "auth.db", 1)])
        // The rollback journal comes and goes at each commit, which moves the directory's mtime
        // every 20 ms: a session of databases alone needs no write pause, and waiting for one
        // would take each snapshot only after the pause's patience (5 s).
        let agent = try runner.watch(workspace.sessions, watchOptions + ["--keep-within", "1h", "--write-pause", "0"])
        try await Task.sleep(for: .seconds(6))
        try await writers.stop()
        try await writers.waitForFinalStates(runner, workspace: workspace)
        try await writers.checkEverySnapshot(of: "journal", agent: agent, runner: runner, workspace: workspace)
        #expect(try await agent.terminate() == .exited(0))
    }
}
