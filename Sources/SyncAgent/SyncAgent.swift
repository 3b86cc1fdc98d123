import ArgumentParser

@main
struct SyncAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sync-agent")
}
