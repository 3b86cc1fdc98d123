import Foundation
import Glibc

/// fixtures/sqlite/auth_writer.py as a child process: a Baileys SQLite auth state (WAL,
/// `synchronous=NORMAL`) written `rate` transactions a second through one open connection, each
/// commit logged with the digest of the database's rows after it. Runs as the agent's user, as the
/// application does beside the agent.
public final class SQLiteWriterProcess: Sendable {
    public let process: ChildProcess
    public let database: String
    public let logPath: String
    static let script = Fixtures.path("sqlite/auth_writer.py")

    /// `journalMode`: `wal`, or `delete` (a rollback journal).
    public init(database: String, rate: Int, seconds: Int = 3600, seed: Int, journalMode: String = "wal", logs: String) throws {
        self.database = database
        let name = URL(fileURLWithPath: database).lastPathComponent
        logPath = "\(logs)/sqlite-writer-\(name)-\(seed).log"
        try AgentUser.handOver(URL(fileURLWithPath: database).deletingLastPathComponent().path)
        try AgentUser.handOver(logs)
        let command = try AgentUser.command(
            "/usr/bin/python3",
            [Self.script, "write", "--db", database, "--creds", Fixtures.path("sessions/small/creds.json"), "--log", logPath,
             "--rate", "\(rate)", "--seconds", "\(seconds)", "--seed", "\(seed)", "--journal-mode", journalMode])
        process = try ChildProcess(
            command.executable, command.arguments, environment: SyncAgentRunner.cleanEnvironment(),
            standardOutput: "\(logs)/sqlite-writer.out", standardError: "\(logs)/sqlite-writer.err")
    }

    /// SIGTERM, taken between two transactions; the log then ends with the final state.
    public func stop() async throws {
        process.send(SIGTERM)
        let termination = try await process.waitForExit(timeout: .seconds(60))
        guard termination == .exited(0) else { throw ProgramFailure("the SQLite writer ended with \(termination): \(process.standardError)") }
    }

    /// What the log says so far: each commit's digest, the longest commit (the writer's stall) in
    /// seconds, the largest `-wal` seen after a commit, and the final digest once it stopped.
    public func log() throws -> (digests: Set<String>, longestCommit: Double, largestWAL: Int, final: String?, commits: Int) {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        var digests: Set<String> = []
        var longest = 0.0
        var largest = 0
        var final: String?
        var commits = 0
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            if fields.first == "commit", fields.count == 5 {
                digests.insert(fields[2])
                longest = max(longest, Double(fields[3]) ?? 0)
                largest = max(largest, Int(fields[4]) ?? 0)
                commits = Int(fields[1]) ?? commits
            } else if fields.first == "end", fields.count == 3 {
                final = fields[2]
            }
        }
        return (digests, longest, largest, final, commits)
    }

    /// `integrity_check`'s first row and the digest of the rows of the database at `path`.
    public static func check(_ path: String) async throws -> (integrity: String, digest: String) {
        let output = try await runProgram("/usr/bin/python3", [script, "digest", "--db", path])
        let fields = output.split(whereSeparator: \.isWhitespace).map(String.init)
        guard fields.count == 2 else { throw ProgramFailure("auth_writer.py digest printed \(output)") }
        return (fields[0], fields[1])
    }
}
