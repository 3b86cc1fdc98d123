import SessionCrypto
import Foundation
import S3Client
import SyncEngine
import TestSupport
import Testing

/// `sync-agent restore`, the real binary against real stores (SeaweedFS; a private one where the
/// test stops it): what the worker runs before it recovers its sessions.
@Suite("restore: the pre-recovery command")
struct RestoreCommandTests {
    typealias Run = (termination: Termination, standardOutput: String, standardError: String)

    enum Mode: String, CustomTestStringConvertible {
        case local, cloud, hybrid
        var testDescription: String { rawValue }
    }

    func runner(_ mode: Mode, _ workspace: Workspace) async throws -> SyncAgentRunner {
        let store = try workspace.freshDirectory()
        guard mode != .local else { return .local(store: store, logDirectory: workspace.logs) }
        var runner = try await workspace.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
        if mode == .hybrid {
            runner.storeArguments[runner.storeArguments.firstIndex(of: "cloud")!] = "hybrid"
            runner.storeArguments += ["--local-store", store]
        }
        return runner
    }

    func backup(_ runner: SyncAgentRunner, _ workspace: Workspace, _ options: [String] = []) async throws -> [String: String] {
        let result = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json"] + options)
        #expect(result.termination == .exited(0), "\(result.standardError)")
        let report = try jsonObject(result)
        return Dictionary(uniqueKeysWithValues: (report["backedUp"] as? [[String: Any]] ?? []).map {
            ($0["sessionId"] as! String, $0["snapshot"] as! String)
        })
    }

    // MARK: - Round trips

    /// The local mode needs no servers: a plain `swift test` runs it.
    @Test func roundTripsOnTheLocalStoreAndLeavesWhatIsAlreadyThereAlone() async throws {
        try await expectRoundTripsLeavingWhatIsAlreadyThereAlone(.local)
    }

    @Test(.needsTestServers, arguments: [Mode.cloud, .hybrid])
    func roundTripsInEachS3ModeAndLeavesWhatIsAlreadyThereAlone(_ mode: Mode) async throws {
        try await expectRoundTripsLeavingWhatIsAlreadyThereAlone(mode)
    }

