import Foundation
import TestSupport
import Testing

/// Settings as users get them wrong, the real binary on a local store: one line naming the
/// flag or variable, the documented exit code, and nothing written.
@Suite("configuration")
struct ConfigurationTests {
    struct BadValue: Sendable, CustomTestStringConvertible {
        var subcommand: String
        var arguments: [String] = []
        var environment: [String: String] = [:]
        /// What the one line must name.
        var named: String
        var testDescription: String { "\(subcommand) \(arguments.joined(separator: " ")) \(environment)" }
    }

    /// Durations that overflowed crashed the agent (SIGILL, no message); times that are not
    /// finite were taken for times. Bad duration flags: `flagsRefusedSayingWhy`.
    static let badValues: [BadValue] = [
        .init(subcommand: "watch", environment: ["GRACEFUL_SHUTDOWN_TIMEOUT": "99999999999999999"], named: "GRACEFUL_SHUTDOWN_TIMEOUT"),
        .init(subcommand: "watch", environment: ["SESSION_BACKUP_INTERVAL": "-1"], named: "SESSION_BACKUP_INTERVAL"),
        .init(subcommand: "watch", environment: ["SYNC_AGENT_PRUNE_EVERY": "999999999999999w"], named: "SYNC_AGENT_PRUNE_EVERY"),
        .init(subcommand: "watch", environment: ["SESSION_BACKUP_INTERVAL": "5s\nFAKE line"], named: "SESSION_BACKUP_INTERVAL"),
        .init(subcommand: "prune", environment: ["SYNC_AGENT_KEEP_WITHIN": "-7d"], named: "SYNC_AGENT_KEEP_WITHIN"),
        .init(subcommand: "prune", environment: ["SYNC_AGENT_KEEP_LAST": "0"], named: "SYNC_AGENT_KEEP_LAST"),
        .init(subcommand: "restore", arguments: ["--all", "--at", "@nan"], named: "--at"),
        .init(subcommand: "restore", arguments: ["--all", "--at", "@inf"], named: "--at"),
        .init(subcommand: "restore", arguments: ["--all", "--at", "@1e308"], named: "--at"),
        .init(subcommand: "restore", arguments: ["--all", "--at", "@-1"], named: "--at"),
        .init(subcommand: "restore", arguments: ["--all", "--at", "2026-11-22\nFAKE line"], named: "--at"),
        .init(subcommand: "restore", arguments: ["--all", "--parallel", "0"], named: "--parallel"),
        .init(subcommand: "restore", arguments: ["--all", "--parallel", "65"], named: "--parallel"),
        .init(subcommand: "restore", arguments: ["--all", "--parallel", "100000"], named: "--parallel"),
        .init(subcommand: "backup", environment: ["SYNC_AGENT_LOG_LEVEL": "loud\nFAKE line"], named: "SYNC_AGENT_LOG_LEVEL"),
        .init(subcommand: "snapshots", environment: ["SYNC_AGENT_LOG_FORMAT": "xml"], named: "SYNC_AGENT_LOG_FORMAT"),
    ]

