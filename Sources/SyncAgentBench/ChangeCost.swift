import ArgumentParser
import Foundation
import Logging
import S3Client
import S3Store
import SessionCrypto
import SyncEngine

/// The driver of `bench/instructions`: one session replicated through `SessionReplicator`, the
/// agent's own path, against a store given as a local directory or an S3 bucket. Each phase is
/// one process, so the script can run it under callgrind and subtract a baseline phase:
///
/// - `base`: claims the session and writes its first base (the setup, run without callgrind);
/// - `claim`: claims it again and loads its state, and nothing else (the baseline of `changes`);
/// - `changes`: the same claim, then the fixed sequence of `changeSequence` (one upload each);
/// - `open`: reads the session's head, and nothing else (the baseline of `restore`);
/// - `restore`: restores the session into an empty directory (download, verify, swap).
///
/// Everything is fixed: the key, the contents written (seeded), the files changed. Only the
/// snapshot tags and dates differ between runs, which moves no instruction count measurably.
struct ChangeCost: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "change-cost",
        abstract: "One phase of the fixed change sequence of bench/instructions, against one session.")

    enum Phase: String, ExpressibleByArgument, CaseIterable { case base, claim, changes, open, restore }

    @Option(help: "base, claim, changes, open or restore.") var phase: Phase
    @Option(help: "The session directory (its last component is the session id).") var session: String
    @Option(help: "Local store directory.") var localStore: String?
    @Option(help: "S3 endpoint (with --bucket), instead of --local-store.") var endpoint: String?
    @Option(help: "Bucket.") var bucket: String?
    @Option(help: "Key prefix in the bucket.") var prefix = ""
    @Option(help: "restore: the sessions root restored into.") var restoreRoot: String?

    /// A fixed key: the same ciphertext sizes, so the same work, in every run.
    static let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

    /// The change sequence: 20 rewrites of one file, one upload each; one burst of 30 new files
    /// in one upload (one Baileys transaction); one deletion. Names every session has or none
    /// does, so the same changes apply at every session size.
    static let rewrites = 20
    static let burst = (0..<30).map { "pre-key-bench-\($0).json" }

    func run() async throws {
        var logger = Logger(label: "change-cost")
        logger.logLevel = .error
        let sessionStore = SessionStore(
            store: try store(), keyring: Keyring(primary: try EncryptionKey(parsing: Self.key)))
        let directory = URL(fileURLWithPath: session).standardizedFileURL.path
        guard let id = SessionID(URL(fileURLWithPath: directory).lastPathComponent) else {
            throw ValidationError("not a session id: \(directory)")
        }
        func replicator() -> SessionReplicator {
            SessionReplicator(
                session: id, directory: directory, sessionStore: sessionStore, owner: "bench/1/1",
                conditionalWrites: true, logger: logger)
        }
        switch phase {
        case .base:
            guard case .uploaded = try await replicator().sync(forceBase: true) else { throw ValidationError("no base written") }
        case .claim:
            try await replicator().claim()
        case .changes:
            let replicator = replicator()
            try await replicator.claim()
            var uploads = 0
            var random = SplitMix64(seed: 16)
            func upload(_ names: [String]) async throws {
                guard case .uploaded = try await replicator.sync(changedPaths: Set(names)) else {
                    throw ValidationError("a change uploaded nothing")
                }
                uploads += 1
            }
            for _ in 0..<Self.rewrites {
                try Self.content(&random).write(toFile: "\(directory)/creds.json", atomically: false, encoding: .utf8)
                try await upload(["creds.json"])
            }
            for name in Self.burst {
                try Self.content(&random).write(toFile: "\(directory)/\(name)", atomically: false, encoding: .utf8)
            }
            try await upload(Self.burst)
            try FileManager.default.removeItem(atPath: "\(directory)/\(Self.burst[0])")
            try await upload([Self.burst[0]])
            print("uploads \(uploads)")
        case .open:
            _ = try await sessionStore.head(id)
        case .restore:
            guard let restoreRoot else { throw ValidationError("restore needs --restore-root") }
            let outcome = try await SessionRestorer(sessionStore: sessionStore).restore(id, into: restoreRoot)
            print("restored \(outcome.files) files")
        }
    }

    private func store() throws -> any ObjectStore {
        if let localStore { return try FileSystemStore(root: localStore) }
        guard let endpoint, let bucket else { throw ValidationError("give --local-store, or --endpoint and --bucket") }
        let configuration = try S3Configuration.resolve(
            bucket: bucket, endpoint: endpoint, environment: ProcessInfo.processInfo.environment)
        return try S3ObjectStore(client: S3Client(configuration: configuration), prefix: prefix)
    }

    /// A pre-key-like JSON file of about 700 bytes, new random keys each time.
    private static func content(_ random: inout SplitMix64) -> String {
        func key() -> String {
            Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }).base64EncodedString()
        }
        let fields = (0..<8).map { "\"key\($0)\":{\"type\":\"Buffer\",\"data\":\"\(key())\"}" }
        return "{" + fields.joined(separator: ",") + "}"
    }
}
