import ArgumentParser
import SyncEngine

struct FlushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flush",
        abstract: "Ask the running agent to commit everything written to a session so far.",
        discussion: """
            Returns once everything written to the session's directory before the call is in a
            committed snapshot, and prints {"sessionId", "snapshot", "committedAt"}. Over the
            control socket, or over TCP with the agent's token.
            Exit codes: 0 committed, 5 not committed within the timeout (the store is down or
            slow), 7 fenced (another agent holds the session), 8 released, 9 unknown session,
            1 no agent answered or it refused the caller, 64 bad usage.
            """)

    @OptionGroup var connection: ControlClientOptions
    @OptionGroup var call: CommitCallOptions
    @Argument(help: "The session id.", transform: SessionID.init(parsing:)) var session: SessionID

    func run() async throws {
        try await call.post(ControlClientOptions.path(session, "flush"), via: connection)
    }
}
