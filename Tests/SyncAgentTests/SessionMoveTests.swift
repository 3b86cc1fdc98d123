import Foundation
import Glibc
import TestSupport
import Testing

/// Sessions moving between two agents (A and B, two sessions roots, one SeaweedFS bucket), with
/// the real binaries: `watch` holds and releases, `restore` acquires. Leases are short (2 s) and
/// every bound is generous: the machine is shared.
@Suite("Moving sessions between agents")
struct SessionMoveTests {
    static let ttl = ["--lease-ttl", "2s"]

    /// `restore --json` for agent `agent` into `target`: the run, and each session's `acquired`
    /// (or "failed: <reason>").
    func acquire(
        _ runner: SyncAgentRunner, _ agent: String, into target: String, _ arguments: [String]
    ) async throws -> (CommandRun, acquired: [String: String]) {
        let result = try await runner.run(
            "restore", ["--sessions-dir", target, "--json", "--agent-id", agent] + Self.ttl + arguments)
        let report = try jsonObject(result)
        var acquired: [String: String] = [:]
        for entry in report["recoveredSessions"] as? [[String: Any]] ?? [] {
            acquired[entry["sessionId"] as! String] = entry["acquired"] as? String ?? "-"
        }
        for entry in report["failedSessions"] as? [[String: Any]] ?? [] {
            acquired[entry["sessionId"] as! String] = "failed: " + (entry["reason"] as! String)
        }
        return (result, acquired)
    }

    func watch(_ runner: SyncAgentRunner, _ root: String, agent: String) throws -> RunningAgent {
        try runner.watch(root, ["--agent-id", agent, "--quiet-period", "50ms", "--max-delay", "500ms"] + Self.ttl)
    }

