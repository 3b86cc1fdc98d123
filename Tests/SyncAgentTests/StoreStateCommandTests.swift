import SessionCrypto
import Foundation
import Glibc
import SyncEngine
import TestSupport
import Testing

/// How `restore`, `snapshots`, `verify` and `prune` read a session's state when the store or the
/// directory is not what a writer left: a head missing, corrupt or replayed, a directory with
/// planted extras, a file where a session directory should be. The real binary on a local store.
@Suite("store state: what the reading commands make of a damaged session")
struct StoreStateCommandTests {
    typealias Run = (termination: Termination, standardOutput: String, standardError: String)

    struct Fixture {
        let workspace: Workspace
        let store: String
        let runner: SyncAgentRunner

        init(sessions: [String] = ["small", "medium"]) throws {
            workspace = try Workspace(sessions: sessions)
            store = try workspace.freshDirectory()
            runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        }

        func backup(_ options: [String] = []) async throws {
            let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions] + options)
            #expect(result.termination == .exited(0), "\(result.standardError)")
        }

        func headPath(_ session: String) async throws -> String { "\(store)/" + (try await runner.locate(session)[0]) + "head" }

        /// `restore --json` into `target`: the run and each session's status ("failed: <reason>" for failures).
        func restore(into target: String, _ arguments: [String]) async throws -> (Run, statuses: [String: String]) {
            try await restoreStatuses(runner, into: target, arguments)
        }
    }

    // MARK: - prune's log

    @Test func pruneLogsAPrunedLineOnlyForASessionItDeletedFrom() async throws {
        let fixture = try Fixture()
        try await fixture.backup(["--keep-last", "10"])
        try write(#"{"round":2}"#, to: "\(fixture.workspace.session("small"))/creds.json")
        try await fixture.backup(["--keep-last", "10", "small"])

        let nothing = try await fixture.runner.run("prune", ["--keep-last", "10"])
        #expect(nothing.termination == .exited(0), "\(nothing.standardError)")
        #expect(!nothing.standardError.contains("pruned"), "\(nothing.standardError)")

        let some = try await fixture.runner.run("prune", ["--keep-last", "1"])
        #expect(some.termination == .exited(0), "\(some.standardError)")
        let pruned = some.standardError.split(separator: "\n").filter { $0.contains("pruned") }
        #expect(pruned.count == 1 && pruned[0].contains("small"), "\(some.standardError)")
    }

    // MARK: - A head that cannot be read

    @Test func snapshotsListsEverySessionAndMarksOneWhoseHeadIsCorrupt() async throws {
        let fixture = try Fixture()
        try await fixture.backup()
        try write("not an encrypted head", to: try await fixture.headPath("small"))

        let listing = try await fixture.runner.run("snapshots", ["--json"])
        #expect(listing.termination == .exited(1), "\(listing.standardError)")
        let sessions = try #require(try jsonObject(listing)["sessions"] as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: sessions.map { ($0["sessionId"] as! String, $0) })
        #expect(byID["medium"]?["latest"] as? String != nil)
        #expect(byID["medium"]?["error"] == nil)
        #expect((byID["small"]?["error"] as? String)?.contains("head") == true, "\(sessions)")

        let text = try await fixture.runner.run("snapshots", [])
        #expect(text.termination == .exited(1))
        #expect(text.standardOutput.contains("medium"))
        #expect(text.standardOutput.split(separator: "\n").contains { $0.hasPrefix("small") && $0.contains("failed") }, "\(text.standardOutput)")
    }

    /// `status` without a running agent reads the store: a session whose head cannot be read is
    /// listed with its error (state `failed`) beside the others, and the command exits 1. It
    /// failed entirely, listing none.
    @Test func statusFromTheStoreListsEverySessionAndMarksOneWhoseHeadIsCorrupt() async throws {
        let fixture = try Fixture()
        try await fixture.backup()
        try write("not an encrypted head", to: try await fixture.headPath("small"))

        let nobody = "http://127.0.0.1:\(try freePort())"
        let result = try await fixture.runner.run("status", ["--agent", nobody, "--json"])
        #expect(result.termination == .exited(1), "\(result.standardError)")
        let rows = try #require(try jsonObject(result)["sessions"] as? [[String: Any]], "\(result.standardOutput)")
        let byID = Dictionary(uniqueKeysWithValues: rows.map { ($0["sessionId"] as! String, $0) })
        #expect(byID["medium"]?["state"] as? String == "stored")
        #expect(byID["medium"]?["lastSnapshot"] as? String != nil)
        #expect(byID["small"]?["state"] as? String == "failed", "\(rows)")
        #expect((byID["small"]?["lastError"] as? String)?.contains("head") == true, "\(rows)")

        let text = try await fixture.runner.run("status", ["--agent", nobody])
        #expect(text.termination == .exited(1))
        #expect(text.standardOutput.contains("medium"), "\(text.standardOutput)")
        #expect(text.standardOutput.split(separator: "\n").contains { $0.hasPrefix("small\tfailed") }, "\(text.standardOutput)")
    }

    /// Snapshots stored, the head gone: the session's state cannot be read, which is a failure
    /// of that session for every reader, `--all` included.
    @Test func aSessionWhoseHeadIsMissingBesideItsSnapshotsFailsRestoreAllAndIsFlagged() async throws {
        let fixture = try Fixture()
        try await fixture.backup()
        try FileManager.default.removeItem(atPath: try await fixture.headPath("small"))

        let target = try fixture.workspace.freshDirectory()
        let (all, statuses) = try await fixture.restore(into: target, ["--all"])
        #expect(all.termination == .exited(3), "\(all.standardError)")
        #expect(statuses == ["small": "failed: head_missing", "medium": "restored"])
        #expect(try sortedFiles(target) == ["medium"])

        let (named, namedStatuses) = try await fixture.restore(into: target, ["small"])
        #expect(named.termination == .exited(4))
        #expect(namedStatuses == ["small": "failed: head_missing"])

        let listing = try await fixture.runner.run("snapshots", ["--json"])
        #expect(listing.termination == .exited(1), "\(listing.standardError)")
        let sessions = try #require(try jsonObject(listing)["sessions"] as? [[String: Any]])
        #expect(sessions.contains { $0["sessionId"] as? String == "small" && ($0["error"] as? String)?.contains("head") == true }, "\(sessions)")

        for arguments in [["--all"], ["small"]] {
            let verify = try await fixture.runner.run("verify", arguments + ["--json"])
            #expect(verify.termination == .exited(1), "\(arguments): \(verify.standardOutput)")
            let report = try #require(try jsonObject(verify)["sessions"] as? [[String: Any]])
            #expect(report.contains { $0["sessionId"] as? String == "small" && ($0["error"] as? String)?.contains("head") == true }, "\(report)")
        }
    }

    // MARK: - Up to date means identical

    @Test(arguments: ["symlink", "fifo", "file", "directory"])
    func anythingTheSnapshotDoesNotHaveIsADifferenceAndIsRemoved(_ planted: String) async throws {
        let fixture = try Fixture(sessions: ["small"])
        try await fixture.backup()
        let target = try fixture.workspace.freshDirectory()
        try await fixture.runner.restore(into: target)
        let directory = "\(target)/small"
        switch planted {
        case "symlink": try FileManager.default.createSymbolicLink(atPath: "\(directory)/evil.json", withDestinationPath: "/etc/passwd")
        case "fifo": #expect(mkfifo("\(directory)/pipe", 0o600) == 0)
        case "file": try write("{}", to: "\(directory)/extra.json")
        default: try FileManager.default.createDirectory(atPath: "\(directory)/empty", withIntermediateDirectories: false)
        }

        let (result, statuses) = try await fixture.restore(into: target, ["--all"])
        #expect(result.termination == .exited(0), "\(result.standardError)")
        #expect(statuses == ["small": "restored"])
        try expectSameTree(target, fixture.workspace.sessions)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == sortedFiles(fixture.workspace.session("small")))

        let (again, againStatuses) = try await fixture.restore(into: target, ["--all"])
        #expect(again.termination == .exited(0))
        #expect(againStatuses == ["small": "up_to_date"])
    }

    @Test(arguments: [false, true])
    func aFileWhereTheSessionDirectoryShouldBeFailsThatSessionAndIsLeftAlone(_ ifMissing: Bool) async throws {
        let fixture = try Fixture()
        try await fixture.backup()
        let target = try fixture.workspace.freshDirectory()
        try write("someone's notes", to: "\(target)/small")

        let (result, statuses) = try await fixture.restore(into: target, ["--all"] + (ifMissing ? ["--if-missing"] : []))
        #expect(result.termination == .exited(3), "\(result.standardError)")
        #expect(statuses == ["small": "failed: not_a_directory", "medium": "restored"])
        #expect(try readBytes("\(target)/small") == Array("someone's notes".utf8))
    }

    // MARK: - A head put back over a newer one

    /// The head of the first backup copied back over the head of the third: the two bases above
    /// it, each naming the one before as its parent, were committed by a newer head. Restoring
    /// it would roll the session back, so restore fails it (`head_behind`), verify and snapshots
    /// flag it, and `--snapshot` brings back the newest.
    @Test func aHeadPutBackOverANewerOneFailsRestoreAndIsFlagged() async throws {
        let fixture = try Fixture(sessions: ["small"])
        try await fixture.backup(["--keep-last", "10"])
        let oldHead = try readBytes(try await fixture.headPath("small"))
        var newest = ""
        for round in 2...3 {
            try write(#"{"round":\#(round)}"#, to: "\(fixture.workspace.session("small"))/creds.json")
            let result = try await fixture.runner.run("backup", ["--sessions-dir", fixture.workspace.sessions, "--json", "--keep-last", "10"])
            newest = try #require((try jsonObject(result)["backedUp"] as? [[String: Any]])?.first?["snapshot"] as? String)
        }
        try FileManager.default.removeItem(atPath: try await fixture.headPath("small"))
        try write(bytes: oldHead, to: try await fixture.headPath("small"))

        let target = try fixture.workspace.freshDirectory()
        let (restore, statuses) = try await fixture.restore(into: target, ["--all"])
        #expect(restore.termination == .exited(4), "\(restore.standardError)")
        #expect(statuses == ["small": "failed: head_behind"])
        #expect(try sortedFiles(target) == [])

        let verify = try await fixture.runner.run("verify", ["small"])
        #expect(verify.termination == .exited(1), "\(verify.standardOutput)")
        #expect(verify.standardOutput.contains("put back"), "\(verify.standardOutput)")
        let snapshots = try await fixture.runner.run("snapshots", ["small"])
        #expect(snapshots.termination == .exited(1))
        #expect(snapshots.standardError.contains("put back"), "\(snapshots.standardError)")
        // A head that cannot be trusted commits nothing: every object is listed, once, as an orphan.
        let listed = try await fixture.runner.run("snapshots", ["small", "--json"])
        #expect(listed.termination == .exited(1))
        let rows = try #require(try jsonObject(listed)["snapshots"] as? [[String: Any]], "\(listed.standardOutput)")
        #expect(rows.count == 3, "\(rows)")
        #expect(rows.allSatisfy { $0["committed"] as? Bool == false }, "\(rows)")

        let (chosen, chosenStatuses) = try await fixture.restore(into: target, ["--snapshot", newest, "small"])
        #expect(chosen.termination == .exited(0), "\(chosen.standardError)")
        #expect(chosenStatuses == ["small": "restored"])
        try expectSameTree(target, fixture.workspace.sessions)
    }

    // MARK: - Local failures are not a corrupt snapshot

    @Test func aKeyThatOpensNothingIsTheWrongKey() async throws {
        let fixture = try Fixture(sessions: ["small"])
        try await fixture.backup()
        let keyFile = "\(fixture.store)/.sync-agent-key"
        try FileManager.default.removeItem(atPath: keyFile)
        let otherKey = try await SyncAgentRunner.newEncryptionKey(logDirectory: fixture.workspace.logs)
        #expect(FileManager.default.createFile(atPath: keyFile, contents: Data((otherKey + "\n").utf8), attributes: [.posixPermissions: 0o600]))

        let target = try fixture.workspace.freshDirectory()
        let (result, statuses) = try await fixture.restore(into: target, ["small"])
        #expect(result.termination == .exited(4), "\(result.standardError)")
        #expect(statuses == ["small": "failed: wrong_key"])
    }

    /// The staging directory cannot be created: the sessions directory is read-only (0555) for the
    /// agent, which is not root (AgentUser), as in production.
    @Test func aStagingDirectoryThatCannotBeWrittenIsALocalFailure() async throws {
        let fixture = try Fixture(sessions: ["small"])
        try await fixture.backup()
        let target = try fixture.workspace.freshDirectory()
        #expect(chmod(target, 0o555) == 0)

        let (result, statuses) = try await fixture.restore(into: target, ["small"])
        #expect(result.termination == .exited(4), "\(result.standardError)")
        #expect(statuses == ["small": "failed: local_io"])
        #expect(result.standardOutput.contains("Permission denied"), "\(result.standardOutput)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: target) == [])
    }

    /// A sessions directory on a 1 MiB tmpfs: the medium fixture does not fit.
    @Test(.enabled(if: getuid() == 0, "mounting a tmpfs needs root"))
    func aFullDiskIsALocalFailureNamingIt() async throws {
        let fixture = try Fixture(sessions: ["medium"])
        try await fixture.backup()
        let target = try fixture.workspace.freshDirectory()
        try await runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", target])
        defer { _ = Glibc.umount(target) }

        let (result, statuses) = try await fixture.restore(into: target, ["medium"])
        #expect(result.termination == .exited(4), "\(result.standardError)")
        #expect(statuses == ["medium": "failed: local_io"])
        #expect(result.standardOutput.contains("No space left on device"), "\(result.standardOutput)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: target) == [])
    }
}
