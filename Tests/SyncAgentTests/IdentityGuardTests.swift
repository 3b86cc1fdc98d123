import Foundation
import TestSupport
import Testing

/// `--session-format baileys` through the real binary: the identity guard in `watch` (flag,
/// metric, one warning line), the hold that `backup`'s and `prune`'s retention respect, the
/// auth-state check of `restore`, and the independent reader agreeing with the identities.
@Suite("identity guard and auth-state check")
struct IdentityGuardTests {
    /// The account's number, which `me.id` holds and nothing outside the objects may show.
    static let phone = "4917099998888"
    let baileys = ["--session-format", "baileys"]

    func baileysSession(_ workspace: Workspace, _ name: String, paired: Bool = true) throws {
        let directory = workspace.session(name)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        try AgentUser.handOver(directory)
        try write(BaileysFixtures.credentials(pairedWith: paired ? Self.phone : nil), to: "\(directory)/creds.json")
        for (file, contents) in BaileysFixtures.keyFiles { try write(contents, to: "\(directory)/\(file)") }
    }

    func backup(_ runner: SyncAgentRunner, _ workspace: Workspace, _ options: [String] = []) async throws -> String {
        let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json"] + baileys + options)
        #expect(result.termination == .exited(0), "\(result.standardError)")
        let backedUp = try #require(try jsonObject(result)["backedUp"] as? [[String: Any]])
        return try #require(backedUp.first?["snapshot"] as? String)
    }

    func restore(_ runner: SyncAgentRunner, into target: String, _ arguments: [String]) async throws
        -> (run: CommandRun, report: [String: Any])
    {
        let result = try await runner.run("restore", ["--sessions-dir", target, "--json"] + arguments)
        return (result, try jsonObject(result))
    }

