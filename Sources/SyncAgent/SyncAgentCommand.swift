import ArgumentParser
import Glibc
import SessionArchive

@main
struct SyncAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync-agent",
        abstract: "Keeps WhatsApp gateway session directories safe across worker restarts.",
        subcommands: [
            WatchCommand.self, RestoreCommand.self, BackupCommand.self, PruneCommand.self, SnapshotsCommand.self,
            VerifyCommand.self, StatusCommand.self, KeygenCommand.self, MigrateCommand.self, LocateCommand.self,
            FlushCommand.self, ReleaseCommand.self, AcquireCommand.self, LogoutCommand.self,
        ])

    /// ArgumentParser's `main`, but for one thing: the parser echoes a value it refuses as it
    /// was given, and one that cannot print on one line (a line break, control bytes) is shown
    /// escaped (`FileName.displayed`), as session ids are everywhere, so it cannot forge a line.
    static func main() async {
        do {
            var command = try await asyncParseAsRoot(nil)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            let message = escapingArguments(in: fullMessage(for: error))
            if !message.isEmpty {
                // Help goes to standard output, like ArgumentParser's own `exit(withError:)`.
                if code == .success { print(message) } else { writeStandardError(message + "\n") }
            }
            Glibc.exit(code.rawValue)
        }
    }

    private static func escapingArguments(in message: String) -> String {
        let arguments = CommandLine.arguments.dropFirst()
        // "--flag=value" is echoed as its value.
        let values = arguments + arguments.compactMap { argument in
            argument.hasPrefix("-") ? argument.firstIndex(of: "=").map { String(argument[argument.index(after: $0)...]) } : nil
        }
        return values.filter { FileName.displayed($0, escapingBackslashes: false) != $0 }
            .sorted { $0.count > $1.count }
            .reduce(message) { message, value in message.replacing(value, with: FileName.displayed(value)) }
    }
}