    private func expectRoundTripsLeavingWhatIsAlreadyThereAlone(_ mode: Mode) async throws {
        let workspace = try Workspace(sessions: ["small", "medium"])
        let runner = try await runner(mode, workspace)
        _ = try await backup(runner, workspace)
        try write(#"{"after":"first backup"}"#, to: "\(workspace.session("small"))/creds.json")
        _ = try await backup(runner, workspace)

        let target = try workspace.freshDirectory()
        let (first, restored) = try await restoreStatuses(runner, into: target, ["--all"])
        #expect(first.termination == .exited(0), "\(first.standardError)")
        #expect(restored == ["small": "restored", "medium": "restored"])
        try expectSameTree(target, workspace.sessions)
        try expectPrivateModes(target)

        // Identical: left alone. One file changed: that session only.
        try write(#"{"changed":"locally"}"#, to: "\(target)/small/creds.json")
        let (_, again) = try await restoreStatuses(runner, into: target, ["--all"])
        #expect(again == ["small": "restored", "medium": "up_to_date"])
        try expectSameTree(target, workspace.sessions)

        // --if-missing: an absent directory comes back, a present one is not looked at.
        try FileManager.default.removeItem(atPath: "\(target)/medium")
        try write(#"{"changed":"again"}"#, to: "\(target)/small/creds.json")
        let (missing, onlyMissing) = try await restoreStatuses(runner, into: target, ["--all", "--if-missing"])
        #expect(missing.termination == .exited(0))
        #expect(onlyMissing == ["small": "present", "medium": "restored"])
        #expect(try readBytes("\(target)/small/creds.json") == Array(#"{"changed":"again"}"#.utf8))
        try expectSameTree("\(target)/medium", workspace.session("medium"))

        if mode == .hybrid {
            // The local store lost (a new machine): S3's copy is the newest there is.
            let localStore = runner.storeArguments.last!
            try FileManager.default.removeItem(atPath: localStore)
            let elsewhere = try workspace.freshDirectory()
            let (fromS3, fromS3Statuses) = try await restoreStatuses(runner, into: elsewhere, ["small", "medium"])
            #expect(fromS3.termination == .exited(0), "\(fromS3.standardError)")
            #expect(fromS3Statuses == ["small": "restored", "medium": "restored"])
            try expectSameTree(elsewhere, workspace.sessions)
        }
    }

    /// Restored files are 0600 and directories 0700 whatever the umask: one that takes the
    /// owner's bits (the mode a file is created with is not enough) and one that takes none.
    @Test(arguments: [0o277, 0o000] as [mode_t])
    func restoredModesArePrivateWhateverTheUmask(_ umask: mode_t) async throws {
        let workspace = try Workspace(sessions: ["small"])
        try FileManager.default.createDirectory(atPath: workspace.session("small") + "/keys", withIntermediateDirectories: false)
        try write(#"{"nested":true}"#, to: workspace.session("small") + "/keys/sender-key-1.json")
        var runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        _ = try await backup(runner, workspace)
        runner.umask = umask
        let target = try workspace.freshDirectory()
        try await runner.restore(into: target)
        try expectSameTree(target, workspace.sessions)
        try expectPrivateModes("\(target)/small")
    }

    /// A session an agent claimed (its head written) but had no snapshot of yet, as an agent
    /// killed during its first upload leaves it: `--all` has nothing to bring back for it and
    /// does not fail the worker's start; asked for by name, it is not found.
    @Test func aClaimedSessionWithoutASnapshotIsSkippedByAllAndNotFoundByName() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        _ = try await backup(runner, workspace)
        let sessionStore = SessionStore(
            store: try FileSystemStore(root: store),
            keyring: try Keyring.load(keyFiles: ["\(store)/.sync-agent-key"], environmentValue: nil))
        let claim = SessionHead(generation: 1, owner: "killed-agent", latest: nil, latestKind: nil, base: nil, updatedAt: Date())
        _ = try await sessionStore.writeHead(claim, session: try #require(SessionID("claimed")), condition: .ifAbsent)

        let target = try workspace.freshDirectory()
        let (all, statuses) = try await restoreStatuses(runner, into: target, ["--all"])
        #expect(all.termination == .exited(0), "\(all.standardError)")
        #expect(statuses == ["small": "restored"])
        #expect(try sortedFiles(target) == ["small"])
        let (named, namedStatuses) = try await restoreStatuses(runner, into: target, ["claimed"])
        #expect(named.termination == .exited(4), "\(named.standardError)")
        #expect(namedStatuses == ["claimed": "failed: not_found"])
    }

    // MARK: - Earlier points

    @Test(.needsTestServers) func atAndSnapshotRestoreAnEarlierPointAndUnknownPointsAreRefusedBeforeAnythingChanges() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = try await runner(.cloud, workspace)
        let original = try readBytes("\(workspace.session("small"))/creds.json")
        let first = try #require(try await backup(runner, workspace)["small"])
        // S3 lists times to the second.
        try await Task.sleep(for: .milliseconds(1_200))
        let between = Date().formatted(.iso8601)
        try await Task.sleep(for: .milliseconds(1_200))
        try write(#"{"second":true}"#, to: "\(workspace.session("small"))/creds.json")
        _ = try await backup(runner, workspace)

        for point in [["--at", between], ["--snapshot", first]] {
            let target = try workspace.freshDirectory()
            let (result, statuses) = try await restoreStatuses(runner, into: target, point + ["small"])
            #expect(result.termination == .exited(0), "\(point): \(result.standardError)")
            #expect(statuses == ["small": "restored"])
            #expect(try readBytes("\(target)/small/creds.json") == original, "\(point)")
        }

        let target = try workspace.freshDirectory()
        try write("stale", to: "\(target)/keep-me")
        let cases: [([String], String)] = [
            (["--snapshot", "99.1", "small"], "session small has no snapshot 99.1"),
            (["--at", "2001-01-01T00:00:00Z", "--all"], "session small has no snapshot at or before 2001-01-01T00:00:00Z"),
            (["--at", "yesterday-ish", "--all"], "--at yesterday-ish"),
            (["--all", "small"], "name session ids, pass --all or pass --sessions-from"),
            (["--snapshot", first, "--at", between, "small"], "--snapshot and --at"),
        ]
        for (arguments, expected) in cases {
            let result = try await runner.run("restore", ["--sessions-dir", target] + arguments)
            #expect(result.termination == .exited(64), "\(arguments)")
            #expect(result.standardError.split(separator: "\n").first?.contains(expected) == true, "\(arguments): \(result.standardError)")
        }
        #expect(try directoryTree(target) == ["keep-me": Array("stale".utf8)])
    }

    // MARK: - Which sessions

    @Test func sessionsFromTakesLinesAndBothGatewayShapesAndRefusesAMalformedListWhole() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"])
        let runner = try await runner(.local, workspace)
        _ = try await backup(runner, workspace)
        let lists = [
            ("lines", "small\n\nmedium\n"),
            ("array", #"[{"id":"small","status":"open"},{"id":"medium"}]"#),
            ("envelope", #"{"data":{"sessions":[{"id":"medium"},{"id":"small"}]}}"#),
        ]
        for (name, content) in lists {
            let file = "\(workspace.logs)/\(name).list"
            try write(content, to: file)
            for (arguments, input) in [(["--sessions-from", file], "/dev/null"), (["--sessions-from", "-"], file)] {
                let target = try workspace.freshDirectory()
                let (result, statuses) = try await restoreStatuses(runner, into: target, arguments, standardInput: input)
                #expect(result.termination == .exited(0), "\(name) \(arguments): \(result.standardError)")
                #expect(statuses == ["small": "restored", "medium": "restored"], "\(name) \(arguments)")
                try expectSameTree(target, workspace.sessions)
            }
        }

        let target = try workspace.freshDirectory()
        try FileManager.default.createDirectory(atPath: "\(target)/small", withIntermediateDirectories: false)
        try write("stale", to: "\(target)/small/creds.json")
        let before = try directoryTree(target)
        let malformed = [
            ("not json", "small\n../../etc\n", "line 2: \"../../etc\" is not a valid session id"),
            ("truncated", #"[{"id":"small"},"#, "not valid JSON"),
            ("no id", #"{"data":{"sessions":[{"id":"small"},{"name":"medium"}]}}"#, "data.sessions[1] has no \"id\""),
        ]
        for (name, content, expected) in malformed {
            let file = "\(workspace.logs)/bad-\(randomHex(3)).list"
            try write(content, to: file)
            let result = try await runner.run("restore", ["--sessions-dir", target, "--sessions-from", file])
            #expect(result.termination == .exited(64), "\(name)")
            let lines = result.standardError.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].contains(expected), "\(name): \(result.standardError)")
        }
        // Bounded like any input: a list past 32 MiB is refused, from a file or a pipe.
        let huge = "\(workspace.logs)/huge.list"
        try write(String(repeating: "small\n", count: (32 << 20) / 6 + 1), to: huge)
        for (arguments, input) in [(["--sessions-from", huge], "/dev/null"), (["--sessions-from", "-"], huge)] {
            let result = try await runner.run("restore", ["--sessions-dir", target] + arguments, standardInput: input)
            #expect(result.termination == .exited(64), "\(arguments)")
            let lines = result.standardError.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].contains("longer than 32 MiB"), "\(arguments): \(result.standardError)")
        }
        let unreadable = try await runner.run("restore", ["--sessions-dir", target, "--sessions-from", "\(workspace.logs)/no-such-file"])
        #expect(unreadable.termination == .exited(64))
        #expect(try directoryTree(target) == before)
    }

    @Test func aDryRunSaysWhatWouldHappenAndChangesNothing() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"])
        let runner = try await runner(.local, workspace)
        _ = try await backup(runner, workspace)
        let target = try workspace.freshDirectory()
        try FileManager.default.copyItem(atPath: workspace.session("medium"), toPath: "\(target)/medium")
        try FileManager.default.createDirectory(atPath: "\(target)/small", withIntermediateDirectories: false)
        try write("stale", to: "\(target)/small/creds.json")
        let before = try directoryTree(target)

        let (result, statuses) = try await restoreStatuses(runner, into: target, ["--all", "--dry-run"])
        #expect(result.termination == .exited(0), "\(result.standardError)")
        #expect(statuses == ["small": "would_restore", "medium": "up_to_date"])
        #expect(try directoryTree(target) == before)

        let absent = workspace.logs + "/never-created"
        let (_, intoNothing) = try await restoreStatuses(runner, into: absent, ["small", "--dry-run"])
        #expect(intoNothing == ["small": "would_restore"])
        #expect(!FileManager.default.fileExists(atPath: absent))
    }

    // MARK: - Failures

    @Test(.needsTestServers) func withTheStoreDownEverySessionFailsUnreachableAndNoDirectoryChanges() async throws {
        let server = try await PrivateSeaweedFS()
        let workspace = try Workspace(sessions: ["small", "medium"])
        let runner = try await workspace.cloudRunner(on: try await server.freshBucket(), server: server)
        _ = try await backup(runner, workspace)
        let target = try workspace.freshDirectory()
        try await runner.restore(into: target)
        try write("changed since", to: "\(target)/small/creds.json")
        let before = try directoryTree(target)

        try await server.stop()
        for arguments in [["small", "medium"], ["--all"]] {
            let (result, statuses) = try await restoreStatuses(runner, into: target, arguments)
            #expect(result.termination == .exited(4), "\(arguments): \(result.standardError)")
            if arguments != ["--all"] { #expect(statuses == ["small": "failed: unreachable", "medium": "failed: unreachable"]) }
            #expect(result.standardError.contains("cannot be reached"))
        }
        #expect(try directoryTree(target) == before)
    }

    @Test(.needsTestServers) func oneTamperedObjectFailsItsSessionAndTheOthersRestore() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"], renamedTo: ["small": "tampered"])
        try FileManager.default.copyItem(atPath: Workspace.fixtures + "/small", toPath: workspace.session("healthy"))
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let runner = try await workspace.cloudRunner(on: bucket)
        _ = try await backup(runner, workspace)
        let prefix = try #require(try await runner.locate("tampered").first)
        let key = try #require(try await bucket.listObjects(prefix: prefix + "snapshots/").objects.first?.key)
        var bytes = try await bucket.getObject(key: key).bytes
        bytes[bytes.count / 2] ^= 0x01
        try await bucket.putObject(key: key, bytes: bytes)

        let target = try workspace.freshDirectory()
        try FileManager.default.createDirectory(atPath: "\(target)/tampered", withIntermediateDirectories: false)
        try write("the worker's last state", to: "\(target)/tampered/creds.json")
        let (result, statuses) = try await restoreStatuses(runner, into: target, ["--all"])
        #expect(result.termination == .exited(3), "\(result.standardError)")
        #expect(statuses == ["tampered": "failed: corrupt", "medium": "restored", "healthy": "restored"])
        #expect(try directoryTree("\(target)/tampered") == ["creds.json": Array("the worker's last state".utf8)])
        try expectSameTree("\(target)/medium", workspace.session("medium"))
        try expectSameTree("\(target)/healthy", workspace.session("healthy"))
    }
}
