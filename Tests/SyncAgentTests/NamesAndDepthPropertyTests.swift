import Foundation
import Glibc
import TestSupport
import Testing

/// The promise "any name, any depth" with the real binary: random trees of names of any bytes
/// Linux allows (UTF-8, not UTF-8, newlines, 255 bytes, lookalikes of the agent's own escapes),
/// at least four directories deep, with empty files, go through `watch` (the start-up scan, then
/// directories created and filled before their watch is in place, subtrees removed, a file
/// turning into a directory and back) and through `backup`, and `restore` gives them back byte
/// for byte: names, contents, files 0600 and directories 0700. Seeded: a failure names its seed,
/// and `NAMES_PROPERTY_SEED=<seed>` replays it.
@Suite("names and depth: any bytes, any depth, through the real agent")
struct NamesAndDepthPropertyTests {
    static let seeds: [UInt64] = ProcessInfo.processInfo.environment["NAMES_PROPERTY_SEED"].flatMap(UInt64.init).map { [$0] }
        ?? [UInt64.random(in: 1...UInt64.max)]

    @Test(arguments: seeds)
    func randomTreesRoundTripThroughWatchAndBackupInLocalMode(seed: UInt64) async throws {
        let workspace = try Workspace(sessions: [])
        try await roundTrip(seed: seed, workspace: workspace, runner: .local(store: workspace.directory.file("store"), logDirectory: workspace.logs))
    }

    @Test(.needsTestServers, arguments: seeds)
    func randomTreesRoundTripThroughWatchAndBackupOnSeaweedFS(seed: UInt64) async throws {
        let workspace = try Workspace(sessions: [])
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        try await roundTrip(seed: seed, workspace: workspace, runner: try await workspace.cloudRunner(on: bucket))
    }

    private func roundTrip(seed: UInt64, workspace: Workspace, runner: SyncAgentRunner) async throws {
        var tree = RandomSessionTree(seed: seed, root: Array(workspace.session("names").utf8))
        try tree.makeRoot()
        for _ in 0..<3 { try tree.addSubtree() }
        try tree.addCanonicallyEquivalentTwins()
        let agent = try runner.watch(workspace.sessions, ["--quiet-period", "100ms"])
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        try await expectStoreMatches(tree, runner: runner, workspace: workspace, agent: agent)

        // While watched: subtrees created and filled at once, rewrites, removals, and names that
        // change from file to directory and back.
        for _ in 0..<2 { try tree.addSubtree() }
        try tree.addCanonicallyEquivalentTwins()
        try tree.rewriteSomeFiles()
        try tree.removeASubtree()
        try tree.turnAFileIntoADirectory()
        try tree.turnADirectoryIntoAFile()
        try await expectStoreMatches(tree, runner: runner, workspace: workspace, agent: agent)
        #expect(try await agent.terminate() == .exited(0), "seed \(seed)")

        // And `backup`, from what `watch` left.
        try tree.addSubtree()
        try tree.rewriteSomeFiles()
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "seed \(seed): \(backup.standardError)")
        try await expectStoreMatches(tree, runner: runner, workspace: workspace, agent: nil)
    }

    /// Restores until the store holds the session as it is on disk (the watcher may still be
    /// uploading), then compares once more and says what differs.
    private func expectStoreMatches(
        _ tree: RandomSessionTree, runner: SyncAgentRunner, workspace: Workspace, agent: RunningAgent?
    ) async throws {
        let expected = try RawTree(tree.root, comparable: true)
        var restored = RawTree()
        var restoreFailure = ""
        let deadline = ContinuousClock.now + .seconds(60)
        repeat {
            let target = try workspace.freshDirectory()
            let result = try await runner.run("restore", ["--sessions-dir", target, "names"])
            if result.termination == .exited(0) {
                restored = try RawTree(Array("\(target)/names".utf8))
                if restored == expected { break }
            } else {
                restoreFailure = "\(result.termination): \(result.standardError)"
            }
            try await Task.sleep(for: .milliseconds(300))
        } while ContinuousClock.now < deadline
        let matches = restored == expected
        #expect(
            matches,
            """
            seed \(tree.seed): the restored session differs: \(expected.difference(from: restored))
            last restore failure: \(restoreFailure)
            agent log: \(agent?.log ?? "-")
            """)
    }
}

