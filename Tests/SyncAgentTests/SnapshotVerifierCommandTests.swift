import Foundation
import TestSupport
import Testing

/// `sync-agent snapshots` and `sync-agent verify`, the real binary on a local store.
@Suite("SnapshotVerifier: the snapshots and verify commands")
struct SnapshotVerifierCommandTests {
    @Test func verifyFindsAFlippedByteAndSnapshotsListsWhatTheHeadCommitted() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        for round in 0..<2 {
            try write(#"{"round":\#(round)}"#, to: "\(workspace.session("small"))/creds.json")
            let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
            #expect(backup.termination == .exited(0), "\(backup.standardError)")
        }

        let sessions = try jsonObject(try await runner.run("snapshots", ["--json"]))
        let listed = try #require((sessions["sessions"] as? [[String: Any]])?.first)
        #expect(listed["sessionId"] as? String == "small")
        #expect(listed["latestKind"] as? String == "base")
        #expect(listed["tombstoned"] as? Bool == false)

        let listing = try jsonObject(try await runner.run("snapshots", ["small", "--details", "--json"]))
        let snapshots = try #require(listing["snapshots"] as? [[String: Any]])
        #expect(snapshots.count == 2)
        #expect(snapshots.allSatisfy { $0["committed"] as? Bool == true && $0["kind"] as? String == "base" })
        #expect(snapshots.allSatisfy { ($0["files"] as? Int ?? 0) > 0 && $0["error"] == nil })

        let healthy = try await runner.run("verify", ["--all", "--json"])
        #expect(healthy.termination == .exited(0), "\(healthy.standardOutput) \(healthy.standardError)")

        let objectDirectory = "\(store)/" + (try await runner.locate("small")[0]) + "snapshots"
        let objects = try FileManager.default.contentsOfDirectory(atPath: objectDirectory).sorted()
        let newest = "\(objectDirectory)/\(objects.last!)"
        var bytes = try readBytes(newest)
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: newest))

        let damaged = try await runner.run("verify", ["small", "--json"])
        #expect(damaged.termination == .exited(1))
        let report = try jsonObject(damaged)
        #expect(report["defects"] as? Int == 1)
        let checks = try #require((report["sessions"] as? [[String: Any]])?.first?["snapshots"] as? [[String: Any]])
        #expect(checks.map { $0["status"] as? String } == ["ok", "corrupt"])

        let badSample = try await runner.run("verify", ["--all", "--sample", "0%"])
        #expect(badSample.termination == .exited(64))
    }
}
