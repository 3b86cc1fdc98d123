import Foundation
import FoundationNetworking
import Glibc
import SystemSupport
import Testing
#if canImport(FoundationNetworking)
#endif

/// Runs the real `sync-agent` binary, which SwiftPM builds next to the test bundle.
public struct SyncAgentRunner: Sendable {
    /// Flags and environment naming the store (mode, bucket, endpoint, credentials, key).
    public var storeArguments: [String]
    public var environment: [String: String]
    /// Where each run leaves its standard output and error.
    public let logDirectory: String
    /// The umask the program starts with (through /bin/sh), when not the test process's own.
    public var umask: mode_t?
    /// Runs the program as the test process's own user (root in CI) rather than as `AgentUser`:
    /// only for a test that needs root, which says why.
    public var runsAsTestUser = false
    /// A command the program runs under, which ends by executing its arguments (`unshare …`); it
    /// runs as `AgentUser` too, unless `runsAsTestUser`.
    public var launcher: [String] = []

    public init(storeArguments: [String], environment: [String: String], logDirectory: String) {
        self.storeArguments = storeArguments
        self.environment = environment
        self.logDirectory = logDirectory
    }

    /// `--mode cloud` on an S3 server, with a new encryption key.
    public static func cloud(
        endpoint: String, bucket: String, accessKey: String, secretKey: String, logDirectory: String
    ) async throws -> SyncAgentRunner {
        SyncAgentRunner(
            storeArguments: ["--mode", "cloud", "--bucket", bucket, "--endpoint", endpoint],
            environment: [
                "SESSION_ENCRYPTION_KEY": try await newEncryptionKey(logDirectory: logDirectory),
                "AWS_ACCESS_KEY_ID": accessKey, "AWS_SECRET_ACCESS_KEY": secretKey,
            ],
            logDirectory: logDirectory)
    }

    /// `--mode local` on a filesystem store (its key kept in the store).
    public static func local(store: String, logDirectory: String) -> SyncAgentRunner {
        SyncAgentRunner(storeArguments: ["--mode", "local", "--local-store", store], environment: [:], logDirectory: logDirectory)
    }

    public static var binaryPath: String {
        get throws { try builtProgram("sync-agent", override: "SYNC_AGENT_BINARY") }
    }

    /// `sync-agent-bench`, for its Baileys-like `sidecar-writer`.
    public static var benchBinaryPath: String {
        get throws { try builtProgram("sync-agent-bench", override: "SYNC_AGENT_BENCH_BINARY") }
    }

