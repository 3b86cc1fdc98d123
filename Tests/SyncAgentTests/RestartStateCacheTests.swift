import Foundation
import TestSupport
import Testing

/// A restart of `watch` reads each session's committed state from its local state cache instead
/// of downloading its chain, and is ready with every session compared, nothing uploaded again.
@Suite("watch: restart from the state cache")
struct RestartStateCacheTests {
    @Test func aRestartIsReadyFromTheStateCacheWithEverySessionCompared() async throws {
        let workspace = try Workspace(copies: 6, of: "small")
        let store = workspace.directory.file("store")
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let first = try runner.watch(workspace.sessions, ["--log-level", "debug"])
        try await first.waitUntilWatching(uploadedAtStart: 6)
        try await waitUntilReady(first)
        #expect(try await first.terminate() == .exited(0))
        // One file a session, beside the store's objects, named by keyed ids only.
        let cached = try FileManager.default.contentsOfDirectory(atPath: "\(store)/.state")
        #expect(cached.count == 6 && cached.allSatisfy { $0.count == 32 && !$0.hasPrefix("s0") }, "\(cached)")

        let second = try runner.watch(workspace.sessions, ["--log-level", "debug"])
        let endpoint = try await waitUntilReady(second)
        let (_, metrics) = try await httpGet("\(endpoint)/metrics")
        #expect(metrics.contains(#"sync_agent_state_cache_reads_total{result="hit"} 6"#), "\(metrics)")
        #expect(!metrics.contains(#"result="miss""#), "\(metrics)")
        #expect(!second.log.contains("state cache not used"), "\(second.log)")
        // Every session compared with the snapshot the cache described: nothing to upload.
        #expect(second.uploads.isEmpty, "\(second.log)")
        let files = try directoryTree(workspace.session("s01")).filter { !$0.key.hasSuffix("/") }.count
        let statuses = try await sessionStatuses(endpoint)
        #expect(statuses.count == 6)
        #expect(statuses.values.allSatisfy { $0["files"] as? Int == files }, "\(statuses)")
        #expect(try await second.terminate() == .exited(0))

        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        #expect(try directoryTree(restored) == directoryTree(workspace.sessions))
    }

    /// The cache is the agent's, never a session: a state directory in the sessions root is refused.
    @Test func aStateDirectoryInsideTheSessionsRootIsRefusedWithOneLine() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = workspace.directory.file("store")
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let agent = try runner.watch(workspace.sessions, ["--state-dir", "\(workspace.sessions)/.cache"])
        #expect(try await agent.process.waitForExit(timeout: .seconds(60)) == .exited(64))
        #expect(agent.logLines.count == 1 && agent.log.contains("inside the sessions directory"), "\(agent.log)")
        #expect(!FileManager.default.fileExists(atPath: store))
    }

    /// Polls /readyz until it answers 200; returns the endpoint.
    @discardableResult
    private func waitUntilReady(_ agent: RunningAgent) async throws -> String {
        let endpoint = try await agent.endpoint()
        try await waitUntil(timeout: .seconds(90), every: .milliseconds(100), "/readyz never answered 200: \(agent.log)") {
            (try? await httpGet("\(endpoint)/readyz"))?.status == 200
        }
        return endpoint
    }
}