/// A session directory written with random names and depths, kept as raw bytes.
struct RandomSessionTree {
    let seed: UInt64
    let root: [UInt8]
    private var random: SplitMix64
    /// Every directory below the root that the tree made, as a path relative to it.
    private var directories: [[UInt8]] = []
    private var files: [[UInt8]] = []

    init(seed: UInt64, root: [UInt8]) {
        self.seed = seed
        self.root = root
        random = SplitMix64(seed: seed)
    }

    func makeRoot() throws {
        try makeDirectory(root)
    }

    /// A new chain of 4 to 6 directories below a random existing directory (or the root),
    /// created and filled in one go, with files (some empty) at every level.
    mutating func addSubtree() throws {
        var parent: [UInt8] = directories.isEmpty || random.next() % 3 == 0 ? [] : directories[Int(random.next() % UInt64(directories.count))]
        for _ in 0..<Int(4 + random.next() % 3) {
            guard let name = freshName(in: parent, room: 40) else { break }
            parent = join(parent, name)
            try makeDirectory(join(root, parent))
            directories.append(parent)
            for _ in 0..<Int(1 + random.next() % 3) {
                // Room for "/inside.json", should the file become a directory.
                guard let fileName = freshName(in: parent, room: 12) else { break }
                try addFile(join(parent, fileName))
            }
        }
    }

    /// Two files in one random directory named "é" as one code point and as "e" + U+0301:
    /// different bytes that Swift's String takes for one name.
    mutating func addCanonicallyEquivalentTwins() throws {
        let directory = directories.randomElement(using: &random) ?? []
        let suffix = Array("-\(random.next() % 1000).json".utf8)
        for name in [Array("\u{E9}".utf8) + suffix, Array("e\u{301}".utf8) + suffix] {
            let path = join(directory, name)
            if !files.contains(path) && !directories.contains(path) { try addFile(path) }
        }
    }

    mutating func rewriteSomeFiles() throws {
        for _ in 0..<min(files.count, 5) {
            let file = files[Int(random.next() % UInt64(files.count))]
            try writeFile(join(root, file), contents: contents(for: file))
        }
    }

    /// Removes a whole subdirectory (deleted files at every depth below it).
    mutating func removeASubtree() throws {
        guard let directory = directories.randomElement(using: &random) else { return }
        try removeTree(join(root, directory))
        forget(directory)
    }

    /// A file's name becomes a directory holding a file.
    mutating func turnAFileIntoADirectory() throws {
        guard let file = files.randomElement(using: &random) else { return }
        try removeTree(join(root, file))
        forget(file)
        try makeDirectory(join(root, file))
        directories.append(file)
        try addFile(join(file, Array("inside.json".utf8)))
    }

    /// A directory's name becomes a file.
    mutating func turnADirectoryIntoAFile() throws {
        guard let directory = directories.randomElement(using: &random) else { return }
        try removeTree(join(root, directory))
        forget(directory)
        try addFile(directory)
    }

    private mutating func addFile(_ path: [UInt8]) throws {
        try writeFile(join(root, path), contents: contents(for: path))
        files.append(path)
    }

    private mutating func forget(_ path: [UInt8]) {
        let below = path + [0x2F]
        directories.removeAll { $0 == path || $0.starts(with: below) }
        files.removeAll { $0 == path || $0.starts(with: below) }
    }