    private static func builtProgram(_ name: String, override variable: String) throws -> String {
        if let path = ProcessInfo.processInfo.environment[variable] { return path }
        // The test bundle (an executable on Linux) sits in .build/<triple>/debug beside the programs.
        let bundle = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        let path = bundle.deletingLastPathComponent().appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw ProgramFailure("no \(name) binary at \(path): build it (swift build) or set \(variable)")
        }
        return path
    }

    /// The test runner's environment without anything the agent reads, plus `extra`.
    public static func cleanEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
        let read = ["SESSION_", "STORAGE_", "SESSIONS_DIR", "SYNC_AGENT_", "AWS_", "MINIO_", "GRACEFUL_SHUTDOWN_TIMEOUT"]
        var environment = ProcessInfo.processInfo.environment.filter { name, _ in !read.contains { name.hasPrefix($0) } }
        environment.merge(extra) { $1 }
        return environment
    }

    public static func newEncryptionKey(logDirectory: String) async throws -> String {
        let keygen = try AgentUser.command(try binaryPath, ["keygen"])
        let result = try await ChildProcess.run(
            keygen.executable, keygen.arguments, environment: cleanEnvironment(), outputIn: logDirectory)
        guard result.termination == .exited(0) else { throw ProgramFailure("keygen: \(result.standardError)") }
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts `sync-agent watch` on `sessionsDirectory` with these store options plus `options`.
    /// Its endpoint listens on a port of its own (tests run in parallel) unless `options` say where.
    public func watch(_ sessionsDirectory: String, _ options: [String] = []) throws -> RunningAgent {
        let listen = options.contains { $0 == "--listen" || $0 == "--no-listen" } ? [] : ["--listen", "127.0.0.1:0"]
        return RunningAgent(try start("watch", ["--sessions-dir", sessionsDirectory] + listen + options), secrets: secrets)
    }

    /// Runs another subcommand (`restore`, `backup`) to its end, reading `standardInput` (a file).
    /// Fails if its output holds a secret.
    public func run(_ subcommand: String, _ arguments: [String], standardInput: String = "/dev/null") async throws
        -> (termination: Termination, standardOutput: String, standardError: String)
    {
        let process = try start(subcommand, arguments, standardInput: standardInput)
        let termination = try await process.waitForExit(timeout: .seconds(120))
        let (standardOutput, standardError) = (process.standardOutput, process.standardError)
        let leaks = SecretScan.leaks(in: standardOutput + standardError, secrets: secrets)
        guard leaks.isEmpty else { throw ProgramFailure("\(subcommand) printed \(leaks.joined(separator: ", "))") }
        return (termination, standardOutput, standardError)
    }

    /// Starts another subcommand, for a test that kills it or waits for it itself. A `restore`
    /// acquires only when the test names the agent it restores for (`--agent-id`): the suite's
    /// other restores look at what the store holds, into directories of their own, beside a
    /// `watch` running or killed, as an operator restores with `--no-acquire`.
    public func start(_ subcommand: String, _ arguments: [String], standardInput: String = "/dev/null") throws -> ChildProcess {
        let name = "\(subcommand)-\(randomHex(4))"
        let acquiring = subcommand != "restore" || arguments.contains("--agent-id") ? [] : ["--no-acquire"]
        var (executable, programArguments) = (try Self.binaryPath, [subcommand] + storeArguments + acquiring + arguments)
        if let umask {
            (executable, programArguments) = ("/bin/sh", ["-c", #"umask "$0" && exec "$@""#, String(umask, radix: 8), executable] + programArguments)
        }
        if let command = launcher.first {
            (executable, programArguments) = (command, launcher.dropFirst() + [executable] + programArguments)
        }
        if !runsAsTestUser {
            for path in Self.pathsOwned(in: programArguments) { try AgentUser.handOver(path) }
            (executable, programArguments) = try AgentUser.command(executable, programArguments)
        }
        return try ChildProcess(
            executable, programArguments, environment: Self.cleanEnvironment(Self.suiteDefaults.merging(environment) { $1 }),
            standardInput: standardInput,
            standardOutput: "\(logDirectory)/\(name).out", standardError: "\(logDirectory)/\(name).err")
    }

    /// What every run gets unless the runner's environment says otherwise: most of the suite's
    /// sessions hold files that are not Baileys' (a `creds.json` of `{"a":1}`), which the default
    /// session format would refuse to restore; the tests of that format pass `--session-format baileys`.
    static let suiteDefaults = ["SYNC_AGENT_SESSION_FORMAT": "opaque"]

    /// The directories and files the agent works in, which its user must own as in production.
    private static func pathsOwned(in arguments: [String]) -> [String] {
        zip(arguments, arguments.dropFirst()).compactMap { option, value in
            ["--sessions-dir", "--local-store", "--key-file"].contains(option) ? value : nil
        }
    }

    /// What must never appear in the agent's output: the keys and the S3 secret it was given,
    /// and in local mode the key it keeps in its store (read when scanned: it may not exist yet).
    public var secrets: SecretScan.Secrets {
        var values = [environment["SESSION_ENCRYPTION_KEY"], environment["AWS_SECRET_ACCESS_KEY"]].compactMap { $0 }
        // SESSION_ENCRYPTION_KEY may hold several keys.
        values += values.flatMap { $0.split(whereSeparator: { ",; \n".contains($0) }).map(String.init) }
        let keyFile = storeArguments.firstIndex(of: "--local-store").map { storeArguments[$0 + 1] + "/.sync-agent-key" }
        return SecretScan.Secrets(values: values, keyFile: keyFile)
    }

    /// `restore --all` (or the given arguments) into `sessionsDirectory`; fails unless it exits 0.
    public func restore(into sessionsDirectory: String, _ arguments: [String] = ["--all"]) async throws {
        let result = try await run("restore", ["--sessions-dir", sessionsDirectory] + arguments)
        guard result.termination == .exited(0) else {
            throw ProgramFailure("restore \(arguments) ended with \(result.termination): \(result.standardError)")
        }
    }
}

/// A running `sync-agent watch`, its log on standard error.
public final class RunningAgent: Sendable {
    public let process: ChildProcess
    private let secrets: SecretScan.Secrets

    init(_ process: ChildProcess, secrets: SecretScan.Secrets) {
        self.process = process
        self.secrets = secrets
    }

    /// Every agent a test started has its whole output scanned once the test lets go of it:
    /// no test can forget to, and a leak fails the test that made it.
    deinit {
        let leaks = SecretScan.leaks(in: process.standardOutput + log, secrets: secrets)
        if !leaks.isEmpty {
            Issue.record("the agent's output holds \(leaks.joined(separator: ", ")): \(process.standardErrorPath)")
        }
    }

    public var log: String { process.standardError }
    public var logLines: [String] { log.split(separator: "\n").map(String.init) }

    /// The agent's "uploaded" lines, oldest first.
    public var uploads: [UploadLine] { logLines.compactMap(UploadLine.init) }

    /// Waits for a log line containing `text`, failing early if the agent exits.
    public func waitForLog(_ text: String, count: Int = 1, timeout: Duration = .seconds(60)) async throws {
        try await waitUntil(timeout: timeout, "no \(count)× \"\(text)\" in the agent's log:\n\(log)") {
            if log.components(separatedBy: text).count - 1 >= count { return true }
            if let ended = process.exitStatus { throw ProgramFailure("the agent ended (\(ended)) early; its log:\n\(log)") }
            return false
        }
    }

    /// Waits for the agent to be watching with its start-up comparison done: every session
    /// under the root uploaded or found unchanged (`uploadedAtStart` upload lines).
    public func waitUntilWatching(uploadedAtStart: Int = 0, timeout: Duration = .seconds(60)) async throws {
        try await waitForLog("rescanning every session", timeout: timeout)
        if uploadedAtStart > 0 { try await waitForLog("] uploaded", count: uploadedAtStart, timeout: timeout) }
    }

    /// The endpoint's base URL ("http://127.0.0.1:PORT"), from the "watching" line.
    public func endpoint() async throws -> String {
        try await waitForLog("watching")
        guard let line = logLines.first(where: { $0.contains("endpoint=http://") || $0.contains("\"endpoint\":\"http://") }),
              let start = line.range(of: "http://")
        else { throw ProgramFailure("the agent names no endpoint: \(log)") }
        return String(line[start.lowerBound...].prefix { !" \",".contains($0) })
    }

    /// SIGTERM, then the exit status.
    public func terminate(timeout: Duration = .seconds(60)) async throws -> Termination {
        process.send(SIGTERM)
        return try await process.waitForExit(timeout: timeout)
    }
}

/// One `info sync-agent.watch: … uploaded` line.
public struct UploadLine: Sendable, Equatable {
    public var session: String
    public var snapshot: String
    public var kind: String
    public var bytes: Int

    public init?(_ line: String) {
        guard line.hasSuffix("] uploaded") else { return nil }
        var fields: [String: String] = [:]
        for token in line.split(separator: " ") {
            guard let equals = token.firstIndex(of: "=") else { continue }
            fields[String(token[..<equals])] = String(token[token.index(after: equals)...])
        }
        guard let session = fields["session"], let snapshot = fields["snapshot"], let kind = fields["kind"],
              let bytes = fields["bytes"].flatMap(Int.init)
        else { return nil }
        (self.session, self.snapshot, self.kind, self.bytes) = (session, snapshot, kind, bytes)
    }
}

/// Finds secrets in a program's output: the values it was given, and the parts of a signed S3
/// request that must stay on the wire (an Authorization header, a signature).
public enum SecretScan {
    public struct Secrets: Sendable {
        public var values: [String]
        /// A key file to read at scan time.
        public var keyFile: String?

        public init(values: [String], keyFile: String?) {
            self.values = values
            self.keyFile = keyFile
        }
    }

    static let requestSecrets = ["Authorization:", "AWS4-HMAC-SHA256 Credential", "Signature=", "X-Amz-Signature"]

    /// Names of what leaked (never the values), empty when nothing did.
    public static func leaks(in text: String, secrets: Secrets) -> [String] {
        var values = secrets.values
        if let keyFile = secrets.keyFile, let key = try? String(contentsOfFile: keyFile, encoding: .utf8) {
            values += key.split(separator: "\n").map(String.init)
        }
        var leaks = values.filter { $0.count >= 8 && text.contains($0) }.isEmpty ? [] : ["a key or secret it was given"]
        leaks += requestSecrets.filter { text.range(of: $0, options: .caseInsensitive) != nil }
        return leaks
    }
}

/// GET `url`: the status and the body as text.
public func httpGet(_ url: String) async throws -> (status: Int, body: String) {
    var request = URLRequest(url: URL(string: url)!)
    request.timeoutInterval = 10
    let (data, response) = try await URLSession.shared.data(for: request)
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// An agent's `/sessions`, by session id.
public func sessionStatuses(_ endpoint: String) async throws -> [String: [String: Any]] {
    let (status, body) = try await httpGet("\(endpoint)/sessions")
    guard status == 200, let report = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
          let sessions = report["sessions"] as? [[String: Any]]
    else { throw ProgramFailure("/sessions answered \(status): \(body)") }
    return Dictionary(uniqueKeysWithValues: sessions.map { ($0["sessionId"] as? String ?? "", $0) })
}
