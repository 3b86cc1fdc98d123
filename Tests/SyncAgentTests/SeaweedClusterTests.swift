import Foundation
import TestSupport
import Testing

/// The real `sync-agent watch --mode cloud` on SeaweedFS run as a cluster (`SeaweedFSCluster`:
/// a master with replication 001, two volume servers, a filer and the S3 gateway, each its own
/// process), while `sidecar-writer` rewrites 10 sessions the way Baileys does. One volume server
/// dies (SIGKILL) in the middle of the writes and comes back while they go on.
///
/// What SeaweedFS 4.48 does meanwhile: with one of two servers gone no volume can keep two
/// copies, so each PUT waits for a volume assignment and fails after 30 s (500 InternalError);
/// reads go on from the other copy; once the server is back, the waiting PUTs complete within
/// seconds. (With a third volume server, writes go on: new volumes get the two that are alive.)
@Suite("watch on a SeaweedFS cluster losing a volume server")
struct SeaweedClusterTests {
    static let sessionCount = 10

    @Test(.needsTestServers) func uploadsCatchUpAfterAVolumeServerDiesAndEverySessionRestoresExactly() async throws {
        let cluster = try await SeaweedFSCluster(volumeServers: 2, replication: "001")
        let workspace = try Workspace(copies: Self.sessionCount, of: "small")
        let runner = try await workspace.cloudRunner(on: try await cluster.freshBucket(), server: cluster)
        let agent = try runner.watch(
            workspace.sessions, ["--quiet-period", "100ms", "--max-delay", "1s", "--shutdown-timeout", "60s"])
        try await agent.waitUntilWatching(uploadedAtStart: Self.sessionCount, timeout: .seconds(120))
        let endpoint = try await agent.endpoint()

        let writer = try workspace.startWriter(rate: 20, seconds: 30)
        // The kill lands while the writer's changes are being uploaded.
        try await agent.waitForLog("] uploaded", count: Self.sessionCount + 10)
        try await cluster.killVolumeServer(2)
        let uploadsAtKill = agent.uploads.count

        // Nothing is dropped: either uploads go on, or the changes wait, their lag growing, while
        // the agent retries; the server stays away long enough for either to show. (Polled
        // slowly: the endpoint closes a connection 10 s after accepting it, even mid-answer.)
        try await waitUntil(
            timeout: .seconds(60), every: .milliseconds(500), "neither uploads nor waiting changes after the kill: \(agent.log)"
        ) {
            let waiting = try await sessionStatuses(endpoint).values.filter { ($0["lagSeconds"] as? Double ?? 0) > 10 }
            return waiting.count >= Self.sessionCount / 2 || agent.uploads.count >= uploadsAtKill + 20
        }
        #expect(agent.process.isRunning, "the agent died with the volume server: \(agent.log)")

        // What was stored before the kill reads from the copy left: each session restores to its
        // newest snapshot (or to one uploaded while the restore ran), and every snapshot verifies.
        let uploadedBefore = agent.uploads
        let duringOutage = try workspace.freshDirectory()
        let restore = try await runner.run("restore", ["--sessions-dir", duringOutage, "--all", "--json"])
        let uploadedAfter = agent.uploads
        #expect(restore.termination == .exited(0), "restore with a volume server down: \(restore.standardError)")
        let restored = try Self.restoredSnapshots(restore.standardOutput)
        #expect(restored.count == Self.sessionCount, "\(restore.standardOutput)")
        let newestBefore = Dictionary(uploadedBefore.map { ($0.session, $0.snapshot) }, uniquingKeysWith: { $1 })
        for (session, snapshot) in restored {
            let uploadedMeanwhile = uploadedAfter[uploadedBefore.count...].filter { $0.session == session }.map(\.snapshot)
            #expect(snapshot == newestBefore[session] || uploadedMeanwhile.contains(snapshot), "\(session): \(snapshot)")
        }
        let verifiedDuringOutage = try await runner.run("verify", ["--all"])
        #expect(verifiedDuringOutage.termination == .exited(0), "verify with a volume server down: \(verifiedDuringOutage.standardError)")

        try await cluster.startVolumeServer(2)
        try await writer.waitForExit(timeout: .seconds(90))
        _ = try await workspace.waitUntilStoreMatches(runner, timeout: .seconds(120), agent: agent)
        #expect(try await agent.terminate() == .exited(0), "\(agent.log)")
        #expect(agent.log.contains("stopped; every change uploaded"), "\(agent.log)")

        let verified = try await runner.run("verify", ["--all"])
        #expect(verified.termination == .exited(0), "verify: \(verified.standardOutput)\(verified.standardError)")
        let target = try workspace.freshDirectory()
        try await runner.restore(into: target)
        try expectSameTree(target, workspace.sessions)
    }

    /// Session id → snapshot from `restore --json`'s report.
    private static func restoredSnapshots(_ report: String) throws -> [String: String] {
        let object = try JSONSerialization.jsonObject(with: Data(report.utf8)) as? [String: Any]
        let recovered = object?["recoveredSessions"] as? [[String: Any]] ?? []
        return Dictionary(uniqueKeysWithValues: recovered.compactMap { session in
            (session["sessionId"] as? String).map { ($0, session["snapshot"] as? String ?? "-") }
        })
    }
}