    /// Empty one time in five; valid JSON for a name ending in ".json" (the agent waits for a
    /// JSON file to parse); random bytes otherwise.
    private mutating func contents(for path: [UInt8]) -> [UInt8] {
        if random.next() % 5 == 0 && !path.ends(with: Array(".json".utf8)) { return [] }
        if path.ends(with: Array(".json".utf8)) { return Array("{\"n\":\(random.next())}".utf8) }
        return (0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }

    /// A name not yet in `directory`, leaving the path short enough for the archive (1,018 bytes
    /// for a session file) with `room` bytes to spare; nil when there is no room left.
    private mutating func freshName(in directory: [UInt8], room: Int) -> [UInt8]? {
        let available = 1018 - room - directory.count - 1
        guard available >= 8 else { return nil }
        while true {
            let name = randomName(maxLength: min(255, available))
            let path = join(directory, name)
            if !files.contains(path) && !directories.contains(path) { return name }
        }
    }

    /// Any bytes but "/" and NUL, from pieces that find the corner cases: ASCII, UTF-8 of one to
    /// four bytes, bytes that are not UTF-8, newlines, the agent's escape scalars as UTF-8, and
    /// now and then a name of the full 255 bytes. Never ".", "..", nor a name the agent ignores
    /// (hidden, or a temporary: "~", ".tmp", ".swp", ".swx").
    private mutating func randomName(maxLength: Int) -> [UInt8] {
        let pieces: [[UInt8]] = [
            Array("creds".utf8), Array("pre-key-".utf8), Array("é".utf8), Array("日本".utf8), Array("😀".utf8),
            [0x0A], [0xFF], [0xC3], [0x80], [0xED, 0xA0, 0x80], Array("\u{10FF80}".utf8), Array("\u{10FFFF}".utf8),
            Array("e\u{301}".utf8), Array(" ".utf8), Array("\\".utf8), Array("\"".utf8),
        ]
        while true {
            var name: [UInt8]
            if random.next() % 12 == 0 {
                name = (0..<maxLength).map { _ in UInt8(1 + random.next() % 255) }.map { $0 == 0x2F ? 0x5F : $0 }
            } else {
                name = []
                for _ in 0..<Int(1 + random.next() % 5) {
                    if random.next() % 3 == 0 {
                        name += (0..<Int(1 + random.next() % 4)).map { _ in UInt8(1 + random.next() % 255) }.map { $0 == 0x2F ? 0x5F : $0 }
                    } else {
                        name += pieces[Int(random.next() % UInt64(pieces.count))]
                    }
                }
                if random.next() % 2 == 0 { name += Array(".json".utf8) }
                name = Array(name.prefix(maxLength))
            }
            let ignored = name.first == 0x2E || [Array("~".utf8), Array(".tmp".utf8), Array(".swp".utf8), Array(".swx".utf8)]
                .contains { name.ends(with: $0) }
            if !name.isEmpty && !ignored { return name }
        }
    }
}

/// Everything below a directory, by raw path: files with their mode and contents, directories
/// with their mode.
struct RawTree: Equatable {
    enum Node: Equatable {
        case file(mode: mode_t, contents: [UInt8])
        case directory(mode: mode_t)
    }

    var nodes: [[UInt8]: Node] = [:]

    init() {}

    /// `comparable`: as a restore gives it back, files 0600 and directories 0700, without
    /// directories that hold no file at any depth (a session is its files).
    init(_ root: [UInt8], comparable: Bool = false) throws {
        try collect(root, prefix: [])
        guard comparable else { return }
        let filePaths = nodes.keys.filter { if case .file = nodes[$0] { true } else { false } }
        var restorable: [[UInt8]: Node] = [:]
        for (path, node) in nodes {
            switch node {
            case .file(_, let contents): restorable[path] = .file(mode: 0o600, contents: contents)
            case .directory where filePaths.contains(where: { $0.starts(with: path + [0x2F]) }): restorable[path] = .directory(mode: 0o700)
            case .directory: continue
            }
        }
        nodes = restorable
    }

