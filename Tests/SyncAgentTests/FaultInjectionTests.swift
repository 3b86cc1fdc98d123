import Foundation
import TestSupport
import Testing

/// The real `sync-agent watch --mode cloud` talking to SeaweedFS through a `FaultProxy`, while
/// `sync-agent-bench sidecar-writer` rewrites 20 sessions the way Baileys does. Each fault lasts
/// as long as the writer (a few seconds); then the store must catch up by itself, SIGTERM must
/// find nothing left to flush, every snapshot must verify, and every session must restore to
/// exactly its directory. The agent's RSS is sampled throughout: a bound, not a timing.
@Suite("watch under store faults")
struct FaultInjectionTests {
    static let sessionCount = 20
    static let faultSeconds = 4
    static let rssBound = 200 << 20

    /// Faults that break a request half the time (`every: 2`) leave work half done (a snapshot
    /// stored but its head write lost, or a head written whose answer never came back).
    static let faults: [(FaultProxy.Fault, every: Int)] = [
        (.dropMidRequest, every: 2),
        (.delayResponse(.seconds(2)), every: 1),
        (.cutResponseBody, every: 2),
        (.internalError, every: 1),
        (.slowDown, every: 1),
        (.accessDenied, every: 1),
    ]

    /// Serialized: each case runs an agent and a writer, enough load for two shared cores.
    @Test(.needsTestServers, .serialized, arguments: faults)
    func noChangeIsLostAndNothingCorruptIsStored(_ fault: FaultProxy.Fault, every: Int) async throws {
        let workspace = try Workspace(copies: Self.sessionCount, of: "small")
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let direct = try await workspace.cloudRunner(on: bucket)
        let (proxy, throughProxy) = try Self.throughProxy(direct)

        let agent = try throughProxy.watch(
            workspace.sessions, ["--quiet-period", "100ms", "--max-delay", "1s", "--shutdown-timeout", "60s"])
        try await agent.waitUntilWatching(uploadedAtStart: Self.sessionCount, timeout: .seconds(120))
        let peakRSS = Task {
            var peak = 0
            while !Task.isCancelled {
                peak = max(peak, agent.process.residentBytes ?? 0)
                try? await Task.sleep(for: .milliseconds(100))
            }
            return peak
        }

        proxy.inject(fault, every: every)
        let writer = try workspace.startWriter(rate: 50, seconds: Self.faultSeconds)
        try await writer.waitForExit()
        proxy.inject(.passThrough)
        #expect(proxy.faultedRequests > 0, "the fault never hit a request")
        #expect(agent.process.isRunning, "the agent died under the fault: \(agent.log)")
        let failedAttempts = agent.logLines.filter { $0.contains("upload failed; will retry") }.compactMap(Self.attempt)
        if case .errorReply = fault {
            #expect(!failedAttempts.isEmpty, "uploads went on through the fault: \(agent.log)")
        }
        // After a failure a session waits at least 0.25 s, doubling (SyncService's backoff): in a
        // fault window under 15 s that allows 6 consecutive failures, whatever the writer does.
        #expect(failedAttempts.allSatisfy { $0 <= 6 }, "a session retried faster than its backoff: \(agent.log)")

        _ = try await workspace.waitUntilStoreMatches(direct, timeout: .seconds(120), agent: agent)
        #expect(try await agent.terminate() == .exited(0), "\(agent.log)")
        #expect(agent.log.contains("stopped; every change uploaded"), "\(agent.log)")
        peakRSS.cancel()
        let peak = await peakRSS.value
        #expect(peak > 0 && peak < Self.rssBound, "agent RSS peaked at \(peak >> 20) MiB")

        let verified = try await direct.run("verify", ["--all"])
        #expect(verified.termination == .exited(0), "verify: \(verified.standardOutput)\(verified.standardError)")
        let restored = try workspace.freshDirectory()
        try await direct.restore(into: restored)
        try expectSameTree(restored, workspace.sessions)
    }

    /// A logout seen while the store fails: its tombstone waits for the store, it is not dropped
    /// (it was: the failure was logged once, and a restore brought the session back).
    @Test(.needsTestServers) func aSessionRemovedWhileTheStoreFailsIsTombstonedOnceItRecovers() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"], renamedTo: ["small": "logged-out"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let direct = try await workspace.cloudRunner(on: bucket)
        let (proxy, throughProxy) = try Self.throughProxy(direct)
        let agent = try throughProxy.watch(workspace.sessions)
        try await agent.waitUntilWatching(uploadedAtStart: 2)

        proxy.inject(.slowDown)
        try FileManager.default.removeItem(atPath: workspace.session("logged-out"))
        try await agent.waitForLog("upload failed; will retry")
        proxy.inject(.passThrough)
        try await agent.waitForLog("session directory removed")

        let target = try workspace.freshDirectory()
        let restore = try await direct.run("restore", ["--sessions-dir", target, "--all"])
        #expect(restore.termination == .exited(0), "--all leaves the logged-out session out: \(restore.standardError)")
        #expect(try sortedFiles(target) == ["medium"])
        #expect(try await agent.terminate() == .exited(0), "\(agent.log)")
    }

    /// `restore` through faults that break a share of its requests, over older copies of the
    /// sessions: each session ends up exactly as stored or exactly as it was, never in between.
    @Test(.needsTestServers, arguments: [(FaultProxy.Fault.cutResponseBody, every: 2), (.dropMidRequest, every: 2), (.internalError, every: 3)])
    func aRestoreThroughFaultsIsExactOrChangesNothing(_ fault: FaultProxy.Fault, every: Int) async throws {
        let sessions = ["small", "medium"]
        let workspace = try Workspace(sessions: sessions)
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let direct = try await workspace.cloudRunner(on: bucket)
        let backup = try await direct.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")
        let target = try workspace.freshDirectory()
        for session in sessions {
            try FileManager.default.copyItem(atPath: workspace.session(session), toPath: "\(target)/\(session)")
            try write(#"{"older":true}"#, to: "\(target)/\(session)/creds.json")
            try write("{}", to: "\(target)/\(session)/stale.json")
        }
        let older = try sessions.map { try directoryTree("\(target)/\($0)") }

        let (proxy, throughProxy) = try Self.throughProxy(direct)
        proxy.inject(fault, every: every)
        let restore = try await throughProxy.run("restore", ["--sessions-dir", target, "--all"])
        #expect(proxy.faultedRequests > 0, "the fault never hit a request")
        #expect(try sortedFiles(target) == sessions.sorted(), "a restore left working directories behind")
        for (session, older) in zip(sessions, older) {
            let now = try directoryTree("\(target)/\(session)")
            let stored = try directoryTree(workspace.session(session))
            #expect(now == stored || (now == older && restore.termination != .exited(0)), "\(session): \(restore.standardError)")
        }
    }

    /// A proxy in front of the shared SeaweedFS, and `direct` with its endpoint replaced by the
    /// proxy's (same bucket, credentials and key).
    private static func throughProxy(_ direct: SyncAgentRunner) throws -> (FaultProxy, SyncAgentRunner) {
        let proxy = try FaultProxy(upstream: try TestS3Server.seaweedFS.endpoint)
        var runner = direct
        runner.storeArguments[runner.storeArguments.firstIndex(of: "--endpoint")! + 1] = proxy.endpoint
        return (proxy, runner)
    }

    /// The consecutive-failure count of an "upload failed" log line.
    private static func attempt(_ line: String) -> Int? {
        line.split(separator: " ").first { $0.hasPrefix("attempt=") }.flatMap { Int($0.dropFirst("attempt=".count)) }
    }
}
