import ArgumentParser
import Foundation
import SessionArchive
import SessionCrypto
import SystemSupport

/// Every bench object is bound to this identity: the benchmark measures speed, not placement.
let benchIdentity = ObjectIdentity(sessionID: "bench", objectName: "bench")

struct KeyOptions: ParsableArguments {
    @Option(help: "Key file (mode 0600), as `sync-agent` reads it.") var keyFile: String

    func keyring() throws -> Keyring {
        try Keyring.load(keyFiles: [keyFile], environmentValue: nil)
    }
}

extension FileDescriptor {
    static func opening(_ path: String, flags: Int32, mode: mode_t = 0o600) throws -> FileDescriptor {
        let raw = open(path, flags | O_CLOEXEC, mode)
        guard raw >= 0 else { throw SystemError("open", path: path) }
        return FileDescriptor(owning: raw, path: path)
    }

    static func reading(_ path: String) throws -> FileDescriptor {
        try opening(path, flags: O_RDONLY)
    }

    static func creating(_ path: String) throws -> FileDescriptor {
        try opening(path, flags: O_WRONLY | O_CREAT | O_TRUNC)
    }

    var source: FileDescriptorSource { FileDescriptorSource(fileDescriptor: raw, path: path) }
    var sink: FileDescriptorSink { FileDescriptorSink(fileDescriptor: raw, path: path) }
}

struct ArchivePack: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive-pack",
        abstract: "Archive, compress and encrypt a directory into one object, as a snapshot is written.")
    @OptionGroup var key: KeyOptions
    @Option(help: "zstd compression level.") var level = 3
    @Argument(help: "Directory to pack (regular files and directories, in bytewise name order, depth first).") var directory: String
    @Argument(help: "Object file to write.") var object: String

    func run() throws {
        let keyring = try key.keyring()
        let output = try FileDescriptor.creating(object)
        let encryption = EncryptingSink(key: keyring.primary, identity: benchIdentity, downstream: output.sink)
        // As for a base `backup` writes, the sizes come from a scan before the first file is
        // read, and a large archive compresses on zstd's worker thread.
        let tree = try DirectoryTree(root: directory)
        let writer = try ArchiveWriter(
            sink: encryption, compressionLevel: level, expectedSize: tree.fileBytes, workerThreadAllowed: true)
        for directory in tree.directories {
            let parent = try FileDescriptor.opening(directory.path, flags: O_RDONLY | O_DIRECTORY)
            for entry in directory.entries {
                let path = directory.relativePrefix + entry.name
                let mtime = Int64(entry.status.st_mtim.tv_sec)
                if entry.isDirectory {
                    try writer.addDirectory(relativePath: path, modificationTime: mtime)
                    continue
                }
                let descriptor = openat(parent.raw, entry.name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                guard descriptor >= 0 else { throw SystemError("open", path: directory.path + "/" + entry.name) }
                defer { close(descriptor) }
                try writer.addFile(
                    relativePath: path, fileDescriptor: descriptor, size: Int64(entry.status.st_size), modificationTime: mtime)
            }
        }
        try writer.finish()
        try encryption.finish()
    }
}

/// The regular files and directories below a root, walked the way `tar` walks: each directory
/// read once, each entry stat'ed relative to its directory (no full-path lookups), entries in
/// bytewise name order; directories depth first, each listed before its contents.
struct DirectoryTree {
    struct Entry {
        var name: String
        var status: stat
        var isDirectory: Bool { status.st_mode & S_IFMT == S_IFDIR }
    }

    struct Directory {
        var path: String
        /// The archive path of the directory's entries: "" for the root, else "dir/".
        var relativePrefix: String
        var entries: [Entry]
    }

    private(set) var directories: [Directory] = []
    private(set) var fileBytes: Int64 = 0

    init(root: String) throws {
        try read(path: root, relativePrefix: "")
    }

    private mutating func read(path: String, relativePrefix: String) throws {
        let handle = try FileDescriptor.opening(path, flags: O_RDONLY | O_DIRECTORY)
        var entries: [Entry] = []
        for entry in try handle.directoryEntries() where entry.kind != .other {
            let name = String(decoding: entry.name, as: UTF8.self)
            var status = stat()
            guard fstatat(handle.raw, name, &status, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw SystemError("stat", path: path + "/" + name)
            }
            let type = status.st_mode & S_IFMT
            guard type == S_IFREG || type == S_IFDIR else { continue }
            if type == S_IFREG { fileBytes += Int64(status.st_size) }
            entries.append(Entry(name: name, status: status))
        }
        entries.sort { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        directories.append(Directory(path: path, relativePrefix: relativePrefix, entries: entries))
        for entry in entries where entry.isDirectory {
            try read(path: path + "/" + entry.name, relativePrefix: relativePrefix + entry.name + "/")
        }
    }
}

struct ArchiveUnpack: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive-unpack",
        abstract: "Decrypt, decompress and extract an object into a directory, as a restore does (staging, syncfs, swap).")
    @OptionGroup var key: KeyOptions
    @Argument(help: "Object file to read.") var object: String
    @Argument(help: "Directory to restore into (replaced atomically if it exists).") var directory: String

    func run() throws {
        let input = try FileDescriptor.reading(object)
        let decryption = try DecryptingSource(keyring: try key.keyring(), identity: benchIdentity, upstream: input.source)
        // The archive layer of a restore, which SessionRestorer runs for each snapshot (with the
        // manifest's checks on top): a directory entry adds nothing, a file's directories are
        // created with it.
        try DirectorySwap.replace(directory) { staging in
            try ArchiveReader(source: decryption).forEachEntry { entry, data in
                if entry.kind == .file { try staging.writeFile(relativePath: entry.path) { try data.copy(to: $0) } }
            }
        }
    }
}

struct SecretstreamEncrypt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secretstream-encrypt", abstract: "Encrypt a file into the object container, nothing else.")
    @OptionGroup var key: KeyOptions
    @Argument(help: "Plaintext file.") var input: String
    @Argument(help: "Object file to write.") var output: String

    func run() throws {
        let keyring = try key.keyring()
        let plaintext = try FileDescriptor.reading(input)
        let object = try FileDescriptor.creating(output)
        let encryption = EncryptingSink(key: keyring.primary, identity: benchIdentity, downstream: object.sink)
        try plaintext.source.copy(to: encryption)
        try encryption.finish()
    }
}

struct SecretstreamDecrypt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secretstream-decrypt", abstract: "Decrypt an object container into a file, nothing else.")
    @OptionGroup var key: KeyOptions
    @Argument(help: "Object file.") var input: String
    @Argument(help: "Plaintext file to write.") var output: String

    func run() throws {
        let object = try FileDescriptor.reading(input)
        let decryption = try DecryptingSource(keyring: try key.keyring(), identity: benchIdentity, upstream: object.source)
        let plaintext = try FileDescriptor.creating(output)
        try decryption.copy(to: plaintext.sink)
    }
}
