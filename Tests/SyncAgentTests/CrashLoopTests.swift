import Foundation
import Glibc
import TestSupport
import Testing

/// The real binaries killed with SIGKILL at random moments, over and over: `watch` while a
/// Baileys-like writer changes its sessions, and `restore` in the middle of replacing a
/// directory. The kill delays come from a seeded generator, so a failure can be replayed.
///
/// Environment: SYNC_AGENT_CRASH_LOOPS (watch kills; default 200 local, 30 cloud),
/// SYNC_AGENT_CRASH_MODE (`local`, the default, or `cloud` on the shared SeaweedFS),
/// SYNC_AGENT_RESTORE_KILLS (restore kills; default 100), SYNC_AGENT_CRASH_SEED (default 1).
@Suite("crash loops", .serialized)
struct CrashLoopTests {
    static let seed = environment("SYNC_AGENT_CRASH_SEED").flatMap(UInt64.init) ?? 1
    static let sessions = (1...8).map { "s\($0)" }

    /// Each kill point checks every session's newest committed snapshot against the writer's
    /// history. `watch` reads a session's files one by one while the writer goes on, so a
    /// snapshot may hold one file from before a write and another from after a later one: a
    /// combination the directory never had as a whole. Cross-file atomicity is therefore not
    /// promised (Baileys writes without a rename or an fsync, so the directory never has it
    /// either); what is promised, and checked here, is per-file truth and monotonicity: each
    /// file is absent or holds a whole version the writer wrote, no file exists that the
    /// directory did not have, and no file goes back to a state older than the one the
    /// previous kill point's snapshot held.
    @Test func watchKilledAtRandomMomentsOnlyEverCommitsStatesTheDirectoryHad() async throws {
        let cloud = Self.environment("SYNC_AGENT_CRASH_MODE") == "cloud"
        let kills = Self.environment("SYNC_AGENT_CRASH_LOOPS").flatMap(Int.init) ?? (cloud ? 30 : 200)
        let workspace = try Workspace(sessions: [], in: TemporaryDirectory.memoryBackedParent)
        for session in Self.sessions {
            try FileManager.default.copyItem(atPath: "\(Workspace.fixtures)/small", toPath: workspace.session(session))
        }
        let runner = cloud
            ? try await workspace.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
            : SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let history = try WriterHistory(sessionsRoot: workspace.sessions, path: workspace.logs + "/writer-history.tsv")
        let writer = try SidecarWriterProcess(root: workspace.sessions, rate: 40, seed: Self.seed, logs: workspace.logs)
        // A short quiet period and delay: every run of the agent uploads, so kills land in scans,
        // uploads and head writes as well as in start-up.
        let watchOptions = ["--quiet-period", "50ms", "--max-delay", "300ms"]

        var random = SplitMix64(seed: Self.seed)
        // The snapshots at each kill point, restored over those of the previous one.
        let newestSnapshots = try workspace.freshDirectory()
        var positions: [String: [String: Int]] = [:]
        for kill in 1...kills {
            let agent = try runner.watch(workspace.sessions, watchOptions)
            // Up to 1.2 s: start-up (store, endpoint, claims, the first scan) takes a few
            // hundred milliseconds, then uploads and head writes repeat every --max-delay, so
            // later kills would land in the same cycle again and only lengthen the test.
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...1200, using: &random)))
            try await agent.process.kill()
            // The log's last lines, not its path: CI removes the workspace before anyone reads it.
            let context = "kill \(kill) of \(kills) (seed \(Self.seed)), the agent's log ends:\n"
                + agent.logLines.suffix(15).joined(separator: "\n")
            try #require(agent.process.exitStatus == .signaled(SIGKILL), "the agent ended by itself: \(context)")

            // Every session the store has, as of this kill point.
            let restore = try await runner.run("restore", ["--sessions-dir", newestSnapshots, "--all"])
            try #require(restore.termination == .exited(0), "\(restore.standardError) \(context)")
            try history.catchUp()
            for session in try sortedFiles(newestSnapshots) {
                let placed = history.place(
                    try directoryTree("\(newestSnapshots)/\(session)"), session: session, notBefore: positions[session] ?? [:])
                switch placed {
                case .success(let placement): positions[session] = placement
                case .failure(let failure): Issue.record("\(session): \(failure); \(context)")
                }
            }
        }
        #expect(positions.count == Self.sessions.count, "sessions never uploaded in \(kills) kills: \(positions.keys.sorted())")
        let versionsAdvanced = positions.values.flatMap(\.values).reduce(0, +)
        print("watch crash loop: \(kills) kills (seed \(Self.seed)); the newest snapshots moved \(versionsAdvanced) file versions on")

        try await writer.stop()
        let agent = try runner.watch(workspace.sessions, watchOptions)
        let restored = try await workspace.waitUntilStoreMatches(runner, agent: agent)
        try expectPrivateModes(restored)
        #expect(try await agent.terminate() == .exited(0), "\(agent.log)")
        #expect(agent.log.contains("stopped; every change uploaded"), "\(agent.log)")
        let verified = try await runner.run("verify", ["--all"])
        #expect(verified.termination == .exited(0), "verify: \(verified.standardOutput)\(verified.standardError)")
    }

    /// `restore` SIGKILLed at random moments of its run, over a directory in an older state: the
    /// directory is the complete old one or the complete new one after every kill, files and
    /// modes alike; whatever working directories a kill leaves next to it, the next restore
    /// removes; and a last restore leaves exactly the new state.
    @Test func restoreKilledMidSwapLeavesTheCompleteOldOrTheCompleteNewDirectory() async throws {
        let kills = Self.environment("SYNC_AGENT_RESTORE_KILLS").flatMap(Int.init) ?? 100
        let workspace = try Workspace(sessions: [], in: TemporaryDirectory.memoryBackedParent)
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        // Large enough that a restore takes a while: thousands of pre-keys and a nested directory.
        var newFiles: [String: [UInt8]] = ["creds.json": Array(#"{"registered":true}"#.utf8)]
        for index in 0..<3000 {
            newFiles["pre-key-\(index).json"] = Array(#"{"keyPair":"\#(Data(randomBytes(240)).base64EncodedString())"}"#.utf8)
        }
        for index in 0..<20 { newFiles["keys/sender-key-\(index).json"] = Array(#"{"n":\#(index)}"#.utf8) }
        // The old state: a third of the files older, a tenth not there yet, others since removed;
        // world-readable, as a writer left them.
        var oldFiles = newFiles
        for (offset, name) in newFiles.keys.sorted().enumerated() {
            if offset % 3 == 0 { oldFiles[name] = Array(#"{"older":\#(offset)}"#.utf8) }
            if offset % 10 == 1 { oldFiles[name] = nil }
        }
        for index in 0..<50 { oldFiles["pre-key-removed-\(index).json"] = Array("{}".utf8) }

        try materialize(newFiles, at: workspace.session("big"), fileMode: 0o644, directoryMode: 0o755)
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        try #require(backup.termination == .exited(0), "\(backup.standardError)")
        let target = try workspace.freshDirectory()
        let session = "\(target)/big"
        try materialize(oldFiles, at: session, fileMode: 0o644, directoryMode: 0o755)
        let old = try DirectoryState(session)

        // Whole runs first, to know how long one lasts: kills are spread over all of it. The
        // shortest of three, as other processes on the machine can only make a run longer.
        var runTime = Duration.seconds(3600)
        var newState = old
        for _ in 0..<3 {
            if newState != old {
                try FileManager.default.removeItem(atPath: session)
                try materialize(oldFiles, at: session, fileMode: 0o644, directoryMode: 0o755)
            }
            let started = ContinuousClock.now
            try await runner.restore(into: target)
            runTime = min(runTime, ContinuousClock.now - started)
            newState = try DirectoryState(session)
        }
        let source = try DirectoryState(workspace.session("big"))
        let sameFiles = newState.files == source.files
        #expect(sameFiles, "the restore differs from the backed-up directory: \(newState.difference(from: source))")
        try expectPrivateModes(session)

        var random = SplitMix64(seed: Self.seed)
        // How each kill left the directory, and which working directories it left beside it.
        var outcomes: [String: Int] = [:]
        var now = newState
        // Past the planned kills, while none has seen the new state yet (a loaded machine makes
        // every run slower than the shortest one measured), kills come ever later until one does.
        var lateKills = 0
        for kill in 1... {
            let isLate = kill > kills
            if isLate {
                guard !outcomes.keys.contains(where: { $0.hasPrefix("new") }), lateKills < 12 else { break }
                lateKills += 1
            }
            if now == newState {
                try FileManager.default.removeItem(atPath: session)
                try materialize(oldFiles, at: session, fileMode: 0o644, directoryMode: 0o755)
            }
            let leftBefore = Set(try sortedFiles(target))
            let restore = try runner.start("restore", ["--sessions-dir", target, "--all"])
            // Every other kill lands in the last part of the run, where the staging directory is
            // sealed, exchanged with the target and the old contents removed: milliseconds that
            // delays spread over the whole run would seldom hit.
            let share = isLate ? 1.2 * Double(1 + lateKills)
                : kill.isMultiple(of: 2)
                ? Double.random(in: 0...1.2, using: &random) : Double.random(in: 0.7...1.05, using: &random)
            try await Task.sleep(for: runTime * share)
            try await restore.kill()
            let context = "kill \(kill) of \(kills)\(isLate ? " (late)" : "") at \(share) of the run (seed \(Self.seed)): \(restore.standardError)"

            try #require(FileManager.default.fileExists(atPath: session), "the directory is gone: \(context)")
            now = try DirectoryState(session)
            let leftNow = Set(try sortedFiles(target))
            #expect(leftNow.allSatisfy { $0 == "big" || $0.hasPrefix(".big.sync-agent-") }, "\(leftNow.sorted()): \(context)")
            let leftByThisKill = leftNow.subtracting(leftBefore).compactMap { name in
                ["staging", "ready", "old"].first { name.contains(".sync-agent-\($0)-") }
            }.sorted()
            let outcome = (now == old ? "old" : now == newState ? "new" : "neither")
                + (leftByThisKill.isEmpty ? "" : " + \(leftByThisKill.joined(separator: ", "))")
            outcomes[outcome, default: 0] += 1
            if now != old && now != newState {
                Issue.record("the directory is neither the old nor the new state: \(now.difference(from: old)); \(context)")
            }
        }

        try await runner.restore(into: target)
        let final = try DirectoryState(session)
        #expect(final == newState, "\(final.difference(from: newState))")
        #expect(try sortedFiles(target) == ["big"], "a working directory outlived the last restore")
        let report = outcomes.sorted { $0.key < $1.key }.map { "\($0.value)× \($0.key)" }.joined(separator: ", ")
        // Both states were seen after a kill, or the kills missed the swap.
        #expect(outcomes.keys.contains { $0.hasPrefix("old") } && outcomes.keys.contains { $0.hasPrefix("new") }, "\(report)")
        print("restore crash loop: \(kills) kills and \(lateKills) late over a \(runTime) run: \(report)")
    }

    private static func environment(_ name: String) -> String? { ProcessInfo.processInfo.environment[name] }
}

/// A directory's files and modes, as compared after each kill.
private struct DirectoryState: Equatable, CustomTestStringConvertible {
    var files: [String: [UInt8]]
    var modes: [String: Int]

    init(files: [String: [UInt8]], modes: [String: Int]) {
        self.files = files
        self.modes = modes
    }

    init(_ path: String) throws {
        self.init(files: try directoryTree(path), modes: try TestSupport.modes(path))
    }

    /// Thousands of files: a failed expectation names how many, `difference(from:)` says what differs.
    var testDescription: String { "\(files.count) entries" }

    /// A short account of how it differs from `other`, for a failure message.
    func difference(from other: DirectoryState) -> String {
        let names = Set(files.keys).symmetricDifference(other.files.keys).sorted()
        let contents = files.keys.filter { other.files[$0] != nil && other.files[$0] != files[$0] }.sorted()
        let modes = self.modes.keys.filter { other.modes[$0] != nil && other.modes[$0] != self.modes[$0] }.sorted()
        return "\(files.count) entries; names differ: \(names.prefix(5)), contents: \(contents.prefix(5)), modes: \(modes.prefix(5))"
    }
}

/// Writes `files` (relative path → bytes) as a new directory at `path`, with these modes.
private func materialize(_ files: [String: [UInt8]], at path: String, fileMode: mode_t, directoryMode: mode_t) throws {
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    var directories: Set<String> = [path]
    for (name, bytes) in files {
        let file = "\(path)/\(name)"
        let parent = String(file[..<file.lastIndex(of: "/")!])
        if directories.insert(parent).inserted {
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        }
        try write(bytes: bytes, to: file)
        chmod(file, fileMode)
    }
    for directory in directories { chmod(directory, directoryMode) }
}