    /// A clean stop releases every session: B acquires them at once, with A's last write.
    @Test(.needsTestServers) func aStoppedAgentReleasesEverySessionAndTheNextAcquireDoesNotWait() async throws {
        let a = try Workspace(sessions: ["small", "medium"])
        let runner = try await a.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
        let agentA = try watch(runner, a.sessions, agent: "agent-a")
        try await agentA.waitUntilWatching(uploadedAtStart: 2)
        try write(#"{"last":"write","me":"\#(randomHex(8))"}"#, to: "\(a.session("small"))/creds.json")
        #expect(try await agentA.terminate() == .exited(0), "\(agentA.log)")
        #expect(agentA.log.contains("released"), "\(agentA.log)")

        let b = try a.freshDirectory()
        let started = ContinuousClock.now
        // A wait longer than the test allows: a released session must not need it.
        let (result, acquired) = try await acquire(runner, "agent-b", into: b, ["--all", "--wait-release", "100s"])
        #expect(result.termination == .exited(0), "\(result.standardError)")
        #expect(acquired == ["small": "released", "medium": "released"])
        #expect(ContinuousClock.now - started < .seconds(60))
        try expectSameTree(b, a.sessions)
    }

    /// A killed holder's sessions are taken once its lease is a TTL old, with its last committed
    /// state; restarted with its old identity and its old copy, it is fenced and commits nothing.
    /// The same identity restarting acquires at once.
    @Test(.needsTestServers) func aKilledHoldersSessionsAreTakenAfterItsLeaseAndItsRestartIsFenced() async throws {
        let a = try Workspace(sessions: ["small"])
        let runner = try await a.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
        let agentA = try watch(runner, a.sessions, agent: "agent-a")
        try await agentA.waitUntilWatching(uploadedAtStart: 1)
        // A burst, then the kill before the agent is done with it.
        for round in 0..<20 {
            try write(#"{"round":\#(round),"me":"\#(randomHex(8))"}"#, to: "\(a.session("small"))/creds.json")
            try await Task.sleep(for: .milliseconds(20))
        }
        try await agentA.process.kill()

        // The same identity, restarting: no wait, though the lease is fresh; A's last committed state.
        let again = try a.freshDirectory()
        let (sameAgent, sameAcquired) = try await acquire(runner, "agent-a", into: again, ["small", "--wait-release", "0"])
        #expect(sameAgent.termination == .exited(0), "\(sameAgent.standardError)")
        #expect(sameAcquired == ["small": "same_holder"])
        let lastCommitted = try directoryTree(again)

        // Agent B waits for the lease of agent A (written by A's restore just now) to go stale.
        let b = try a.freshDirectory()
        let started = ContinuousClock.now
        let (result, acquired) = try await acquire(runner, "agent-b", into: b, ["small", "--wait-release", "100s"])
        #expect(result.termination == .exited(0), "\(result.standardError)")
        #expect(acquired == ["small": "lease_expired"])
        #expect(ContinuousClock.now - started >= .seconds(2), "a whole TTL")
        let taken = try directoryTree(b)
        #expect(taken == lastCommitted)

        // A restarts with its old identity and an older copy: fenced, nothing committed.
        try write(#"{"stale":"copy","me":"\#(randomHex(8))"}"#, to: "\(a.session("small"))/creds.json")
        let restarted = try watch(runner, a.sessions, agent: "agent-a")
        try await restarted.waitForLog("session held by another agent")
        let endpoint = try await restarted.endpoint()
        try await waitUntil("A never showed the session fenced") {
            try await sessionStatuses(endpoint)["small"]?["state"] as? String == "fenced"
        }
        #expect(restarted.uploads.isEmpty, "\(restarted.log)")
        _ = try await restarted.terminate()
        let check = try a.freshDirectory()
        let (after, _) = try await acquire(runner, "agent-b", into: check, ["small", "--wait-release", "0"])
        #expect(after.termination == .exited(0), "\(after.standardError)")
        #expect(try directoryTree(check) == taken, "B's state is what the store holds")
    }

    /// While A holds and renews, B's acquire fails after the wait (held_elsewhere) and changes
    /// nothing; with --take-over it fences A, which shows `fenced` and commits nothing more.
    @Test(.needsTestServers) func aLiveHolderKeepsItsSessionUnlessTakenOver() async throws {
        let a = try Workspace(sessions: ["small"])
        let runner = try await a.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
        let agentA = try watch(runner, a.sessions, agent: "agent-a")
        try await agentA.waitUntilWatching(uploadedAtStart: 1)
        let endpoint = try await agentA.endpoint()

        let b = try a.freshDirectory()
        try FileManager.default.createDirectory(atPath: "\(b)/small", withIntermediateDirectories: false)
        try write("B's own", to: "\(b)/small/creds.json")
        let before = try directoryTree(b)
        // Twice the TTL: A renews meanwhile.
        let (refused, refusedAcquired) = try await acquire(runner, "agent-b", into: b, ["small", "--wait-release", "4s"])
        #expect(refused.termination == .exited(4), "\(refused.standardError)")
        #expect(refusedAcquired == ["small": "failed: held_elsewhere"])
        #expect(try directoryTree(b) == before)

        let (taken, takenAcquired) = try await acquire(runner, "agent-b", into: b, ["small", "--wait-release", "0", "--take-over"])
        #expect(taken.termination == .exited(0), "\(taken.standardError)")
        #expect(takenAcquired == ["small": "taken_over"])
        let takenTree = try directoryTree(b)
        let uploadsBefore = agentA.uploads.count
        for round in 0..<3 {
            try write(#"{"after":"take-over","round":\#(round),"me":"\#(randomHex(8))"}"#, to: "\(a.session("small"))/creds.json")
            try await Task.sleep(for: .milliseconds(300))
        }
        try await waitUntil("A never showed the session fenced") {
            try await sessionStatuses(endpoint)["small"]?["state"] as? String == "fenced"
        }
        #expect(agentA.uploads.count == uploadsBefore, "\(agentA.log)")
        _ = try await agentA.terminate()
        let check = try a.freshDirectory()
        let (after, _) = try await acquire(runner, "agent-b", into: check, ["small", "--wait-release", "0"])
        #expect(after.termination == .exited(0), "\(after.standardError)")
        #expect(try directoryTree(check) == takenTree, "none of A's later snapshots is committed")
    }

    /// rclone's server ignores conditional writes: the lease and release still work (best effort),
    /// and a released session is acquired at once.
    @Test(.needsTestServers) func onAStoreWithoutConditionalWritesAReleasedSessionIsStillAcquiredAtOnce() async throws {
        let a = try Workspace(sessions: ["small"])
        let bucket = try await TestS3Server.rclone.freshBucket()
        let runner = try await SyncAgentRunner.cloud(
            endpoint: try TestS3Server.rclone.endpoint, bucket: bucket.configuration.bucket,
            accessKey: try TestS3Server.rclone.accessKey, secretKey: try TestS3Server.rclone.secretKey, logDirectory: a.logs)
        let agentA = try watch(runner, a.sessions, agent: "agent-a")
        try await agentA.waitUntilWatching(uploadedAtStart: 1)
        #expect(try await agentA.terminate() == .exited(0), "\(agentA.log)")
        let b = try a.freshDirectory()
        let (result, acquired) = try await acquire(runner, "agent-b", into: b, ["small", "--wait-release", "100s"])
        #expect(result.termination == .exited(0), "\(result.standardError)")
        #expect(acquired == ["small": "released"])
        try expectSameTree(b, a.sessions)
    }
}
