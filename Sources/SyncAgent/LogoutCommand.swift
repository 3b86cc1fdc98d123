import ArgumentParser
import SyncEngine

struct LogoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logout",
        abstract: "Ask the running agent to record a session's logout and remove its directory.",
        discussion: """
            Commits a tombstone for the session (a later restore leaves it out) and removes its
            local directory, as a removed directory does with --on-delete tombstone; prints
            {"sessionId", "snapshot", "committedAt"}. Over the control socket, or over TCP with
            the agent's token.
            Exit codes: 0 logged out, 5 not committed within the timeout, 7 fenced, 8 released,
            9 unknown session, 1 no agent answered or it refused the caller, 64 bad usage.
            """)

    @OptionGroup var connection: ControlClientOptions
    @OptionGroup var call: CommitCallOptions
    @Argument(help: "The session id.", transform: SessionID.init(parsing:)) var session: SessionID

    func run() async throws {
        try await call.post(ControlClientOptions.path(session, "logout"), via: connection)
    }
}
