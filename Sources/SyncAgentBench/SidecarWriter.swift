import ArgumentParser
import Foundation
import S3Client
import Synchronization
import SystemSupport

/// The writer of `bench/sidecar`: rewrites files of the sessions under a root the way Baileys
/// does (open with O_TRUNC, write, close; no fsync, no rename) at a fixed total rate, and
/// records when each close returned (CLOCK_REALTIME), so the script can measure the lag from
/// a close to the snapshot holding it being durable in the store.
///
/// With `--history` it also records every change before making it (the crash-loop tests check
/// each snapshot against it), and SIGTERM stops it between two writes, never inside one, so
/// the tests can run it for as long as they need and stop it with every file whole.
///
/// Each write picks a session and a kind at random (seeded, so a run can be repeated): mostly
/// small session and pre-key files, sometimes creds.json, occasionally a new pre-key or a
/// deleted one. A rewrite keeps the file's JSON shape and size and draws new random keys:
/// the file stays valid JSON (the agent refuses JSON that does not parse), really changes,
/// and compresses like the real thing.
struct SidecarWriter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sidecar-writer",
        abstract: "Baileys-like writes across the sessions under a root, at a fixed rate; logs each close.")

    @Option(help: "Sessions root: one directory per session.") var root: String
    @Option(help: "Writes per second, all sessions together.") var rate = 100.0
    @Option(help: "How long to write, in seconds.") var seconds = 60.0
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Where to write the log: one line per write, realtime_ns TAB session TAB kind TAB bytes.")
    var log: String
    @Option(help: ArgumentHelp(
        "Also append every change to FILE as it is made, before the file changes: session TAB name TAB the new content's SHA-256 in hex, or - for a deletion.",
        valueName: "file"))
    var history: String?

    func run() throws {
        // Caught, so a SIGTERM is seen between two writes.
        signal(SIGTERM) { _ in stopRequested.store(true, ordering: .relaxed) }
        var random = SplitMix64(seed: seed)
        let recorder = try history.map { try HistoryRecorder(path: $0) }
        var sessions = try FileManager.default.contentsOfDirectory(atPath: root).sorted()
            .filter { !$0.hasPrefix(".") }
            .map { try SessionFileSet(directory: "\(root)/\($0)", id: $0, history: recorder) }
        guard !sessions.isEmpty else { throw ValidationError("no session directories under \(root)") }

        var lines: [String] = []
        let count = Int(rate * seconds)
        lines.reserveCapacity(count)
        let start = monotonicNanoseconds()
        var late = 0
        var written = 0
        for index in 0..<count {
            if stopRequested.load(ordering: .relaxed) { break }
            let deadline = start + UInt64(Double(index) * 1e9 / rate)
            if monotonicNanoseconds() > deadline + 50_000_000 { late += 1 }
            sleep(untilMonotonic: deadline)
            let which = Int(random.next() % UInt64(sessions.count))
            let (kind, bytes) = try sessions[which].writeOne(using: &random)
            lines.append("\(realtimeNanoseconds())\t\(sessions[which].id)\t\(kind)\t\(bytes)")
            written += 1
        }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        try (lines.joined(separator: "\n") + "\n").write(toFile: log, atomically: false, encoding: .utf8)
        print("sidecar-writer: \(written) writes in \(String(format: "%.1f", elapsed)) s, \(late) more than 50 ms late")
    }
}

/// The files of one session by kind, kept current as pre-keys are created and deleted.
private struct SessionFileSet {
    let directory: String
    let id: String
    var sessionRecords: [String] = []
    var preKeys: [String] = []
    var senderKeys: [String] = []
    var appStateVersions: [String] = []
    var nextPreKeyID = 0
    let history: HistoryRecorder?

    init(directory: String, id: String, history: HistoryRecorder?) throws {
        self.directory = directory
        self.id = id
        self.history = history
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() {
            if name.hasPrefix("session-") { sessionRecords.append(name) }
            else if name.hasPrefix("pre-key-") {
                preKeys.append(name)
                let number = Int(name.dropFirst("pre-key-".count).dropLast(".json".count)) ?? 0
                nextPreKeyID = max(nextPreKeyID, number + 1)
            }
            else if name.hasPrefix("sender-key-"), !name.hasPrefix("sender-key-memory-") { senderKeys.append(name) }
            else if name.hasPrefix("app-state-sync-version-") { appStateVersions.append(name) }
        }
    }

