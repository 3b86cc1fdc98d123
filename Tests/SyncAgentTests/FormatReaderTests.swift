import Foundation
import TestSupport
import Testing

/// FORMAT.md is enough to read a store: `Tests/FormatReader/format_reader.py`, written from the
/// document alone (Python, pynacl and zstandard from the test venv), rebuilds sessions the real
/// binary backed up and watched, byte for byte, checking every content id and state digest.
@Suite("format reader")
struct FormatReaderTests {
    static let readerPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("FormatReader/format_reader.py").path

    @Test func theKeyDerivationAndWorkedExampleOfFormatMDHold() async throws {
        let output = try await Self.python([Self.readerPath, "--self-test"])
        #expect(output.contains(#""selfTest": "passed""#), "\(output)")
    }

    /// A base (`backup`), deltas (`watch`: a change, a new subdirectory, a deletion) and a
    /// tombstone (a removed session directory); every committed snapshot read again at the end.
    @Test func anIndependentReaderRebuildsEverySnapshotTheAgentWrote() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"], renamedTo: ["medium": "logged-out"])
        let store = try workspace.freshDirectory()
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let reader = Reader(store: store, workspace: workspace)
        var seen: [(session: String, snapshot: String, tree: [String: [UInt8]])] = []
        func expectReaderMatches(_ session: String) async throws {
            let result = try await reader.waitUntilMatches(session, workspace.session(session))
            seen.append((session, result.snapshot, try tree(workspace.session(session))))
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
            try await reader.read("logged-out").state == "tombstone"
        }
        #expect(try await agent.terminate() == .exited(0))

        let chain = try await reader.read("small").chain
        #expect(chain.first?.hasSuffix(".base") == true && chain.dropFirst().allSatisfy { $0.hasSuffix(".delta") }, "\(chain)")
        #expect(chain.count >= 3, "a base and at least two deltas: \(chain)")
        for (session, snapshot, expected) in seen {
            let result = try await reader.read(session, snapshot: snapshot)
            #expect(result.state == "restored")
            #expect(try tree(result.directory) == expected, "\(session) at \(snapshot)")
            try expectPrivateModes(result.directory)
        }
    }

    /// The Python of the test venv.
    static func python(_ arguments: [String]) async throws -> String {
        let tools = try #require(ProcessInfo.processInfo.environment["SYNC_AGENT_TEST_TOOLS"])
        return try await runProgram("\(tools)/python", arguments)
    }

    /// Runs format_reader.py on one session of the store (its key in the store, as local mode keeps it).
    struct Reader {
        let store: String
        let workspace: Workspace

        struct Result {
            var state: String
            /// "SEQUENCE.GENERATION.kind", base first.
            var chain: [String]
            var directory: String
            /// "SEQUENCE.GENERATION" of the snapshot read.
            var snapshot: String { chain.last.map { $0.split(separator: ".").prefix(2).joined(separator: ".") } ?? "" }
        }

        func read(_ session: String, snapshot: String? = nil) async throws -> Result {
            let directory = try workspace.freshDirectory() + "/" + session
            let output = try await FormatReaderTests.python(
                [FormatReaderTests.readerPath, "--store", store, "--key-file", store + "/.sync-agent-key", "--session", session,
                 "--out", directory] + (snapshot.map { ["--snapshot", $0] } ?? []))
            let json = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any], "\(output)")
            return Result(
                state: json["state"] as? String ?? "", chain: json["chain"] as? [String] ?? [], directory: directory)
        }

        /// Reads until the rebuilt session equals `original` (the agent commits a moment after a change).
        func waitUntilMatches(_ session: String, _ original: String) async throws -> Result {
            var last: Result?
            try await waitUntil(timeout: .seconds(60), every: .milliseconds(300), "never matched: \(String(describing: last))") {
                let result = try await read(session)
                last = result
                guard result.state == "restored" else { return false }
                return try tree(result.directory) == tree(original)
            }
            return last!
        }
    }
}