    @Test(arguments: badValues)
    func aBadValueIsOneLineAndExit64(_ bad: BadValue) async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = workspace.directory.file("store")
        var runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        runner.environment = bad.environment
        let result = try await runner.run(
            bad.subcommand, ["--sessions-dir", workspace.sessions] + (bad.subcommand == "watch" ? ["--no-listen"] : []) + bad.arguments)
        #expect(result.termination == .exited(64), "\(result.standardError)")
        let lines = result.standardError.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("Error: \(bad.named) "), "\(result.standardError)")
        #expect(!FileManager.default.fileExists(atPath: store), "the store was created")
    }

    /// Durations that overflowed crashed the agent (SIGILL, no message). A bad duration or
    /// snapshot flag is refused by the parser, which says why after naming the value and the flag.
    static let flagsRefusedSayingWhy: [(arguments: [String], message: String)] = [
        (["watch", "--max-delay", "99999999999999w"], "'99999999999999w' is invalid for '--max-delay <max-delay>': longer than 100 years"),
        (["watch", "--max-delay=-5s"], "'-5s' is invalid for '--max-delay <max-delay>': a duration cannot be negative"),
        (["watch", "--max-delay", "0"], "'0' is invalid for '--max-delay <max-delay>': must be longer than 0"),
        (["watch", "--quiet-period", "99999999999999999999ms"], "is invalid for '--quiet-period <quiet-period>': longer than 100 years"),
        (["watch", "--shutdown-timeout", "1e9"], "'1e9' is invalid for '--shutdown-timeout <shutdown-timeout>': expected a duration such as 250ms"),
        (["watch", "--store-probe-interval", "0s"], "'0s' is invalid for '--store-probe-interval <store-probe-interval>': must be longer than 0"),
        (["watch", "--prune-every", "9999999999999d"], "'9999999999999d' is invalid for '--prune-every <prune-every>': longer than 100 years"),
        (["watch", "--keep-within", "200000000000d"], "is invalid for '--keep-within <keep-within>': longer than 100 years"),
        (["backup", "--keep-within", "200000000000d"], "is invalid for '--keep-within <keep-within>': longer than 100 years"),
        (["prune", "--keep-within", "200000000000d"], "is invalid for '--keep-within <keep-within>': longer than 100 years"),
        (["watch", "--max-delay", fakeLine], #"'x\nFAKE line' is invalid for '--max-delay <max-delay>': expected a duration"#),
        (["restore", "--snapshot", fakeLine, "small"], #"'x\nFAKE line' is invalid for '--snapshot <snapshot>': expected SEQUENCE.GENERATION"#),
    ]

    @Test(arguments: flagsRefusedSayingWhy)
    func aBadFlagIsRefusedByTheParserSayingWhy(_ arguments: [String], message: String) async throws {
        let lines = try await refusedUsage(arguments)
        #expect(lines.first?.hasPrefix("Error: The value ") == true && lines.first?.contains(message) == true, "\(lines)")
    }

    static let badFlagValues: [[String]] = [
        ["watch", "--mode", fakeLine], ["backup", "--mode=\(fakeLine)"], ["watch", "--log-level", fakeLine],
        ["snapshots", "--log-format", fakeLine], ["watch", "--on-delete", fakeLine], ["backup", "--addressing", fakeLine],
        ["restore", "--snapshot", fakeLine, "small"], ["verify", "--all", "--sample", fakeLine], ["prune", "--keep-last", "1", fakeLine],
    ]
    static let fakeLine = "x\nFAKE line"

    /// A bad flag value is echoed escaped, so the message cannot forge a line of its own: the
    /// values of --snapshot, --sample, --mode and --log-level were echoed as given.
    @Test(arguments: badFlagValues)
    func aBadFlagValueIsEchoedOnOneLine(_ arguments: [String]) async throws {
        let lines = try await refusedUsage(arguments)
        #expect(lines.first?.hasPrefix("Error: ") == true && lines.first?.contains(#"x\nFAKE line"#) == true, "\(lines)")
        #expect(!lines.contains { $0.hasPrefix("FAKE line") }, "\(lines)")
    }

    /// Runs `arguments` (a command and its flags) on a fresh workspace, expects exit 64 and no
    /// store created, and hands back standard error's lines.
    private func refusedUsage(_ arguments: [String]) async throws -> [Substring] {
        let workspace = try Workspace(sessions: ["small"])
        let store = workspace.directory.file("store")
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let result = try await runner.run(
            arguments[0], ["--sessions-dir", workspace.sessions] + (arguments[0] == "watch" ? ["--no-listen"] : []) + arguments.dropFirst())
        #expect(result.termination == .exited(64), "\(result.standardError)")
        #expect(!FileManager.default.fileExists(atPath: store), "the store was created")
        return result.standardError.split(separator: "\n")
    }

    /// An empty key variable is a secret that did not arrive: it fell back to the local store's
    /// own key, so the snapshots were encrypted with a key nobody else had.
    @Test(arguments: ["", " "])
    func anEmptyKeyVariableIsRefused(_ value: String) async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = workspace.directory.file("store")
        var runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        runner.environment = ["SESSION_ENCRYPTION_KEY": value]
        let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(result.termination == .exited(1), "\(result.standardError)")
        let lines = result.standardError.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("SESSION_ENCRYPTION_KEY is set but empty"), "\(result.standardError)")
        #expect(!FileManager.default.fileExists(atPath: store), "the store was created")
    }

    static let readOnlyCommands: [[String]] = [
        ["restore", "--all"], ["verify", "--all"], ["snapshots"], ["status", "--agent", "http://127.0.0.1:1", "--log-level", "error"],
    ]

    /// A mistyped --local-store: the read-only commands created it and a new key, then reported
    /// success with nothing done.
    @Test(arguments: readOnlyCommands)
    func aReadOnlyCommandOnAMissingStoreFails(_ command: [String]) async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = workspace.directory.file("mistyped/store")
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let result = try await runner.run(command[0], ["--sessions-dir", workspace.freshDirectory()] + command.dropFirst())
        #expect(result.termination == .exited(1), "\(result.standardError)")
        let lines = result.standardError.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("no local store at \(store)"), "\(result.standardError)")
        #expect(!FileManager.default.fileExists(atPath: workspace.directory.file("mistyped")), "the store was created")
    }

    enum ReadOnlyStore: String, CaseIterable, Sendable {
        /// The store's directories and files `chmod a-w`, the agent an unprivileged user.
        case permissions
        /// A read-only bind mount of the store, in a mount namespace of the agent's own.
        case mount
    }

    /// The read-only commands work on a store they cannot write, and change nothing there.
    @Test(arguments: ReadOnlyStore.allCases)
    func readOnlyCommandsWorkOnAReadOnlyStore(_ kind: ReadOnlyStore) async throws {
        let workspace = try Workspace(sessions: ["small", "medium"])
        let store = workspace.directory.file("store")
        var runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")
        let restored = try workspace.freshDirectory()
        switch kind {
        case .permissions:
            // Root ignores permissions: the agent runs as nobody (AgentUser), owning the read-only store.
            try #require(AgentUser.isSeparate, "only root can make a store the agent's user may not write")
            try await runProgram("/bin/chmod", ["-R", "a-w", store])
        case .mount:
            // Mounting takes root: the read-only mount, not the user, is what denies the writes.
            runner.runsAsTestUser = true
            runner.launcher = [
                "/usr/bin/unshare", "--mount", "/bin/sh", "-c",
                #"mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@""#, store,
            ]
        }
        let before = try storeListing(store)
        for command in Self.readOnlyCommands {
            let result = try await runner.run(command[0], ["--sessions-dir", restored] + command.dropFirst())
            #expect(result.termination == .exited(0), "\(command): \(result.standardError)")
        }
        try expectSameTree(restored, workspace.sessions)
        #expect(try storeListing(store) == before, "the store changed")
    }

    /// Two first starts at once both use one key: the loser of the race could read the key
    /// file before the winner had written it, and failed.
    @Test func twoFirstStartsAgreeOnTheLocalKey() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"])
        for round in 0..<20 {
            let store = workspace.directory.file("store-\(round)")
            let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
            let racing = try ["small", "medium"].map { session in
                try runner.start("backup", ["--sessions-dir", workspace.sessions, "--log-level", "error", session])
            }
            for backup in racing {
                #expect(try await backup.waitForExit() == .exited(0), "\(backup.standardError)")
            }
            let restored = try workspace.freshDirectory()
            try await runner.restore(into: restored)
            try expectSameTree(restored, workspace.sessions)
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: store).filter { $0.hasPrefix(".sync-agent-key.") }
            #expect(leftovers.isEmpty, "\(leftovers)")
        }
    }

    /// Every file and directory of the store with its size and modification time.
    private func storeListing(_ root: String) throws -> [String] {
        try FileManager.default.subpathsOfDirectory(atPath: root).sorted().map { path in
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(root)/\(path)")
            return "\(path) \(attributes[.size] ?? 0) \(attributes[.modificationDate] ?? "")"
        }
    }
}