    @Test func restoreRefusesCredentialsBaileysCannotUseAndNamesTheSnapshotThatPasses() async throws {
        let workspace = try Workspace(sessions: [])
        try baileysSession(workspace, "wa")
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        let good = try await backup(runner, workspace)
        try write(#"{"noiseKey":null}"#, to: workspace.session("wa") + "/creds.json")
        let broken = try await backup(runner, workspace)

        let target = try workspace.freshDirectory()
        try FileManager.default.createDirectory(atPath: "\(target)/wa", withIntermediateDirectories: false)
        try write("the worker's last state", to: "\(target)/wa/creds.json")
        try AgentUser.handOver(target)
        let (refused, report) = try await restore(runner, into: target, baileys + ["wa"])
        #expect(refused.termination == .exited(4), "\(refused.standardError)")
        let failure = try #require((report["failedSessions"] as? [[String: Any]])?.first)
        #expect(failure["reason"] as? String == "invalid_auth_state")
        let error = try #require(failure["error"] as? String)
        #expect(error.contains("snapshot \(broken)") && error.contains("--snapshot \(good) wa"), "\(error)")
        #expect(!(refused.standardOutput + refused.standardError).contains(Self.phone))
        #expect(try directoryTree("\(target)/wa") == ["creds.json": Array("the worker's last state".utf8)])

        // The snapshot it names restores, paired.
        let (named, namedReport) = try await restore(runner, into: target, baileys + ["--snapshot", good, "wa"])
        #expect(named.termination == .exited(0), "\(named.standardError)")
        let recovered = try #require((namedReport["recoveredSessions"] as? [[String: Any]])?.first)
        #expect(recovered["status"] as? String == "restored" && recovered["registered"] as? Bool == true)

        // Opaque: today's behaviour, bytes only, no "registered" in the report.
        let (opaque, opaqueReport) = try await restore(runner, into: target, ["--session-format", "opaque", "wa"])
        #expect(opaque.termination == .exited(0), "\(opaque.standardError)")
        let bytesOnly = try #require((opaqueReport["recoveredSessions"] as? [[String: Any]])?.first)
        #expect(bytesOnly["status"] as? String == "restored" && bytesOnly["registered"] == nil)
        #expect(try readBytes("\(target)/wa/creds.json") == Array(#"{"noiseKey":null}"#.utf8))
    }

    @Test func aSessionNeverPairedRestoresAndTheReportSaysItIsNotRegistered() async throws {
        let workspace = try Workspace(sessions: [])
        try baileysSession(workspace, "qr-pending", paired: false)
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        _ = try await backup(runner, workspace)
        // The default format, from neither flag nor environment.
        var defaults = runner
        defaults.environment["SYNC_AGENT_SESSION_FORMAT"] = ""
        let (result, report) = try await restore(defaults, into: try workspace.freshDirectory(), ["--all"])
        #expect(result.termination == .exited(0), "\(result.standardError)")
        let recovered = try #require((report["recoveredSessions"] as? [[String: Any]])?.first)
        #expect(recovered["status"] as? String == "restored" && recovered["registered"] as? Bool == false)
    }

    /// The incident: `creds.json` truncated to 0 bytes by a full disk, then a fresh unregistered
    /// identity written over it. `watch` takes the snapshot, flags the session (state, metric, one
    /// warning without the number); ten backups each pruned to one snapshot keep the registered
    /// one, which restores; the reader agrees; `prune --forget-identity` lets it go.
    @Test func watchFlagsALostIdentityAndRetentionKeepsItUntilForgotten() async throws {
        let workspace = try Workspace(sessions: [])
        try baileysSession(workspace, "wa")
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let registered = try await backup(runner, workspace)

        let agent = try runner.watch(workspace.sessions, baileys + ["--log-level", "debug"])
        try await agent.waitUntilWatching()
        let endpoint = try await agent.endpoint()
        let creds = workspace.session("wa") + "/creds.json"
        try write("", to: creds)
        try await Task.sleep(for: .milliseconds(600))
        try write(BaileysFixtures.credentials(), to: creds)
        var status: [String: Any] = [:]
        try await waitUntil(timeout: .seconds(30), every: .milliseconds(200), "never flagged:\n\(agent.log)") {
            status = try await sessionStatuses(endpoint)["wa"] ?? [:]
            return status["state"] as? String == "identity_changed"
        }
        #expect(status["registered"] as? Bool == false)
        #expect(status["identityChangedAt"] is String)
        #expect((status["identity"] as? String)?.count == 12)
        #expect(status["files"] as? Int == 1 + BaileysFixtures.keyFiles.count)
        #expect(status["preKeys"] as? Int == 2)
        let metrics = try await httpGet("\(endpoint)/metrics").body
        #expect(metrics.contains("sync_agent_identity_changes_total 1"), "\(metrics)")
        #expect(metrics.contains(#"sync_agent_sessions{identity_changed="true",registered="false"} 1"#)
            || metrics.contains(#"sync_agent_sessions{registered="false",identity_changed="true"} 1"#), "\(metrics)")
        #expect(agent.logLines.filter { $0.contains("registered identity was replaced") }.count == 1)
        let ready = try await httpGet("\(endpoint)/readyz")
        #expect(ready.status == 200 && ready.body.contains("1 session(s) whose registered identity was replaced"), "\(ready)")
        #expect(try await agent.terminate() == .exited(0))
        #expect(!agent.log.contains(Self.phone))
        // With no agent answering, `status` reads the flag from the head.
        let stored = try await runner.run("status", ["--agent", "http://127.0.0.1:1", "--json", "--log-level", "error"])
        let row = try #require((try jsonObject(stored)["sessions"] as? [[String: Any]])?.first)
        #expect(row["state"] as? String == "identity_changed" && row["identityChangedAt"] is String, "\(row)")

        for round in 0..<10 {
            try write(#"{"round":\#(round)}"#, to: workspace.session("wa") + "/app-state-sync-version-critical_block.json")
            _ = try await backup(runner, workspace, ["--keep-last", "1"])
        }
        let prune = try await runner.run("prune", ["--keep-last", "1", "--json"])
        #expect(prune.termination == .exited(0), "\(prune.standardError)")
        let kept = try #require(((try jsonObject(prune)["sessions"] as? [[String: Any]])?.first?["kept"] as? [[String: Any]]))
        #expect(kept.contains { $0["id"] as? String == registered && ($0["reasons"] as? [String])?.contains("last_registered_identity") == true }, "\(kept)")
        #expect(kept.count == 2)

        let snapshots = try await runner.run("snapshots", ["wa", "--json"] + baileys)
        #expect(snapshots.termination == .exited(0), "\(snapshots.standardError)")
        let rows = try #require(try jsonObject(snapshots)["snapshots"] as? [[String: Any]])
        #expect(rows.first { $0["id"] as? String == registered }?["registered"] as? Bool == true, "\(rows)")
        #expect(rows.last?["registered"] as? Bool == false && (rows.last?["identity"] as? String)?.count == 12, "\(rows)")

        let target = try workspace.freshDirectory()
        let (restored, report) = try await restore(runner, into: target, baileys + ["--snapshot", registered, "wa"])
        #expect(restored.termination == .exited(0), "\(restored.standardError)")
        #expect((report["recoveredSessions"] as? [[String: Any]])?.first?["registered"] as? Bool == true)
        let reader = FormatReader(store: store, keyFile: store + "/.sync-agent-key")
        #expect(try await reader.read("wa", into: try workspace.freshDirectory() + "/wa").state == "restored")
        #expect(try await reader.read("wa", into: try workspace.freshDirectory() + "/wa", snapshot: registered).state == "restored")

        let forget = try await runner.run("prune", ["--keep-last", "1", "--forget-identity", "wa", "--json"])
        #expect(forget.termination == .exited(0), "\(forget.standardError)")
        let session = try #require((try jsonObject(forget)["sessions"] as? [[String: Any]])?.first)
        #expect(session["forgottenIdentity"] as? String == registered)
        #expect((session["kept"] as? [[String: Any]])?.count == 1)
    }
}