    /// One write: returns its kind and the bytes written (0 for a deletion).
    mutating func writeOne(using random: inout SplitMix64) throws -> (String, Int) {
        let roll = random.next() % 100
        func pick(_ names: [String]) -> String? { names.isEmpty ? nil : names[Int(random.next() % UInt64(names.count))] }
        switch roll {
        case 0..<45: if let name = pick(sessionRecords) { return ("session", try rewrite(name, &random)) }
        case 45..<67: if let name = pick(preKeys) { return ("pre-key", try rewrite(name, &random)) }
        case 67..<77: if let name = pick(senderKeys) { return ("sender-key", try rewrite(name, &random)) }
        case 77..<85: if let name = pick(appStateVersions) { return ("app-state", try rewrite(name, &random)) }
        case 85..<93: return ("creds", try rewrite("creds.json", &random))
        case 93..<97:
            let name = "pre-key-\(nextPreKeyID).json"
            nextPreKeyID += 1
            preKeys.append(name)
            let keyPair = "{\"private\":{\"type\":\"Buffer\",\"data\":\"\(base64(32, &random))\"},"
                + "\"public\":{\"type\":\"Buffer\",\"data\":\"\(base64(32, &random))\"}}"
            return ("new-pre-key", try put(Array(keyPair.utf8), name))
        default:
            // Baileys deletes a pre-key once it is used; the oldest go first.
            if preKeys.count > 1 {
                let name = preKeys.removeFirst()
                try history?.record(session: id, name: name, content: nil)
                guard unlink("\(directory)/\(name)") == 0 else { throw POSIXFailure("unlink \(name)") }
                return ("delete", 0)
            }
        }
        return ("creds", try rewrite("creds.json", &random))
    }

    /// Same JSON, new random characters in every string that is a key (20 or more base64
    /// characters), as Baileys re-serialises a record after a ratchet step.
    private func rewrite(_ name: String, _ random: inout SplitMix64) throws -> Int {
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name)")))
        var index = 0
        while index < bytes.count {
            guard bytes[index] == UInt8(ascii: "\"") else { index += 1; continue }
            var end = index + 1
            var isKey = true
            while end < bytes.count, bytes[end] != UInt8(ascii: "\"") {
                if bytes[end] == UInt8(ascii: "\\") { isKey = false; end += 1 }
                else if !base64Alphabet.contains(bytes[end]), bytes[end] != UInt8(ascii: "=") { isKey = false }
                end += 1
            }
            if isKey, end - index - 1 >= 20 {
                for position in index + 1..<end where bytes[position] != UInt8(ascii: "=") {
                    bytes[position] = base64Alphabet[Int(random.next() % 64)]
                }
            }
            index = end + 1
        }
        return try put(bytes, name)
    }

    /// Baileys' fs.writeFile: open with O_TRUNC, write, close; no fsync.
    private func put(_ bytes: [UInt8], _ name: String) throws -> Int {
        try history?.record(session: id, name: name, content: bytes)
        let descriptor = open("\(directory)/\(name)", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw POSIXFailure("open \(name)") }
        defer { close(descriptor) }
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw POSIXFailure("write \(name)") }
        return written
    }
}

/// The `--history` file: one line per change, each written with one write(2) before the change is
/// made, so whatever a reader finds in a session directory is already in it.
private final class HistoryRecorder {
    let descriptor: Int32

    init(path: String) throws {
        descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw POSIXFailure("open \(path)") }
    }

    deinit { close(descriptor) }

    /// `content` nil: the file is deleted.
    func record(session: String, name: String, content: [UInt8]?) throws {
        let version = content.map { SHA256.hash($0).lowercaseHex } ?? "-"
        let line = Array("\(session)\t\(name)\t\(version)\n".utf8)
        let written = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        guard written == line.count else { throw POSIXFailure("write the history") }
    }
}

/// Set by the SIGTERM handler (an atomic store is async-signal-safe).
private let stopRequested = Atomic<Bool>(false)

private let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

private func base64(_ count: Int, _ random: inout SplitMix64) -> String {
    Data((0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }).base64EncodedString()
}

private struct POSIXFailure: Error, CustomStringConvertible {
    let description: String
    init(_ what: String) { description = "\(what): \(String(cString: strerror(errno)))" }
}

/// A small seeded generator, so the same seed gives the same workload.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private func monotonicNanoseconds() -> UInt64 { clockNanoseconds(CLOCK_MONOTONIC) }
private func realtimeNanoseconds() -> UInt64 { clockNanoseconds(CLOCK_REALTIME) }

private func clockNanoseconds(_ clock: clockid_t) -> UInt64 {
    var now = timespec()
    clock_gettime(clock, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

private func sleep(untilMonotonic deadline: UInt64) {
    var target = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &target, nil) == EINTR {}
}