    private mutating func collect(_ directory: [UInt8], prefix: [UInt8]) throws {
        guard let stream = withRawPath(directory, { opendir($0) }) else { throw ProgramFailure("opendir failed: \(errno)") }
        defer { closedir(stream) }
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            let path = join(directory, name)
            let relative = join(prefix, name)
            var status = stat()
            guard withRawPath(path, { lstat($0, &status) }) == 0 else { throw ProgramFailure("lstat failed: \(errno)") }
            switch status.st_mode & S_IFMT {
            case S_IFDIR:
                nodes[relative] = .directory(mode: status.st_mode & 0o7777)
                try collect(path, prefix: relative)
            case S_IFREG:
                nodes[relative] = .file(mode: status.st_mode & 0o7777, contents: try readFile(path))
            default:
                throw ProgramFailure("unexpected file type \(status.st_mode) at \(shown(relative))")
            }
        }
    }

    /// The paths present in one tree only, or different in both.
    func difference(from other: RawTree) -> String {
        let paths = Set(nodes.keys).union(other.nodes.keys).filter { nodes[$0] != other.nodes[$0] }
        return paths.sorted { $0.lexicographicallyPrecedes($1) }.prefix(10).map { path in
            "\(shown(path)): expected \(nodes[path].map(describe) ?? "nothing"), restored \(other.nodes[path].map(describe) ?? "nothing")"
        }.joined(separator: "; ")
    }

    private func describe(_ node: Node) -> String {
        switch node {
        case .file(let mode, let contents): "file \(String(mode, radix: 8)) of \(contents.count) bytes"
        case .directory(let mode): "directory \(String(mode, radix: 8))"
        }
    }
}

/// A path's bytes as printable text, every byte outside printable ASCII as \xNN.
func shown(_ path: [UInt8]) -> String {
    path.map { (0x20..<0x7F).contains($0) && $0 != 0x5C ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined()
}

private func join(_ directory: [UInt8], _ name: [UInt8]) -> [UInt8] {
    directory.isEmpty ? name : directory + [0x2F] + name
}

private func withRawPath<Result>(_ path: [UInt8], _ body: (UnsafePointer<CChar>) -> Result) -> Result {
    (path + [0]).withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) } }
}

// Readable by the agent, which runs as a user of its own (AgentUser) while the test writes as root.
private func makeDirectory(_ path: [UInt8]) throws {
    guard withRawPath(path, { mkdir($0, 0o755) }) == 0 else { throw ProgramFailure("mkdir \(shown(path)): \(errno)") }
}

private func writeFile(_ path: [UInt8], contents: [UInt8]) throws {
    let descriptor = withRawPath(path) { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
    guard descriptor >= 0 else { throw ProgramFailure("open \(shown(path)): \(errno)") }
    defer { close(descriptor) }
    guard contents.withUnsafeBytes({ Glibc.write(descriptor, $0.baseAddress, $0.count) }) == contents.count else {
        throw ProgramFailure("write \(shown(path)): \(errno)")
    }
}

private func readFile(_ path: [UInt8]) throws -> [UInt8] {
    let descriptor = withRawPath(path) { open($0, O_RDONLY | O_CLOEXEC) }
    guard descriptor >= 0 else { throw ProgramFailure("open \(shown(path)): \(errno)") }
    defer { close(descriptor) }
    var contents: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw ProgramFailure("read \(shown(path)): \(errno)") }
        if count == 0 { return contents }
        contents += buffer[..<count]
    }
}

private func removeTree(_ path: [UInt8]) throws {
    if withRawPath(path, { unlink($0) }) == 0 { return }
    guard errno == EISDIR else { throw ProgramFailure("unlink \(shown(path)): \(errno)") }
    let tree = try RawTree(path)
    for child in tree.nodes.keys.sorted(by: { $0.count > $1.count }) {
        guard withRawPath(join(path, child), { remove($0) }) == 0 else { throw ProgramFailure("remove \(shown(child)): \(errno)") }
    }
    guard withRawPath(path, { rmdir($0) }) == 0 else { throw ProgramFailure("rmdir \(shown(path)): \(errno)") }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
