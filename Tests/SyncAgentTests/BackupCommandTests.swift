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
    /// A symlinked session directory is refused by `backup` as by `watch` (README, "What it
    /// does"): not followed, named as failed with its reason, exit 1; the other sessions are backed
    /// up. `backup` followed the link and backed it up.
    @Test func aSymlinkedSessionIsRefusedAndNamedAsFailed() async throws {
        let workspace = try Workspace(sessions: ["small"])
        try FileManager.default.createSymbolicLink(atPath: workspace.session("linked"), withDestinationPath: workspace.session("small"))
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)

        let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json"])
        #expect(result.termination == .exited(1), "\(result.standardError)")
        let report = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        let backedUp = (report?["backedUp"] as? [[String: Any]] ?? []).compactMap { $0["sessionId"] as? String }
        let failed = report?["failed"] as? [[String: Any]] ?? []
        #expect(backedUp == ["small"], "\(result.standardOutput)")
        #expect(failed.count == 1, "\(result.standardOutput)")
        #expect(failed.first?["sessionId"] as? String == "linked")
        #expect((failed.first?["error"] as? String)?.contains("symbolic link") == true, "\(result.standardOutput)")
        #expect(failed.first?["refusal"] as? String == "symlink", "\(result.standardOutput)")
        #expect(result.standardError.contains("linked"), "\(result.standardError)")
    }
    /// A session whose name cannot be printed as it is appears in the report as its
    /// `description` ("~" and the hex of its bytes), as README promises; a failure for files not
    /// backed up showed the raw name, a newline and all.
    @Test func aFailedSessionWithAnUnprintableNameIsReportedInItsHexSpelling() async throws {
        let workspace = try Workspace(sessions: [])
        let name = "x\nFAKE line"
        let directory = "\(workspace.sessions)/\(name)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try write(#"{"noiseKey":"AAAA"}"#, to: "\(directory)/creds.json")
        #expect(FileManager.default.createFile(atPath: "\(directory)/media.bin", contents: nil))
        #expect(truncate("\(directory)/media.bin", 65 << 20) == 0)
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)

        let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json"])
        #expect(result.termination == .exited(1), "\(result.standardError)")
        let report = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        let failed = report?["failed"] as? [[String: Any]] ?? []
        let hex = "~" + Array(name.utf8).map { String(format: "%02x", $0) }.joined()
        #expect(failed.map { $0["sessionId"] as? String } == [hex], "\(result.standardOutput)")
    }
}
