import Foundation
import TestSupport
import Testing

/// `sync-agent backup`, the real binary on a local store.
@Suite("backup")
struct BackupCommandTests {
    /// A file caught mid-write (JSON that does not parse) cannot go into the base: the base is
    /// committed without it, and backup must say so and exit non-zero rather than report a
    /// backup that a restore would bring back without the file (it exited 0).
    @Test func aFileBeingWrittenFailsTheBackupUntilItIsWhole() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        let halfWritten = "\(workspace.session("small"))/app-state-sync-key-new.json"
        try write(#"{"keyData":"#, to: halfWritten)

        let caught = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(caught.termination == .exited(1))
        #expect(caught.standardOutput.contains("1 failed"), "\(caught.standardOutput)")
        #expect(caught.standardError.contains("backed up without files being written"), "\(caught.standardError)")

        try write(#"{"keyData":"AAAA"}"#, to: halfWritten)
        let whole = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(whole.termination == .exited(0), "\(whole.standardError)")
        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        try expectSameTree(restored, workspace.sessions)
    }

    /// A file over the size limit: the session's base is written without it, and backup names
    /// the file and exits non-zero.
    @Test func aFileOverTheSizeLimitFailsTheBackupNamingIt() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        let large = "\(workspace.session("small"))/media.bin"
        #expect(FileManager.default.createFile(atPath: large, contents: nil))
        #expect(truncate(large, 65 << 20) == 0)

        let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json"])
        #expect(result.termination == .exited(1))
        #expect(result.standardOutput.contains("files not backed up: media.bin (larger than the 64 MiB limit)"), "\(result.standardOutput)")
        try FileManager.default.removeItem(atPath: large)
        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        try expectSameTree(restored, workspace.sessions)
    }
}
