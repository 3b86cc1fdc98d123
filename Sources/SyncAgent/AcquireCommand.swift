import ArgumentParser
import SyncEngine

struct AcquireCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "acquire",
        abstract: "Ask the running agent to take a session over, restore it and watch it.",
        discussion: """
            How a running worker takes a session over without restarting: the agent acquires
            the session (at once when it is released, its holder's lease expired, or the holder
            is this agent; else it waits up to --wait-release for the holder to release it, then
            fails, or with --take-over fences the holder), restores it into the sessions
            directory atomically and watches it. Prints the restore report, one entry. The same
            rules as `restore`'s --wait-release and --take-over. Over the control socket, or over
            TCP with the agent's token.
            Exit codes: 0 acquired and restored, 4 the restore failed (the reason is one of
            restore's), 6 held elsewhere past the wait (the directory is untouched), 9 unknown or
            logged-out session, 1 no agent answered or it refused the caller, 64 bad usage.
            """)

    @OptionGroup var connection: ControlClientOptions
    @Option(help: "How long to wait for a live holder to release the session; 0 does not wait (default 30s, at most 10m).", transform: DurationSetting.nonNegative)
    var waitRelease: Duration?
    @Flag(help: "After the wait, fence the holder and take the session over instead of failing.") var takeOver = false
    @Argument(help: "The session id.", transform: SessionID.init(parsing:)) var session: SessionID

    func validate() throws {
        if let waitRelease, waitRelease > ControlRoutes.longestWait {
            throw ValidationError("--wait-release: at most \(ControlRoutes.longestWait)")
        }
    }

    func run() async throws {
        var parameters: [String: String] = [:]
        if let waitRelease { parameters["waitRelease"] = ControlClientOptions.parameter(waitRelease) }
        if takeOver { parameters["takeOver"] = "true" }
        try await connection.post(
            ControlClientOptions.path(session, "acquire"), parameters: parameters,
            allowance: (waitRelease ?? AcquireOptions().waitRelease) + ControlRoutes.defaultCallTimeout)
    }
}
