import Foundation
import Glibc
import TestSupport
import Testing

/// Session directories of any name a directory can have, the real binary: names outside
/// `[A-Za-z0-9._-@+=]` or longer than 200 bytes were skipped with one warning, absent from
/// `/sessions`, with `/readyz` ready and exit 0.
@Suite("session names")
struct SessionNameTests {
    /// The S3 case only where scripts/test started the servers (TestServers).
    static let storesAndSeeds: [(Store, UInt64)] = [(.local, 1), (.local, 2), (.local, 3)] + (TestServers.available ? [(.seaweedFS, 4)] : [])

    enum Store: String, CaseIterable, Sendable {
        case local
        case seaweedFS
    }

    /// Random names of every kind (spaces, non-ASCII letters, newlines and other control
    /// characters, a leading "~", white space at the ends, up to 255 bytes), each a session,
    /// through `backup` and `restore --all`: the same directories under the same names.
    @Test(arguments: storesAndSeeds)
    func randomNamesAreBackedUpAndRestoredExactly(_ store: Store, seed: UInt64) async throws {
        let workspace = try Workspace(sessions: [])
        var random = SplitMix64(seed: seed)
        let names = (0..<8).map { _ in randomName(using: &random, utf8: true) } + [Array(longestName.utf8), Array(newlineName.utf8)]
        for name in Set(names) { try makeSession(named: name, in: workspace.sessions, using: &random) }
        let runner = store == .local
            ? SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
            : try await workspace.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())

        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions, "--json"])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")
        #expect(!backup.standardError.contains("skipping"), "\(backup.standardError)")
        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        try await expectSameDirectories(restored, workspace.sessions)
    }

    /// Names that are not UTF-8 go through `FileName` to every system call: the session
    /// directory's (here) and its files' (SessionArchive, SessionFiles: the file-names work).
    @Test func namesThatAreNotUTF8AreBackedUpAndRestoredExactly() async throws {
        let workspace = try Workspace(sessions: [])
        var random = SplitMix64(seed: 9)
        for _ in 0..<4 { try makeSession(named: randomName(using: &random, utf8: false), in: workspace.sessions, using: &random) }
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")
        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        try await expectSameDirectories(restored, workspace.sessions)
    }

    /// `watch` takes a session of such a name up live, names it in `/sessions` by its printed
    /// spelling, and no name (of a session or of the sessions root) splits a text log line.
    @Test func watchPicksUpASessionOfAnyNameLive() async throws {
        let workspace = try Workspace(sessions: [])
        let root = workspace.directory.file("sessions\nFAKE root line")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        let agent = try runner.watch(root)
        try await agent.waitUntilWatching()
        var random = SplitMix64(seed: 5)
        for name in [newlineName, "with space", "naïve ünïcödé"] { try makeSession(named: Array(name.utf8), in: root, using: &random) }
        try await agent.waitForLog("] uploaded", count: 3)

        let statuses = try await sessionStatuses(try await agent.endpoint())
        #expect(Set(statuses.keys) == ["~" + Array(newlineName.utf8).map { String(format: "%02x", $0) }.joined(), "with space", "naïve ünïcödé"])
        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        try await expectSameDirectories(restored, root)
        #expect(try await agent.terminate() == .exited(0))
        let forged = agent.logLines.filter { !$0.hasPrefix("20") }
        #expect(forged.isEmpty, "lines that do not start with a time: \(forged)")
    }

    /// A session named by bytes that are not UTF-8 under `watch`: uploaded at the start and at a
    /// change made while watching, and `restore` finds it present (`--if-missing`) and up to date.
    /// Foundation's checks of the directory passed the escapes' UTF-8 to the kernel: the session
    /// looked gone, every upload was skipped in silence and `--if-missing` replaced it.
    @Test func aSessionNamedByBytesThatAreNotUTF8IsWatchedAndFoundPresentByRestore() async throws {
        let workspace = try Workspace(sessions: [])
        var random = SplitMix64(seed: 7)
        let name = Array("bytes-".utf8) + [0xFF, 0xC3]
        try makeSession(named: name, in: workspace.sessions, using: &random)
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        let agent = try runner.watch(workspace.sessions, ["--quiet-period", "100ms", "--max-delay", "1s"])
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        let content = Array(#"{"changed":"while watching"}"#.utf8)
        try withRawPath(Array(workspace.sessions.utf8) + [UInt8(ascii: "/")] + name + Array("/creds.json".utf8)) { path in
            let descriptor = open(path, O_WRONLY | O_TRUNC)
            guard descriptor >= 0, write(descriptor, content, content.count) == content.count else {
                throw ProgramFailure("write: \(String(cString: strerror(errno)))")
            }
            close(descriptor)
        }
        try await agent.waitForLog("] uploaded", count: 2)
        #expect(try await agent.terminate() == .exited(0), "\(agent.log)")

        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored)
        try await expectSameDirectories(restored, workspace.sessions)
        let printed = "~" + name.map { String(format: "%02x", $0) }.joined()
        let (_, ifMissing) = try await restoreStatuses(runner, into: restored, ["--all", "--if-missing"])
        #expect(ifMissing == [printed: "present"])
        let (_, again) = try await restoreStatuses(runner, into: restored, ["--all"])
        #expect(again == [printed: "up_to_date"])
    }

    /// Each command that names sessions takes the hex spelling of a name that cannot be typed
    /// or listed one a line as it is, and a name with a space as it is.
    @Test func everyCommandTakesBothSpellings() async throws {
        let workspace = try Workspace(sessions: [])
        var random = SplitMix64(seed: 6)
        for name in [newlineName, "with space"] { try makeSession(named: Array(name.utf8), in: workspace.sessions, using: &random) }
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        let hex = "~" + Array(newlineName.utf8).map { String(format: "%02x", $0) }.joined()
        for arguments in [["backup", hex, "with space"], ["snapshots", hex], ["verify", hex, "with space"], ["prune", "--keep-last", "1", hex]] {
            let result = try await runner.run(arguments[0], ["--sessions-dir", workspace.sessions] + arguments.dropFirst())
            #expect(result.termination == .exited(0), "\(arguments): \(result.standardError)")
        }
        let restored = try workspace.freshDirectory()
        try await runner.restore(into: restored, [hex, "with space"])
        try await expectSameDirectories(restored, workspace.sessions)
        let list = workspace.directory.file("list")
        try write("\(hex)\nwith space\n", to: list)
        let fromList = try workspace.freshDirectory()
        try await runner.restore(into: fromList, ["--sessions-from", list])
        try await expectSameDirectories(fromList, workspace.sessions)
    }

    /// A name typed as it is that cannot be an id as typed (a newline in it) is refused by every
    /// command naming sessions, shown escaped, so the message stays one line. It was echoed raw.
    @Test func everyCommandShowsAnInvalidIdEscapedOnOneLine() async throws {
        let workspace = try Workspace(sessions: [])
        let runner = SyncAgentRunner.local(store: try workspace.freshDirectory(), logDirectory: workspace.logs)
        for arguments in [["backup"], ["snapshots"], ["verify"], ["prune", "--keep-last", "1"], ["restore"]] {
            let result = try await runner.run(arguments[0], ["--sessions-dir", workspace.sessions] + arguments.dropFirst() + [newlineName])
            #expect(result.termination == .exited(64), "\(arguments): \(result.standardError)")
            #expect(result.standardError.contains(#"The value 'x\nFAKE line' is invalid for '<session"#), "\(arguments): \(result.standardError)")
            #expect(!result.standardError.split(separator: "\n").contains { $0.hasPrefix("FAKE line") }, "\(arguments): \(result.standardError)")
        }
    }

    private let newlineName = "x\nFAKE line"
    private let longestName = String(repeating: "é", count: 127) + "n"

    /// 1 to 255 bytes, not starting with "." and holding neither "/" nor NUL; with `utf8`,
    /// valid UTF-8 made of characters of every kind, otherwise with bytes that are not UTF-8.
    private func randomName(using random: inout SplitMix64, utf8: Bool) -> [UInt8] {
        let pieces = [" ", "\n", "\t", "\u{7f}", "~", "é", "ß", "Ж", "名", "😀", "a", "Z", "9", "-", "%", "\\", "\"", ":", "*", "?"]
        var bytes: [UInt8] = []
        let length = Int.random(in: 1...255, using: &random)
        while true {
            let piece = utf8 || Bool.random(using: &random)
                ? Array(pieces.randomElement(using: &random)!.utf8)
                : [UInt8.random(in: 0x80...0xFF, using: &random)]
            guard bytes.count + piece.count <= length else { break }
            bytes += piece
        }
        if bytes.isEmpty || bytes.first == UInt8(ascii: ".") { bytes.insert(UInt8(ascii: "s"), at: 0) }
        return bytes
    }

    /// A session directory named by `name`'s bytes, with a few Baileys-like files, readable by
    /// an agent running as another user.
    private func makeSession(named name: [UInt8], in root: String, using random: inout SplitMix64) throws {
        let directory = Array(root.utf8) + [UInt8(ascii: "/")] + name
        try withRawPath(directory) { path in
            guard mkdir(path, 0o755) == 0 || errno == EEXIST else { throw ProgramFailure("mkdir: \(String(cString: strerror(errno)))") }
        }
        for file in ["creds.json", "pre-key-1.json", "session-\(random.next() % 1000).json"] {
            let content = Array(#"{"value":"\#(random.next())"}"#.utf8)
            try withRawPath(directory + Array("/\(file)".utf8)) { path in
                let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                guard descriptor >= 0, write(descriptor, content, content.count) == content.count else {
                    throw ProgramFailure("write: \(String(cString: strerror(errno)))")
                }
                close(descriptor)
            }
        }
    }

    private func withRawPath(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws -> Void) throws {
        try (bytes + [0]).withUnsafeBufferPointer { buffer in
            try buffer.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) }
        }
    }

    /// Byte for byte, names included (diff(1) compares names as bytes).
    private func expectSameDirectories(_ actual: String, _ expected: String) async throws {
        try await runProgram("/usr/bin/diff", ["-r", actual, expected])
    }
}
