import ArgumentParser
import FoundationEssentials
import SyncEngine

struct ReleaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "release",
        abstract: "Ask the running agent to commit a session and give it up, for another worker to acquire.",
        discussion: """
            Flushes the session, marks its head released naming the final snapshot, and the
            agent stops writing it until it is acquired again; prints {"sessionId", "snapshot",
            "committedAt"}. With --all, every session the agent holds (a draining worker), and
            prints {"preservedSessions": [...], "failedSessions": [...]}. Releasing a released
            session answers the same. Over the control socket, or over TCP with the agent's token.
            Exit codes: 0 released, 3 --all and some sessions were not released (named), 5 not
            committed within the timeout, 7 fenced, 9 unknown session, 1 no agent answered or it
            refused the caller, 64 bad usage.
            """)

    @OptionGroup var connection: ControlClientOptions
    @Flag(help: "Release every session the agent holds.") var all = false
    @OptionGroup var call: CommitCallOptions
    @Argument(help: "The session id.", transform: SessionID.init(parsing:)) var session: SessionID?

    func validate() throws {
        guard all != (session != nil) else { throw ValidationError("name a session or pass --all (one of them)") }
    }

    func run() async throws {
        guard let session else {
            struct Report: Decodable {
                struct Failed: Decodable {}
                var failedSessions: [Failed]
            }
            let body = try await call.post("/sessions/release", via: connection)
            let report = try? JSONDecoder().decode(Report.self, from: Data(body))
            guard let report else {
                writeStandardError("Error: the agent's answer is not a release report\n")
                throw ExitCode(1)
            }
            if !report.failedSessions.isEmpty { throw ExitCode(ControlClientOptions.Exit.someFailed) }
            return
        }
        try await call.post(ControlClientOptions.path(session, "release"), via: connection)
    }
}
