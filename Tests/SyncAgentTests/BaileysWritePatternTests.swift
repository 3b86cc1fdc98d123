import Foundation
import Glibc
import SystemSupport
import TestSupport
import Testing

/// Every way Baileys' `useMultiFileAuthState` changes a session directory, through the real
/// `sync-agent watch` binary on a local store; each pattern is checked by restoring every snapshot
/// the agent committed, not only the last.
@Suite("watch: Baileys' write patterns")
struct BaileysWritePatternTests {
    /// `name.tmp` written, `name` renamed to `name.bak`, `name.tmp` renamed to `name` (Baileys
    /// since its atomic writes): a change of `name`; `.bak` is stored, `.tmp` never.
    @Test func aTemporaryRenamedOverTheNameIsAChangeOfTheNameAndTheBackupIsKept() async throws {
        let (workspace, runner, agent) = try await watching(["--quiet-period", "100ms"])
        let baileys = BaileysDirectory(workspace.session("baileys-registered"))
        var written: [[UInt8]] = [try readBytes(baileys.path("creds.json"))]
        for version in 1...4 {
            written.append(try baileys.writeData(try baileys.creds(version: version), to: "creds.json"))
            try await Task.sleep(for: .milliseconds(version.isMultiple(of: 2) ? 30 : 250))
        }
        // Without a backup (the atomic writes of Baileys' PR 2675): IN_MOVED_TO over an existing name.
        try baileys.writeData(#"{"keyData":{"type":"Buffer","data":"AAEC"}}"#, to: "app-state-sync-key-NEW.json")
        let replacement = Array(#"{"keyData":{"type":"Buffer","data":"AwQF"}}"#.utf8)
        try write(bytes: replacement, to: baileys.path("app-state-sync-key-NEW.json.tmp"))
        try baileys.rename("app-state-sync-key-NEW.json.tmp", to: "app-state-sync-key-NEW.json")

        let restored = try await workspace.waitUntilStoreMatches(runner, agent: agent)
        let session = "\(restored)/baileys-registered"
        #expect(try readBytes("\(session)/creds.json") == written.last)
        #expect(try readBytes("\(session)/creds.json.bak") == written[written.count - 2])
        #expect(try readBytes("\(session)/app-state-sync-key-NEW.json") == replacement)
        #expect(!FileManager.default.fileExists(atPath: "\(session)/app-state-sync-key-NEW.json.bak"))
        try await expectEverySnapshot(of: "baileys-registered", agent: agent, runner: runner, workspace: workspace) { snapshot, files in
            #expect(files.keys.allSatisfy { !$0.hasSuffix(".tmp") }, "snapshot \(snapshot) holds a temporary")
            #expect(files["creds.json"].map(written.contains) == true, "snapshot \(snapshot): creds.json missing or never written whole")
        }
        #expect(try await agent.terminate() == .exited(0))
    }

    /// The rotation's two renames a quiet period apart, and the temporary written a quiet period
    /// before them: no snapshot goes without `name`, which was never deleted.
    @Test
    func aReplacementSpreadOverSeveralQuietPeriodsNeverLeavesTheNameOut() async throws {
        let (workspace, runner, agent) = try await watching(["--quiet-period", "100ms"])
        let baileys = BaileysDirectory(workspace.session("baileys-registered"))
        let original = try readBytes(baileys.path("creds.json"))
        let next = Array(try baileys.creds(version: 1).utf8)
        // Baileys is a process of its own: its steps keep their pace on a thread of their own. On
        // the cooperative pool, which other tests of a full run can hold for seconds, its pauses
        // could stretch past the 10 s after which an unfinished replacement is a writer that died.
        try await runBlocking { () throws -> Void in
            try write(bytes: next, to: baileys.path("creds.json.tmp"))
            usleep(300_000)
            try baileys.rename("creds.json", to: "creds.json.bak")
            usleep(600_000)
            try baileys.rename("creds.json.tmp", to: "creds.json")
        }

        let restored = try await workspace.waitUntilStoreMatches(runner, agent: agent)
        #expect(try readBytes("\(restored)/baileys-registered/creds.json") == next)
        #expect(try readBytes("\(restored)/baileys-registered/creds.json.bak") == original)
        try await expectEverySnapshot(of: "baileys-registered", agent: agent, runner: runner, workspace: workspace) { snapshot, files in
            #expect(files["creds.json"] == original || files["creds.json"] == next, "creds.json missing from snapshot \(snapshot)")
        }
        #expect(try await agent.terminate() == .exited(0))
    }

    /// A writer that died between the renames leaves `name.bak` and `name.tmp` for good: the
    /// deletion of `name` is recorded once the replacement is stale (its temporary and its rename
    /// to the backup 10 s old), and `name.bak`, what Baileys then reads, restores.
    @Test func aReplacementLeftHalfDoneIsADeletionOnceItIsStale() async throws {
        let (workspace, runner, agent) = try await watching(["--quiet-period", "100ms"])
        let baileys = BaileysDirectory(workspace.session("baileys-registered"))
        let original = try readBytes(baileys.path("creds.json"))
        try write(try baileys.creds(version: 1), to: baileys.path("creds.json.tmp"))
        try baileys.rename("creds.json", to: "creds.json.bak")

        let restored = try await workspace.waitUntilStoreMatches(runner, ignoring: ["creds.json.tmp"], agent: agent)
        #expect(!FileManager.default.fileExists(atPath: "\(restored)/baileys-registered/creds.json"))
        #expect(try readBytes("\(restored)/baileys-registered/creds.json.bak") == original)
        #expect(try await agent.terminate() == .exited(0))
    }

    /// `keys.set({type: {id: null}})` deletes `name`, `name.tmp` and `name.bak`.
    @Test func aNullWriteDeletesTheKeyFileAndItsBackup() async throws {
        let (workspace, runner, agent) = try await watching(["--quiet-period", "100ms"])
        let baileys = BaileysDirectory(workspace.session("baileys-registered"))
        let name = "session-15550125734.0.json"
        _ = try baileys.writeData(#"{"type":"Buffer","data":"AQID"}"#, to: name)
        let restoredWithBackup = try await workspace.waitUntilStoreMatches(runner, agent: agent)
        #expect(FileManager.default.fileExists(atPath: "\(restoredWithBackup)/baileys-registered/\(name).bak"))

        try baileys.removeData(name)
        let restored = try await workspace.waitUntilStoreMatches(runner, agent: agent)
        #expect(!FileManager.default.fileExists(atPath: "\(restored)/baileys-registered/\(name)"))
        #expect(!FileManager.default.fileExists(atPath: "\(restored)/baileys-registered/\(name).bak"))
        #expect(try await agent.terminate() == .exited(0))
    }

    /// How `watch` is timed for `aSnapshotNeverHoldsPartOfATransaction`, and the gaps between
    /// transactions: shorter than the quiet period (so every snapshot comes from `--max-delay`,
    /// cut while the session is written) and longer than the pause a snapshot waits for
    /// (`--write-pause`).
    enum TransactionTiming: String, CaseIterable, CustomTestStringConvertible {
        /// The agent's defaults (quiet period and max delay 250 ms, pause 75 ms).
        case defaults
        /// Three times what the agent needs: a transaction's own writes can be held up for a few
        /// hundred milliseconds on a loaded machine, which the agent would rightly take for the
        /// quiet after a transaction.
        case stretched

        var options: [String] {
            switch self {
            case .defaults: []
            case .stretched: ["--quiet-period", "900ms", "--max-delay", "3s", "--write-pause", "450ms"]
            }
        }

        var gapMilliseconds: ClosedRange<Int> {
            switch self {
            case .defaults: 120...220
            case .stretched: 510...810
            }
        }

        var testDescription: String { rawValue }
    }

    /// One `keys.set` of a few dozen files (a transaction: every `.tmp` written, then the renames),
    /// with `creds.json` written on its own between them: no snapshot holds part of a transaction.
    @Test(arguments: TransactionTiming.allCases)
    func aSnapshotNeverHoldsPartOfATransaction(_ timing: TransactionTiming) async throws {
        let (workspace, runner, agent) = try await watching(timing.options)
        let baileys = BaileysDirectory(workspace.session("baileys-registered"))
        let names = (1...36).map { "sender-key-120363000000000001@g.us--1555010\(String(format: "%04d", $0)).0.json" }
        var random = SplitMix64(seed: 15)
        for transaction in 1...15 {
            let contents = #"{"type":"Buffer","data":"\#(Data("transaction \(transaction)".utf8).base64EncodedString())"}"#
            // As Baileys, a process of its own, writes it: on a thread of its own, within milliseconds
            // (the cooperative pool can be held by other tests for longer than the pause).
            try await runBlocking { () throws -> Void in
                try baileys.set(names.map { ($0, contents) })
                if transaction.isMultiple(of: 3) { _ = try baileys.writeData(try baileys.creds(version: transaction), to: "creds.json") }
            }
            try await Task.sleep(for: .milliseconds(Int.random(in: timing.gapMilliseconds, using: &random)))
        }
        _ = try await workspace.waitUntilStoreMatches(runner, agent: agent)

        var transactions: Set<String> = []
        try await expectEverySnapshot(of: "baileys-registered", agent: agent, runner: runner, workspace: workspace) { snapshot, files in
            let versions = names.map { files[$0].map { String(decoding: $0, as: UTF8.self) } ?? "absent" }
            let held = Set(versions)
            #expect(held.count == 1, "snapshot \(snapshot) holds parts of \(held.count) transactions: \(versions)")
            let backups = Set(names.map { files[$0 + ".bak"].map { String(decoding: $0, as: UTF8.self) } ?? "absent" })
            #expect(backups.count == 1, "a snapshot holds the backups of \(backups.count) transactions")
            transactions.formUnion(held)
        }
        // Not one snapshot for the whole run: the check above looked at transactions in between.
        #expect(transactions.count > 2, "\(transactions)")
        #expect(try await agent.terminate() == .exited(0))
    }

    // MARK: - Support

    /// A workspace with the Baileys-shaped fixture session, and `watch` on a local store, its
    /// first upload done.
    private func watching(_ options: [String]) async throws -> (Workspace, SyncAgentRunner, RunningAgent) {
        let workspace = try Workspace(sessions: ["baileys-registered"])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let agent = try runner.watch(workspace.sessions, options)
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        return (workspace, runner, agent)
    }

    /// Restores each snapshot of `session` the agent committed, and hands its files to `check`.
    private func expectEverySnapshot(
        of session: String, agent: RunningAgent, runner: SyncAgentRunner, workspace: Workspace,
        _ check: (_ snapshot: String, _ files: [String: [UInt8]]) throws -> Void
    ) async throws {
        let snapshots = agent.uploads.filter { $0.session == session }.map(\.snapshot)
        #expect(snapshots.count >= 2, "\(agent.log)")
        for snapshot in snapshots {
            let target = try workspace.freshDirectory()
            try await runner.restore(into: target, ["--snapshot", snapshot, session])
            try check(snapshot, try directoryTree("\(target)/\(session)"))
        }
    }
}

/// A session directory written the way Baileys' `useMultiFileAuthState` writes it since its atomic
/// writes: each value to `name.tmp`, the previous `name` renamed to `name.bak`, then `name.tmp`
/// renamed to `name`; a null value unlinks all three.
struct BaileysDirectory {
    let directory: String

    init(_ directory: String) { self.directory = directory }

    func path(_ name: String) -> String { "\(directory)/\(name)" }

    /// `writeData`; returns the bytes written.
    @discardableResult
    func writeData(_ text: String, to name: String) throws -> [UInt8] {
        let bytes = Array(text.utf8)
        try write(bytes: bytes, to: path(name + ".tmp"))
        try rotate(name)
        return bytes
    }

    /// `keys.set` of several files: every temporary first, then the renames.
    func set(_ values: [(name: String, text: String)]) throws {
        for (name, text) in values { try write(bytes: Array(text.utf8), to: path(name + ".tmp")) }
        for (name, _) in values { try rotate(name) }
    }

    /// `removeData`: a null value.
    func removeData(_ name: String) throws {
        for path in [path(name), path(name + ".tmp"), path(name + ".bak")] where unlink(path) != 0 && errno != ENOENT {
            throw ProgramFailure("cannot unlink \(path): \(String(cString: strerror(errno)))")
        }
    }

    func rename(_ name: String, to other: String) throws {
        guard Glibc.rename(path(name), path(other)) == 0 else {
            throw ProgramFailure("cannot rename \(name) to \(other): \(String(cString: strerror(errno)))")
        }
    }

    private func rotate(_ name: String) throws {
        if access(path(name), F_OK) == 0 { try rename(name, to: name + ".bak") }
        try rename(name + ".tmp", to: name)
    }

    /// The fixture's registered creds.json with a counter Baileys changes at every save.
    func creds(version: Int) throws -> String {
        let fixture = String(decoding: try readBytes("\(Workspace.fixtures)/baileys-registered/creds.json"), as: UTF8.self)
        return fixture.replacingOccurrences(of: #""accountSyncCounter":1"#, with: #""accountSyncCounter":\#(version + 1)"#)
    }
}
