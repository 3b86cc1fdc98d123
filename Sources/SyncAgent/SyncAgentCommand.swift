import ArgumentParser

@main
struct SyncAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync-agent",
        abstract: "Keeps WhatsApp gateway session directories safe across worker restarts.",
        discussion: """
            watch     run beside a worker: snapshot every change of every session
            restore   run before a worker recovers sessions: bring their directories back
            backup    run from cron or a timer: take a full snapshot of every session
            prune     delete the snapshots a retention policy no longer keeps
            snapshots list the stored sessions, or one session's snapshots
            verify    download and check committed snapshots, writing nothing
            status    print each session's state, from the running agent or the store
            keygen    print a new encryption key
            """,
        subcommands: [
            WatchCommand.self, RestoreCommand.self, BackupCommand.self, PruneCommand.self, SnapshotsCommand.self,
            VerifyCommand.self, StatusCommand.self, KeygenCommand.self,
        ])
}
