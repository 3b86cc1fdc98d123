import Foundation
import S3Client
import TestSupport
import Testing

/// `sync-agent prune`, and the same policy applied by `backup` and on `watch`'s schedule, on
/// a real SeaweedFS.
@Suite("prune: retention on a real store")
struct PruneCommandTests {
    /// The session's snapshot keys in the bucket (S3's copy in hybrid mode: `locate`'s last line).
    func snapshotKeys(_ runner: SyncAgentRunner, _ bucket: S3Client, _ session: String) async throws -> [String] {
        let prefix = try #require(try await runner.locate(session).last)
        return try await bucket.listObjects(prefix: prefix + "snapshots/").objects.map(\.key).sorted()
    }

    /// Four backups, each a base with its own creds.json; returns each one's snapshot id and tree.
    func fourBackups(_ runner: SyncAgentRunner, _ workspace: Workspace) async throws -> [(id: String, tree: [String: [UInt8]])] {
        var history: [(String, [String: [UInt8]])] = []
        for round in 0..<4 {
            try write(#"{"round":\#(round)}"#, to: "\(workspace.session("small"))/creds.json")
            let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json", "--keep-last", "10"])
            #expect(result.termination == .exited(0), "\(result.standardError)")
            let report = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
            let id = try #require((report?["backedUp"] as? [[String: Any]])?.first?["snapshot"] as? String)
            history.append((id, try directoryTree(workspace.session("small"))))
        }
        return history
    }

    @Test(.needsTestServers) func aDryRunDeletesNothingAndPruneKeepsWhatThePolicySaysEachStillRestoring() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket)
        let history = try await fourBackups(runner, workspace)
        let all = try await snapshotKeys(runner, bucket, "small")
        #expect(all.count == 4)

        let noPolicy = try await runner.run("prune", [])
        #expect(noPolicy.termination == .exited(64))
        #expect(noPolicy.standardError.contains("no retention policy"))

        let dryRun = try await runner.run("prune", ["--keep-last", "2", "--dry-run", "--json"])
        #expect(dryRun.termination == .exited(0), "\(dryRun.standardError)")
        let planned = try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8)) as? [String: Any]
        #expect(planned?["deleted"] as? Int == 2)
        #expect(try await snapshotKeys(runner, bucket, "small") == all)

        let pruned = try await runner.run("prune", ["small", "--keep-last", "2"])
        #expect(pruned.termination == .exited(0), "\(pruned.standardError)")
        #expect(try await snapshotKeys(runner, bucket, "small") == Array(all.suffix(2)))
        for (id, expected) in history.suffix(2) {
            let target = try workspace.freshDirectory()
            try await runner.restore(into: target, ["--snapshot", id, "small"])
            #expect(try directoryTree("\(target)/small") == expected, "snapshot \(id)")
        }

        // backup applies the same policy after its base, and says what it deleted.
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json", "--keep-last", "1"])
        let report = try JSONSerialization.jsonObject(with: Data(backup.standardOutput.utf8)) as? [String: Any]
        #expect((report?["backedUp"] as? [[String: Any]])?.first?["pruned"] as? Int == 2, "\(backup.standardOutput)")
        #expect(try await snapshotKeys(runner, bucket, "small").count == 1)
        let target = try workspace.freshDirectory()
        try await runner.restore(into: target)
        try expectSameTree(target, workspace.sessions)
    }

    @Test(.needsTestServers) func inHybridModeS3FollowsTheLocalStoresPrune() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        var runner = try await workspace.cloudRunner(on: bucket)
        let localStore = try workspace.freshDirectory()
        runner.storeArguments[runner.storeArguments.firstIndex(of: "cloud")!] = "hybrid"
        runner.storeArguments += ["--local-store", localStore]
        let history = try await fourBackups(runner, workspace)
        #expect(try await snapshotKeys(runner, bucket, "small").count == 4)

        let pruned = try await runner.run("prune", ["--keep-last", "1"])
        #expect(pruned.termination == .exited(0), "\(pruned.standardError)")
        let local = try FileManager.default.contentsOfDirectory(atPath: "\(localStore)/" + (try await runner.locate("small")[0]) + "snapshots")
        #expect(local.count == 1)
        #expect(try await snapshotKeys(runner, bucket, "small").map { ($0 as NSString).lastPathComponent } == local)
        let target = try workspace.freshDirectory()
        try await runner.restore(into: target)
        #expect(try directoryTree("\(target)/small") == history.last!.tree)
    }

    @Test(.needsTestServers) func watchAppliesThePolicyOnItsScheduleToSessionsThatGetNoNewBase() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        var runner = try await workspace.cloudRunner(on: bucket)
        _ = try await fourBackups(runner, workspace)
        // The policy from the environment, as a deployment sets it for every command.
        runner.environment["SYNC_AGENT_KEEP_LAST"] = "1"
        let agent = try runner.watch(workspace.sessions, ["--prune-every", "300ms"])
        try await agent.waitForLog("] pruned")
        #expect(try await snapshotKeys(runner, bucket, "small").count == 1)
        let target = try workspace.freshDirectory()
        try await runner.restore(into: target)
        try expectSameTree(target, workspace.sessions)
        #expect(try await agent.terminate() == .exited(0))
    }
}
