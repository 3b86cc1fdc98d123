import Foundation
import TestSupport
import Testing

/// FORMAT.md is enough to read a store: `Tests/FormatReader/format_reader.py`, written from the
/// document alone, rebuilds sessions the real binary backed up and watched, byte for byte,
/// checking every content id, manifest and state digest.
@Suite("format reader")
struct FormatReaderTests {
    @Test func theKeyDerivationAndWorkedExampleOfFormatMDHold() async throws {
        let output = try await FormatReader.python([FormatReader.scriptPath, "--self-test"])
        #expect(output.contains(#""selfTest": "passed""#), "\(output)")
    }

    /// A base (`backup`), deltas (`watch`: a change, a new subdirectory, a deletion) and a
    /// tombstone (a removed session directory); every committed snapshot read again at the end.
    @Test func anIndependentReaderRebuildsEverySnapshotTheAgentWrote() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"], renamedTo: ["medium": "logged-out"])
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let reader = FormatReader(store: store, keyFile: store + "/.sync-agent-key")
        func read(_ session: String, snapshot: String? = nil) async throws -> (FormatReader.Result, directory: String) {
            let directory = try workspace.freshDirectory() + "/" + session
            return (try await reader.read(session, into: directory, snapshot: snapshot), directory)
        }
        var seen: [(session: String, snapshot: String, tree: [String: [UInt8]])] = []
        /// Reads until the rebuilt session equals the directory (the agent commits a moment after a change).
        func expectReaderMatches(_ session: String) async throws {
            var last: FormatReader.Result?
            try await waitUntil(timeout: .seconds(60), every: .milliseconds(300), "never matched: \(String(describing: last))") {
                let (result, directory) = try await read(session)
                last = result
                guard result.state == "restored" else { return false }
                return try directoryTree(directory) == directoryTree(workspace.session(session))
            }
            seen.append((session, last!.snapshot, try directoryTree(workspace.session(session))))
        }

        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")
        try await expectReaderMatches("small")
        try await expectReaderMatches("logged-out")

        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching()
        let small = workspace.session("small")
        try write(#"{"changed":"\#(randomHex(8))"}"#, to: "\(small)/creds.json")
        try FileManager.default.createDirectory(atPath: "\(small)/keys", withIntermediateDirectories: false)
        try write(#"{"keyData":"\#(randomHex(16))"}"#, to: "\(small)/keys/pre-key-900.json")
        try await expectReaderMatches("small")
        let deleted = try #require(try sortedFiles(small).first { $0.hasPrefix("pre-key-") })
        try FileManager.default.removeItem(atPath: "\(small)/\(deleted)")
        try await expectReaderMatches("small")

        try FileManager.default.removeItem(atPath: workspace.session("logged-out"))
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(300), "no tombstone read:\n\(agent.log)") {
            try await read("logged-out").0.state == "tombstone"
        }
        #expect(try await agent.terminate() == .exited(0))

        let chain = try await read("small").0.chain
        #expect(chain.first?.hasSuffix(".base") == true && chain.dropFirst().allSatisfy { $0.hasSuffix(".delta") }, "\(chain)")
        #expect(chain.count >= 3, "a base and at least two deltas: \(chain)")
        for (session, snapshot, expected) in seen {
            let (result, directory) = try await read(session, snapshot: snapshot)
            #expect(result.state == "restored")
            #expect(try directoryTree(directory) == expected, "\(session) at \(snapshot)")
            try expectPrivateModes(directory)
        }
    }

    /// "SQLite databases": a database stored as pages, a base and then a delta of the pages a
    /// changed row wrote, put together by the reader written from FORMAT.md alone; a file whose
    /// name sorts between the database and its pages (`auth.db.bak`) keeps its place.
    @Test func anIndependentReaderPutsADatabaseTogetherFromItsPages() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let reader = FormatReader(store: store, keyFile: store + "/.sync-agent-key")
        let session = workspace.session("small")
        func sql(_ statement: String) async throws {
            // Closed at the end: checkpointed into the file, no -wal left.
            try await runProgram("/usr/bin/python3", [
                "-c", "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); db.execute('PRAGMA journal_mode = WAL'); db.executescript(sys.argv[2]); db.close()",
                "\(session)/auth.db", statement])
        }
        try await sql("CREATE TABLE signal_keys (type TEXT, id TEXT, value TEXT, PRIMARY KEY (type, id)); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) INSERT INTO signal_keys SELECT 'pre-key', i, hex(randomblob(200)) FROM n;")
        try write(#"{"backup":true}"#, to: "\(session)/auth.db.bak")
        try AgentUser.handOver(session)
        func expectReaderMatches() async throws {
            try await waitUntil(timeout: .seconds(60), every: .milliseconds(300), "the reader never matched the directory") {
                let directory = try workspace.freshDirectory() + "/small"
                guard try await reader.read("small", into: directory, snapshot: nil).state == "restored" else { return false }
                return try directoryTree(directory) == directoryTree(session)
            }
        }
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")
        try await expectReaderMatches()

        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching()
        try await sql("UPDATE signal_keys SET value = 'changed' WHERE id = '7';")
        try await expectReaderMatches()
        #expect(try await agent.terminate() == .exited(0))
        let delta = try #require(agent.uploads.last { $0.session == "small" })
        #expect(delta.kind == "delta" && delta.bytes < 20_000, "\(agent.log)")
    }

