import Foundation
import Glibc
import S3Client
import SystemSupport

/// `sync-agent-bench sidecar-writer` as a child process: Baileys-like rewrites, new pre-keys and
/// deletions across every session under a root (Sources/SyncAgentBench/SidecarWriter.swift),
/// its log, output and history of changes in `logs`.
public final class SidecarWriterProcess: Sendable {
    public let process: ChildProcess
    /// Every change it made, in order, recorded before the change (see `WriterHistory`).
    public let historyPath: String

    /// Writes `rate` times a second for `seconds`, or until `stop()`. Runs as the agent's user,
    /// as Baileys does beside the agent in production: the private files it makes are the agent's.
    public init(root: String, rate: Int, seconds: Int = 3600, seed: UInt64, logs: String) throws {
        historyPath = "\(logs)/writer-history.tsv"
        try AgentUser.handOver(root)
        try AgentUser.handOver(logs)
        let command = try AgentUser.command(
            try SyncAgentRunner.benchBinaryPath,
            ["sidecar-writer", "--root", root, "--rate", "\(rate)", "--seconds", "\(seconds)", "--seed", "\(seed)",
             "--log", "\(logs)/writer.tsv", "--history", historyPath])
        process = try ChildProcess(
            command.executable, command.arguments,
            environment: SyncAgentRunner.cleanEnvironment(),
            standardOutput: "\(logs)/writer.out", standardError: "\(logs)/writer.err")
    }

    /// Waits for the writer to end; it must have exited 0.
    public func waitForExit(timeout: Duration = .seconds(60)) async throws {
        let termination = try await process.waitForExit(timeout: timeout)
        guard termination == .exited(0) else {
            throw ProgramFailure("the sidecar writer ended with \(termination): \(process.standardError)")
        }
    }

    /// SIGTERM, which the writer takes between two writes: every file is left whole.
    public func stop() async throws {
        process.send(SIGTERM)
        try await waitForExit()
    }
}

/// What the sidecar writer's history says each file of each session held, in order: the states
/// the directory really went through. Starts from the directory as it was before the writer
/// started and reads the history as the writer appends to it.
public final class WriterHistory {
    /// Session → file name → the file's states in order: a content's SHA-256 in hex, nil while
    /// the file does not exist (before it is created, after it is deleted).
    private var timelines: [String: [String: [String?]]] = [:]
    private let path: String
    private var offset: UInt64 = 0
    private var partialLine: [UInt8] = []

    /// `sessionsRoot` as it is now, before the writer starts; `path` the writer's history file.
    public init(sessionsRoot: String, path: String) throws {
        self.path = path
        for session in try FileManager.default.contentsOfDirectory(atPath: sessionsRoot) where !session.hasPrefix(".") {
            let directory = "\(sessionsRoot)/\(session)"
            for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
                guard let data = FileManager.default.contents(atPath: "\(directory)/\(name)") else {
                    throw ProgramFailure("cannot read \(directory)/\(name)")
                }
                timelines[session, default: [:]][name] = [SHA256.hash(data).lowercaseHex]
            }
        }
    }

    /// Takes in whatever the writer appended since the last call.
    public func catchUp() throws {
        guard let file = FileHandle(forReadingAtPath: path) else { return }  // not created yet
        defer { try? file.close() }
        try file.seek(toOffset: offset)
        let appended = try file.readToEnd() ?? Data()
        offset += UInt64(appended.count)
        partialLine += appended
        guard let lastNewline = partialLine.lastIndex(of: UInt8(ascii: "\n")) else { return }
        for line in partialLine[...lastNewline].split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: "\t")).map { String(decoding: $0, as: UTF8.self) }
            guard fields.count == 3 else { throw ProgramFailure("a malformed line in \(path): \(fields)") }
            let (session, name) = (fields[0], fields[1])
            timelines[session, default: [:]][name, default: [nil]].append(fields[2] == "-" ? nil : fields[2])
        }
        partialLine.removeSubrange(...lastNewline)
    }

    /// Places a session's files as a snapshot holds them in its history, no earlier than
    /// `notBefore` (the positions of the previous placement): returns each file's position
    /// (absent files included), or what was never a state of the file or went back in time.
    public func place(_ files: [String: [UInt8]], session: String, notBefore: [String: Int])
        -> Result<[String: Int], PlacementFailure>
    {
        let known = timelines[session] ?? [:]
        var problems = Set(files.keys).subtracting(known.keys).sorted().map { "\($0) never existed" }
        var positions: [String: Int] = [:]
        for (name, states) in known {
            let state = files[name].map { SHA256.hash($0).lowercaseHex }
            let earliest = notBefore[name] ?? 0
            let matching = states.indices.filter { states[$0] == state }
            if let position = matching.first(where: { $0 >= earliest }) {
                positions[name] = position
            } else if let older = matching.last {
                problems.append("\(name) went back from state \(earliest) to \(older) of \(states.count)")
            } else {
                problems.append(state == nil ? "\(name) is missing though it always existed" : "\(name) holds content never written whole")
            }
        }
        return problems.isEmpty ? .success(positions) : .failure(PlacementFailure(problems: problems.sorted()))
    }

    public struct PlacementFailure: Error, CustomStringConvertible {
        public let problems: [String]
        public var description: String { problems.joined(separator: "; ") }
    }
}
