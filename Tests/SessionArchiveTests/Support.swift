import Foundation
import Glibc
import SessionArchive
import SystemSupport
import TestSupport
import Testing

/// A directory tree as comparable values: relative path → what is there.
struct TreeSnapshot: Equatable, CustomStringConvertible {
    enum Node: Equatable {
        case file(mode: mode_t, contents: [UInt8])
        case directory(mode: mode_t)
    }

    var nodes: [String: Node]

    /// nil when `path` does not exist.
    init?(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        nodes = [:]
        try collect(path, prefix: "")
    }

    init(nodes: [String: Node]) {
        self.nodes = nodes
    }

    private mutating func collect(_ directory: String, prefix: String) throws {
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
            let path = directory + "/" + name
            var info = stat()
            guard lstat(path, &info) == 0 else { throw SystemError("lstat", path: path) }
            let mode = info.st_mode & 0o7777
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                nodes[prefix + name] = .directory(mode: mode)
                try collect(path, prefix: prefix + name + "/")
            case S_IFREG:
                nodes[prefix + name] = .file(mode: mode, contents: [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))))
            default:
                Issue.record("unexpected file type at \(path)")
            }
        }
    }

    /// The same tree with every file 0600 and every directory 0700, as a restore produces it.
    var normalized: TreeSnapshot {
        TreeSnapshot(nodes: nodes.mapValues { node in
            switch node {
            case .file(_, let contents): .file(mode: 0o600, contents: contents)
            case .directory: .directory(mode: 0o700)
            }
        })
    }

    var description: String {
        "\(nodes.count) entries: " + nodes.keys.sorted().prefix(5).joined(separator: ", ")
    }
}

/// Archives a directory tree in sorted order the way the sync engine does: file contents streamed
/// from open descriptors. `expectedSize` picks the compression mode (ArchiveWriter).
func archiveDirectory(_ directory: String, to sink: ByteSink, compressionLevel: Int = 3, expectedSize: Int64 = 0) throws {
    let writer = try ArchiveWriter(
        sink: sink, compressionLevel: compressionLevel, expectedSize: expectedSize, workerThreadAllowed: true)
    let paths = try FileManager.default.subpathsOfDirectory(atPath: directory).sorted()
    for relativePath in paths {
        let path = directory + "/" + relativePath
        var info = stat()
        guard lstat(path, &info) == 0 else { throw SystemError("lstat", path: path) }
        if info.st_mode & S_IFMT == S_IFDIR {
            try writer.addDirectory(relativePath: relativePath, modificationTime: Int64(info.st_mtim.tv_sec))
            continue
        }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw SystemError("open", path: path) }
        defer { close(descriptor) }
        try writer.addFile(
            relativePath: relativePath, fileDescriptor: descriptor, size: Int64(info.st_size),
            modificationTime: Int64(info.st_mtim.tv_sec)
        )
    }
    try writer.finish()
}

/// Replaces `target` by the archive's files, as a restore lays them out: in a staging directory
/// swapped in atomically, files 0600 and their directories 0700 (directory entries add nothing:
/// a session is its files). The archive layer alone; a restore of snapshots is SessionRestorer's.
func unpack(_ source: ByteSource, replacing target: String, limits: ExtractionLimits = .sessionDirectory) throws {
    try DirectorySwap.replace(target) { staging in
        try ArchiveReader(source: source, limits: limits).forEachEntry { entry, data in
            if entry.kind == .file { try staging.writeFile(relativePath: entry.path) { try data.copy(to: $0) } }
        }
    }
}

func archiveBytes(of directory: String, compressionLevel: Int = 3, expectedSize: Int64 = 0) throws -> [UInt8] {
    let sink = BufferSink()
    try archiveDirectory(directory, to: sink, compressionLevel: compressionLevel, expectedSize: expectedSize)
    return sink.bytes
}

/// Counts what is pulled from the wrapped source, to show refusal happens mid-stream.
final class CountingSource: ByteSource {
    private let wrapped: ByteSource
    private(set) var bytesRead = 0

    init(_ wrapped: ByteSource) {
        self.wrapped = wrapped
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = try wrapped.read(into: buffer)
        bytesRead += count
        return count
    }
}

/// Expects `body` to throw an ArchiveError for `reason`.
func expectArchiveError<T>(
    _ reason: ArchiveError.Reason, _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> T
) {
    let error = #expect(throws: ArchiveError.self, comment, sourceLocation: sourceLocation) { try body() }
    if let error { #expect(error.reason == reason, "\(comment.map { "\($0): " } ?? "")\(error)", sourceLocation: sourceLocation) }
}

/// What `executable` writes to standard output, for the tests that check our bytes with tools
/// written independently of ours (tar, zstd, Python); a tool that fails throws.
func programOutput(_ executable: String, _ arguments: [String]) throws -> Data {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw NSError(domain: "\(executable) exited \(process.terminationStatus)", code: Int(process.terminationStatus))
    }
    return data
}
