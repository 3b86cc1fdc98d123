import Foundation
import Testing

/// `Tests/FormatReader/format_reader.py`: a reader of a local store written from FORMAT.md alone,
/// run with the test venv's Python (pynacl, zstandard). It rebuilds one session and checks every
/// content id, manifest and state digest on the way, as FORMAT.md says a reader must.
public struct FormatReader: Sendable {
    public static let scriptPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("FormatReader/format_reader.py").path

    public let store: String
    /// `--key-file PATH` or `--key KEYS`.
    let keyArguments: [String]

    /// A store whose key is in a key file (local mode keeps its own in `<store>/.sync-agent-key`).
    public init(store: String, keyFile: String) {
        self.store = store
        keyArguments = ["--key-file", keyFile]
    }

    /// A store read with these keys, as `SESSION_ENCRYPTION_KEY` spells them.
    public init(store: String, keys: String) {
        self.store = store
        keyArguments = ["--key", keys]
    }

    public struct Result: Sendable {
        /// "restored", "tombstone" or "no-snapshot".
        public var state: String
        /// "SEQUENCE.GENERATION.kind" of each snapshot applied, base first.
        public var chain: [String]
        /// The key id (16 hex digits) that opened each snapshot of `chain`.
        public var keyIDs: [String]
        /// The key ids of the content ids the rebuilt state records, sorted.
        public var stateKeyIDs: [String]
        /// The `formatVersion` of each manifest of `chain`.
        public var formatVersions: [Int]
        /// "SEQUENCE.GENERATION" of the snapshot read.
        public var snapshot: String { chain.last.map { $0.split(separator: ".").prefix(2).joined(separator: ".") } ?? "" }
    }

    /// Rebuilds `session` (as of the head, or of the committed snapshot `SEQUENCE.GENERATION`)
    /// into `directory`, which must not exist; nothing is written unless the state is "restored".
    public func read(_ session: String, into directory: String, snapshot: String? = nil) async throws -> Result {
        let output = try await Self.python(
            [Self.scriptPath, "--store", store, "--session", session, "--out", directory] + keyArguments
                + (snapshot.map { ["--snapshot", $0] } ?? []))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any], "\(output)")
        return Result(
            state: json["state"] as? String ?? "", chain: json["chain"] as? [String] ?? [],
            keyIDs: json["keyIDs"] as? [String] ?? [], stateKeyIDs: json["stateKeyIDs"] as? [String] ?? [],
            formatVersions: json["formatVersions"] as? [Int] ?? [])
    }

    /// The Python of the test venv: where `scripts/test` says (SYNC_AGENT_TEST_TOOLS), else the
    /// repository's `.tools/venv` that `scripts/install-deps` fills, so `swift test` alone works.
    public static func python(_ arguments: [String]) async throws -> String {
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let tools = ProcessInfo.processInfo.environment["SYNC_AGENT_TEST_TOOLS"]
            ?? repository.appendingPathComponent(".tools/venv/bin").path
        return try await runProgram("\(tools)/python", arguments)
    }
}
