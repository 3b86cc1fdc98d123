import Foundation
import Glibc
import S3Client
import TestSupport
import Testing

/// The real `sync-agent watch` binary on real directories (inotify) and real stores (SeaweedFS;
/// a private SeaweedFS where the test stops the server). Every wait polls for a condition with
/// a generous bound; nothing here measures speed.
@Suite("watch: the agent end to end")
struct WatchIntegrationTests {
    // MARK: - Replication

    @Test(.needsTestServers) func createdRewrittenAndDeletedFilesRestoreToExactlyTheDirectory() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket)
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching(uploadedAtStart: 2)

        for session in ["small", "medium"] {
            let directory = workspace.session(session)
            try write(#"{"noiseKey":{"private":"\#(randomHex(32))"}}"#, to: "\(directory)/creds.json")
            try write(#"{"keyData":"\#(randomHex(16))"}"#, to: "\(directory)/app-state-sync-key-NEW.json")
            try write(bytes: randomBytes(3000), to: "\(directory)/session-blob.bin")
            try FileManager.default.createDirectory(atPath: "\(directory)/keys", withIntermediateDirectories: true)
            try write(#"{"nested":true}"#, to: "\(directory)/keys/nested.json")
            for name in try sortedFiles(directory).filter({ $0.hasPrefix("pre-key-") }).prefix(5) {
                try FileManager.default.removeItem(atPath: "\(directory)/\(name)")
            }
            // A writer's temporary is never part of the session.
            try write("{}", to: "\(directory)/creds.json.tmp")
        }

        let restored = try await workspace.waitUntilStoreMatches(runner, ignoring: ["creds.json.tmp"], agent: agent)
        for session in ["small", "medium"] {
            #expect(!FileManager.default.fileExists(atPath: "\(restored)/\(session)/creds.json.tmp"))
        }
        try expectPrivateModes(restored)
        // Object keys carry a keyed id of the session only, never its name or a file name from inside it.
        let keys = try await bucket.listObjects(prefix: "sessions/").objects.map(\.key)
        #expect(!keys.isEmpty)
        #expect(keys.allSatisfy { !$0.contains("creds") && !$0.contains("key") && !$0.contains("1555") && !$0.contains("small") && !$0.contains("medium") }, "\(keys)")
        #expect(!agent.log.contains(runner.environment["SESSION_ENCRYPTION_KEY"]!))
        #expect(agent.process.isRunning)
        #expect(try await agent.terminate() == .exited(0))
    }

    /// Baileys truncates and writes without fsync; the agent must only ever capture whole files.
    @Test(.needsTestServers) func aTornCredsFileNeverReachesASnapshot() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket)
        let agent = try runner.watch(workspace.sessions, ["--quiet-period", "250ms"])
        try await agent.waitUntilWatching(uploadedAtStart: 1)

        let directory = workspace.session("small")
        let creds = "\(directory)/creds.json"
        var versions: Set<[UInt8]> = [try readBytes(creds)]
        for version in 0..<10 {
            let content = Array(#"{"version":\#(version),"noiseKey":{"private":"\#(randomHex(1500))"},"registered":true}"#.utf8)
            versions.insert(content)
            let half = content.count / 2
            if version.isMultiple(of: 2) {
                // Closed half-written: the agent is told and reads it once the quiet period is over.
                try writeRaw(content[..<half], to: creds, flags: O_TRUNC)
                try await Task.sleep(for: .milliseconds(300))
                try writeRaw(content[half...], to: creds, flags: O_APPEND)
            } else {
                // Half-written and still open while another file of the session settles.
                let descriptor = open(creds, O_WRONLY | O_TRUNC | O_CLOEXEC)
                #expect(descriptor >= 0)
                try writeAll(descriptor, content[..<half])
                try write(#"{"keyData":"\#(randomHex(8))"}"#, to: "\(directory)/app-state-sync-key-\(version).json")
                try await Task.sleep(for: .milliseconds(300))
                try writeAll(descriptor, content[half...])
                close(descriptor)
            }
            try await Task.sleep(for: .milliseconds(150))
        }
        _ = try await workspace.waitUntilStoreMatches(runner, agent: agent)

        let snapshots = agent.uploads.filter { $0.session == "small" }.map(\.snapshot)
        #expect(snapshots.count >= 2)
        for snapshot in snapshots {
            let target = try workspace.freshDirectory()
            try await runner.restore(into: target, ["--snapshot", snapshot, "small"])
            let restored = try readBytes("\(target)/small/creds.json")
            #expect(
                (try? JSONSerialization.jsonObject(with: Data(restored))) != nil,
                "snapshot \(snapshot) holds a creds.json that does not parse")
            #expect(versions.contains(restored), "snapshot \(snapshot) holds a creds.json never written whole")
        }
        #expect(try await agent.terminate() == .exited(0))
    }

    // MARK: - Outages and crashes

    @Test(.needsTestServers) func changesMadeWhileTheServerIsDownArriveWhenItIsBack() async throws {
        let server = try await PrivateSeaweedFS()
        let workspace = try Workspace(sessions: ["small"])
        let bucket = try await server.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket, server: server)
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching(uploadedAtStart: 1)

        try await server.stop()
        let directory = workspace.session("small")
        for round in 0..<3 {
            try write(#"{"round":\#(round),"me":"\#(randomHex(8))"}"#, to: "\(directory)/creds.json")
            try write(#"{"keyData":"\#(randomHex(8))"}"#, to: "\(directory)/app-state-sync-key-outage-\(round).json")
            try FileManager.default.removeItem(atPath: "\(directory)/\(try sortedFiles(directory).first { $0.hasPrefix("pre-key-") }!)")
            if round == 0 { try await agent.waitForLog("upload failed; will retry") }
            try await Task.sleep(for: .milliseconds(700))
        }
        #expect(agent.process.isRunning)

        try await server.start()
        _ = try await workspace.waitUntilStoreMatches(runner, timeout: .seconds(120), agent: agent)
        #expect(agent.process.isRunning, "the agent exited during the outage: \(agent.log)")
        #expect(try await agent.terminate() == .exited(0))
    }

    @Test(.needsTestServers) func anAgentKilledMidUploadCatchesUpOnRestart() async throws {
        let workspace = try Workspace(sessions: ["medium", "small"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket)
        let first = try runner.watch(workspace.sessions, ["--quiet-period", "50ms", "--max-delay", "200ms"])
        // Both bases first: a burst written while the first base is still being read would
        // end up in it, leaving no upload of its own to wait for.
        try await first.waitUntilWatching(uploadedAtStart: 2)

        // A steady burst of writes keeps uploads in flight (one every --max-delay); the kill
        // lands in the middle of them, once the burst's first upload is through.
        let directory = workspace.session("medium")
        for index in 0..<120 {
            try write(#"{"keyData":"\#(randomHex(64))","n":\#(index)}"#, to: "\(directory)/sender-key-burst-\(index).json")
            if index == 60 { try await first.waitForLog("] uploaded", count: 3) }
            try await Task.sleep(for: .milliseconds(5))
        }
        try await first.process.kill()
        #expect(first.process.exitStatus == .signaled(SIGKILL))

        // While no agent runs.
        try write(#"{"me":"\#(randomHex(8))"}"#, to: "\(directory)/creds.json")
        for index in stride(from: 0, to: 120, by: 3) {
            try FileManager.default.removeItem(atPath: "\(directory)/sender-key-burst-\(index).json")
        }
        try write(#"{"offline":true}"#, to: "\(workspace.session("small"))/offline.json")

        let second = try runner.watch(workspace.sessions)
        _ = try await workspace.waitUntilStoreMatches(runner, agent: second)
        #expect(second.process.isRunning)
        #expect(try await second.terminate() == .exited(0))
    }

    // MARK: - Fencing

    enum SharedStore: String, CaseIterable, CustomTestStringConvertible {
        case filesystem
        case seaweedFS
        var testDescription: String { rawValue }
    }

    @Test(.needsTestServers, arguments: SharedStore.allCases)
    func aSecondAgentFencesTheFirstAndNewerStateIsNeverOverwritten(_ shared: SharedStore) async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner: SyncAgentRunner
        let headVersion: @Sendable () async throws -> String
        switch shared {
        case .filesystem:
            let store = try workspace.freshDirectory()
            runner = .local(store: store, logDirectory: workspace.logs)
            headVersion = { try readBytes("\(store)/\(try await runner.locate("small")[0])head").description }
        case .seaweedFS:
            let bucket = try await TestS3Server.seaweedFS.freshBucket()
            runner = try await workspace.cloudRunner(on: bucket)
            headVersion = { try await bucket.headObject(key: try await runner.locate("small")[0] + "head").etag }
        }
        let first = try runner.watch(workspace.sessions)
        try await first.waitUntilWatching(uploadedAtStart: 1)
        let firstHead = try await headVersion()

        let second = try runner.watch(workspace.sessions)
        // The second agent claims the session at start (a new head generation), uploading nothing.
        try await waitUntil("the second agent never claimed the session") { try await headVersion() != firstHead }

        let directory = workspace.session("small")
        try write(#"{"after":"second-start","me":"\#(randomHex(8))"}"#, to: "\(directory)/creds.json")
        try await first.waitForLog("session claimed by another agent")
        for round in 0..<3 {
            try write(#"{"keyData":"\#(randomHex(8))"}"#, to: "\(directory)/app-state-sync-key-fenced-\(round).json")
            try write(#"{"round":\#(round),"me":"\#(randomHex(8))"}"#, to: "\(directory)/creds.json")
            try await Task.sleep(for: .milliseconds(400))
        }
        _ = try await workspace.waitUntilStoreMatches(runner, agent: second)

        // Fenced is loud, and final: the first agent uploads nothing after it.
        let firstLines = first.logLines
        let fencedAt = try #require(firstLines.firstIndex { $0.contains("session claimed by another agent") })
        #expect(firstLines[fencedAt].contains("session=small"))
        #expect(firstLines[fencedAt...].compactMap(UploadLine.init).isEmpty, "\(first.log)")
        #expect(first.process.isRunning)
        #expect(!second.uploads.isEmpty)
        #expect(!second.log.contains("claimed by another agent"), "\(second.log)")
        #expect(try await second.terminate() == .exited(0))
        _ = try await first.terminate()
    }

    // MARK: - Shutdown

    @Test(.needsTestServers) func sigtermFlushesPendingChangesAndExitsZero() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket)
        let agent = try runner.watch(workspace.sessions, ["--quiet-period", "3s", "--max-delay", "10s"])
        try await agent.waitUntilWatching(uploadedAtStart: 1)

        try write(#"{"pending":"\#(randomHex(8))"}"#, to: "\(workspace.session("small"))/creds.json")
        try write(#"{"pending":true}"#, to: "\(workspace.session("small"))/app-state-sync-key-pending.json")
        #expect(try await agent.terminate() == .exited(0), "\(agent.log)")
        #expect(agent.uploads.count == 2, "\(agent.log)")
        #expect(agent.log.contains("stopped; every change uploaded"))

        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        try expectSameTree(restored, workspace.sessions)
    }

    @Test(.needsTestServers) func sigtermWithTheStoreDownExitsNonZeroNamingTheUnflushedSession() async throws {
        let server = try await PrivateSeaweedFS()
        let workspace = try Workspace(sessions: ["small"], renamedTo: ["small": "session-left-behind"])
        let bucket = try await server.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket, server: server)
        let agent = try runner.watch(
            workspace.sessions, ["--quiet-period", "3s", "--max-delay", "10s", "--shutdown-timeout", "1s"])
        try await agent.waitUntilWatching(uploadedAtStart: 1)

        try await server.stop()
        try write(#"{"pending":"\#(randomHex(8))"}"#, to: "\(workspace.session("session-left-behind"))/creds.json")
        let termination = try await agent.terminate()
        #expect(termination != .exited(0))
        let summary = try #require(agent.logLines.last { $0.contains("stopped with changes not uploaded") }, "\(agent.log)")
        #expect(summary.contains("session-left-behind"))
    }

    // MARK: - Logout

    @Test(.needsTestServers) func aRemovedSessionIsTombstonedAndRestoreLeavesItGone() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"], renamedTo: ["small": "logged-out"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket)
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching(uploadedAtStart: 2)

        try FileManager.default.removeItem(atPath: workspace.session("logged-out"))
        try await agent.waitForLog("session directory removed")
        #expect(agent.logLines.contains { $0.contains("session directory removed") && $0.contains("session=logged-out") && $0.contains("on_delete=tombstone") })

        let target = try workspace.freshDirectory()
        let single = try await runner.run("restore", ["--sessions-dir", target, "--json", "logged-out"])
        #expect(single.termination == .exited(4), "\(single.standardError)")
        let report = try JSONSerialization.jsonObject(with: Data(single.standardOutput.utf8)) as? [String: Any]
        let failed = try #require(report?["failedSessions"] as? [[String: Any]])
        #expect(failed.count == 1)
        #expect(failed.first?["sessionId"] as? String == "logged-out")
        #expect(failed.first?["reason"] as? String == "logged_out")
        #expect(!FileManager.default.fileExists(atPath: "\(target)/logged-out"))

        // --all asks for what can come back: the logged-out session is left out, not failed.
        let all = try await runner.run("restore", ["--sessions-dir", target, "--all"])
        #expect(all.termination == .exited(0), "\(all.standardError)")
        #expect(try sortedFiles(target) == ["medium"])
        try expectSameTree("\(target)/medium", workspace.session("medium"))
        #expect(try await agent.terminate() == .exited(0))
    }

    // MARK: - Start-up checks

    /// The local store's and the sessions root's checks: no servers needed, so a plain
    /// `swift test` runs them (they were inside the S3 test and skipped with it).
    @Test func badLocalStartUpValuesStopTheAgentWithOneClearLineBeforeItTouchesAnything() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let before = try directoryTree(workspace.sessions)
        let untouchedStore = workspace.logs + "/never-created-store"
        let local = SyncAgentRunner.local(store: untouchedStore, logDirectory: workspace.logs)
        var modeFromEnvironment = local
        modeFromEnvironment.storeArguments = ["--local-store", untouchedStore]
        modeFromEnvironment.environment["SESSION_STORAGE_TYPE"] = "clowd"
        let plainFile = workspace.logs + "/not-a-directory"
        try write("", to: plainFile)
        // The agent is never root (see AgentUser), so a mode does deny it.
        let unreadable = workspace.logs + "/unreadable"
        try FileManager.default.createDirectory(atPath: unreadable, withIntermediateDirectories: false)
        chmod(unreadable, 0)

        try await expectEachStopsWithOneClearLine([
            // (An unknown --mode is the parser's to refuse: ConfigurationTests.badFlagValues.)
            ("unknown SESSION_STORAGE_TYPE", modeFromEnvironment, workspace.sessions, "SESSION_STORAGE_TYPE \"clowd\": use local, cloud or hybrid"),
            ("a missing sessions root", local, workspace.logs + "/no-such-dir", "cannot read the sessions directory"),
            ("a sessions root that is a file", local, plainFile, "cannot read the sessions directory"),
            ("an unreadable sessions root", local, unreadable, "cannot read the sessions directory"),
        ], secrets: [:])
        #expect(!FileManager.default.fileExists(atPath: untouchedStore))
        #expect(try directoryTree(workspace.sessions) == before)
    }

    @Test(.needsTestServers) func badS3StartUpValuesStopTheAgentWithOneClearLineBeforeItTouchesAnything() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let cloud = try await workspace.cloudRunner(on: bucket)
        let before = try directoryTree(workspace.sessions)
        var noKey = cloud
        noKey.environment["SESSION_ENCRYPTION_KEY"] = nil
        var missingBucket = cloud
        missingBucket.storeArguments[missingBucket.storeArguments.firstIndex(of: bucket.configuration.bucket)!] =
            "no-such-bucket-" + randomHex(4)
        var credentialsInTheEndpoint = cloud
        let endpointIndex = credentialsInTheEndpoint.storeArguments.firstIndex(of: "--endpoint")! + 1
        credentialsInTheEndpoint.storeArguments[endpointIndex] =
            credentialsInTheEndpoint.storeArguments[endpointIndex].replacingOccurrences(of: "://", with: "://backup:hunter2-pw@")

        try await expectEachStopsWithOneClearLine([
            ("cloud without a key", noKey, workspace.sessions, "needs an encryption key"),
            ("a bucket that does not exist", missingBucket, workspace.sessions, "does not exist"),
            ("credentials in the endpoint", credentialsInTheEndpoint, workspace.sessions, "credentials do not belong in the URL"),
        ], secrets: ["the key": cloud.environment["SESSION_ENCRYPTION_KEY"]!, "the endpoint's password": "hunter2"])
        #expect(try await bucket.listObjects().objects.isEmpty)
        #expect(try directoryTree(workspace.sessions) == before)
    }

    /// Each case's agent, watching its sessions root, stops with one line saying what it
    /// expects, and none of `secrets` (what it is: its value) in its log.
    private func expectEachStopsWithOneClearLine(
        _ cases: [(name: String, runner: SyncAgentRunner, sessions: String, expected: String)], secrets: [String: String]
    ) async throws {
        for (name, runner, sessions, expected) in cases {
            let agent = try runner.watch(sessions)
            let termination = try await agent.process.waitForExit(timeout: .seconds(60))
            #expect(termination != .exited(0), "\(name)")
            let lines = agent.logLines
            #expect(lines.count == 1, "\(name): \(agent.log)")
            #expect(lines.first?.contains(expected) == true, "\(name): \(agent.log)")
            for (secret, value) in secrets { #expect(!agent.log.contains(value), "\(name) leaked \(secret)") }
        }
    }
}

// MARK: - Workspace

/// A temporary sessions root filled from fixtures/sessions, with room for logs and restores.
struct Workspace {
    let directory: TemporaryDirectory
    var sessions: String { directory.file("sessions") }
    var logs: String { directory.file("logs") }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("fixtures/sessions").path

    init(sessions fixtures: [String], renamedTo names: [String: String] = [:], in parent: String = NSTemporaryDirectory()) throws {
        directory = try TemporaryDirectory(in: parent)
        try FileManager.default.createDirectory(atPath: directory.file("sessions"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory.file("logs"), withIntermediateDirectories: true)
        for fixture in fixtures {
            try FileManager.default.copyItem(
                atPath: "\(Self.fixtures)/\(fixture)", toPath: "\(sessions)/\(names[fixture] ?? fixture)")
        }
        // The agent's user makes its store and restores here (SyncAgentRunner hands over what
        // it is given, started later).
        try AgentUser.handOver(directory.path)
    }

    /// `count` copies of one fixture, named s01, s02…
    init(copies count: Int, of fixture: String) throws {
        self = try Workspace(sessions: [])
        for index in 1...count {
            try FileManager.default.copyItem(
                atPath: "\(Self.fixtures)/\(fixture)", toPath: session(String(format: "s%02d", index)))
        }
    }

    func session(_ name: String) -> String { "\(sessions)/\(name)" }

    /// `sync-agent-bench sidecar-writer` rewriting the sessions the way Baileys does, `rate`
    /// writes a second for `seconds`, with one seed so that runs repeat; its output and log under `logs`.
    func startWriter(rate: Int, seconds: Int) throws -> SidecarWriterProcess {
        try SidecarWriterProcess(root: sessions, rate: rate, seconds: seconds, seed: 7, logs: logs)
    }

    func freshDirectory() throws -> String {
        let path = directory.file("fresh-\(randomHex(6))")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        return path
    }

    func cloudRunner(on bucket: S3Client, server: (any PrivateS3Server)? = nil) async throws -> SyncAgentRunner {
        try await .cloud(
            endpoint: try server?.endpoint ?? TestS3Server.seaweedFS.endpoint, bucket: bucket.configuration.bucket,
            accessKey: try server?.accessKey ?? TestS3Server.seaweedFS.accessKey,
            secretKey: try server?.secretKey ?? TestS3Server.seaweedFS.secretKey, logDirectory: logs)
    }

    /// Restores every session into fresh directories until one equals the sessions root (minus
    /// `ignoring`, names the agent must leave out); returns it.
    func waitUntilStoreMatches(
        _ runner: SyncAgentRunner, ignoring ignored: Set<String> = [], timeout: Duration = .seconds(90),
        agent: RunningAgent? = nil
    ) async throws -> String {
        var last = ""
        var restored = ""
        try await waitUntil(
            timeout: timeout, every: .milliseconds(300),
            "the store never matched the directory: \(last)\nthe agent's log:\n\(agent?.log ?? "-")"
        ) {
            restored = try freshDirectory()
            let result = try await runner.run("restore", ["--sessions-dir", restored, "--all"])
            guard result.termination == .exited(0) else {
                last = "restore: \(result.termination) \(result.standardError)"
                return false
            }
            let expected = try directoryTree(sessions).filter { !ignored.contains(($0.key as NSString).lastPathComponent) }
            let actual = try directoryTree(restored)
            last = "differs in \(Set(expected.keys).symmetricDifference(actual.keys).sorted()) and contents of \(expected.filter { actual[$0.key] != nil && actual[$0.key] != $0.value }.keys.sorted())"
            return actual == expected
        }
        return restored
    }
}