    /// "The committed history" across a snapshot deleted by hand, as a prune deletes one: the walk
    /// goes on from the newest object below it listed as written no later than the snapshot naming
    /// it, so a copy at that sequence uploaded later (whose tag would win on its own) is not taken.
    /// The reader and the agent's restore agree.
    @Test func aWalkAcrossADeletedSnapshotTakesTheObjectWrittenBeforeIt() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        var trees: [[String: [UInt8]]] = []
        for round in 1...3 {
            try write(#"{"round":\#(round)}"#, to: workspace.session("small") + "/creds.json")
            let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--keep-last", "10"])
            #expect(backup.termination == .exited(0), "\(backup.standardError)")
            trees.append(try directoryTree(workspace.session("small")))
        }
        let snapshots = store + "/" + (try await runner.locate("small")[0]) + "snapshots"
        let names = try sortedFiles(snapshots)
        try #require(names.count == 3, "\(names)")
        try FileManager.default.removeItem(atPath: "\(snapshots)/\(names[1])")
        let late = names[0].replacing(/-[0-9a-f]{16}\.base$/, with: "-ffffffffffffffff.base")
        try FileManager.default.copyItem(atPath: "\(snapshots)/\(names[0])", toPath: "\(snapshots)/\(late)")
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: 60)], ofItemAtPath: "\(snapshots)/\(late)")

        let directory = try workspace.freshDirectory() + "/small"
        let result = try await FormatReader(store: store, keyFile: store + "/.sync-agent-key").read("small", into: directory, snapshot: "1.1")
        #expect(result.chain == ["1.1.base"])
        #expect(try directoryTree(directory) == trees[0])
        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored, ["--snapshot", "1.1", "small"])
        #expect(try directoryTree(restored + "/small") == trees[0])
    }

    /// After a key rotation a delta records the files it read under the new key and the state
    /// keeps the others' content ids under the old one: the state digest covers both (FORMAT.md,
    /// `stateDigest`), and a reader with both keys rebuilds the session.
    @Test func aChainAcrossAKeyRotationMixesContentIDsAndStillReads() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let small = workspace.session("small")
        // Files written long ago have fingerprints, so the watcher below keeps their records.
        for name in try sortedFiles(small) {
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: "\(small)/\(name)")
        }
        let store = try workspace.freshDirectory()
        var runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")

        let oldKey = try String(contentsOfFile: store + "/.sync-agent-key", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let newKey = try await SyncAgentRunner.newEncryptionKey(logDirectory: workspace.logs)
        runner.environment["SESSION_ENCRYPTION_KEY"] = "\(newKey),\(oldKey)"
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching()
        try write(#"{"rotated":"\#(randomHex(8))"}"#, to: "\(small)/creds.json")
        let reader = FormatReader(store: store, keys: "\(newKey),\(oldKey)")
        var last: FormatReader.Result?
        var directory = ""
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(300), "never matched: \(String(describing: last))") {
            directory = try workspace.freshDirectory() + "/small"
            last = try await reader.read("small", into: directory)
            guard last?.state == "restored" else { return false }
            return try directoryTree(directory) == directoryTree(small)
        }
        #expect(try await agent.terminate() == .exited(0))
        let result = try #require(last)
        #expect(result.keyIDs.count >= 2 && result.keyIDs.first != result.keyIDs.last, "a base under the old key, deltas under the new: \(result)")
        #expect(result.stateKeyIDs.count == 2, "content ids under both keys: \(result)")
    }

    /// A store of format version 3 (`fixtures/stores/version-3`, byte for byte) reads; `watch`
    /// goes on with its chain in deltas of version 4; the reader checks every manifest of the
    /// mixed chain, each digest by its own version's rule (FORMAT.md, `stateDigest`).
    @Test func aChainOfVersion3ContinuedInVersion4Reads() async throws {
        let workspace = try Workspace(sessions: [])
        let store = workspace.directory.file("store")
        let session = workspace.session("version-3")
        try FileManager.default.copyItem(atPath: Fixtures.path("stores/version-3/store"), toPath: store)
        try FileManager.default.copyItem(atPath: Fixtures.path("stores/version-3/sessions/version-3"), toPath: session)
        try AgentUser.handOver(workspace.directory.path)
        // bench/instructions' fixed key, which wrote the fixture.
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        let reader = FormatReader(store: store, keys: key)
        let before = try await reader.read("version-3", into: try workspace.freshDirectory() + "/version-3")
        #expect(before.state == "restored" && before.formatVersions == [3, 3], "\(before)")

        var runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        runner.environment["SESSION_ENCRYPTION_KEY"] = key
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching()
        try write(#"{"version":4}"#, to: "\(session)/creds.json")
        try FileManager.default.removeItem(atPath: "\(session)/pre-key-1.json")
        var last: FormatReader.Result?
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(300), "never matched: \(String(describing: last))\n\(agent.log)") {
            let directory = try workspace.freshDirectory() + "/version-3"
            last = try await reader.read("version-3", into: directory)
            guard last?.state == "restored" else { return false }
            return try directoryTree(directory) == directoryTree(session)
        }
        #expect(try await agent.terminate() == .exited(0))
        let versions = try #require(last).formatVersions
        #expect(versions.prefix(2) == [3, 3] && versions.count > 2 && versions.dropFirst(2).allSatisfy { $0 == 4 }, "\(versions)")
    }
}
