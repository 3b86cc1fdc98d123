import ArgumentParser
import Crypto
import Foundation
import SessionArchive

/// Every bench object is bound to this identity: the benchmark measures speed, not placement.
let benchIdentity = ObjectIdentity(sessionID: "bench", objectName: "bench")

struct KeyOptions: ParsableArguments {
    @Option(help: "Key file (mode 0600), as `sync-agent` reads it.") var keyFile: String

    func keyring() throws -> Keyring {
        try Keyring.load(keyFiles: [keyFile], environmentValue: nil)
    }
}

/// An open file descriptor, closed when released.
final class OpenFile {
    let descriptor: Int32
    let path: String

    init(_ path: String, flags: Int32, mode: mode_t = 0o600) throws {
        descriptor = open(path, flags | O_CLOEXEC, mode)
        guard descriptor >= 0 else { throw SystemError("open", path: path) }
        self.path = path
    }

    static func reading(_ path: String) throws -> OpenFile {
        try OpenFile(path, flags: O_RDONLY)
    }

    static func creating(_ path: String) throws -> OpenFile {
        try OpenFile(path, flags: O_WRONLY | O_CREAT | O_TRUNC)
    }

    var source: FileDescriptorSource { FileDescriptorSource(fileDescriptor: descriptor, path: path) }
    var sink: FileDescriptorSink { FileDescriptorSink(fileDescriptor: descriptor, path: path) }

    deinit {
        close(descriptor)
    }
}

struct ArchivePack: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive-pack",
        abstract: "Archive, compress and encrypt a directory into one object, as a snapshot is written.")
    @OptionGroup var key: KeyOptions
    @Option(help: "zstd compression level.") var level = 3
    @Argument(help: "Directory to pack (regular files and directories, in bytewise path order).") var directory: String
    @Argument(help: "Object file to write.") var object: String

    func run() throws {
        let keyring = try key.keyring()
        let output = try OpenFile.creating(object)
        let encryption = EncryptingSink(key: keyring.primary, identity: benchIdentity, downstream: output.sink)
        // Sorted by the UTF-8 bytes, copied out once: comparing String.UTF8Views costs more.
        let paths = try FileManager.default.subpathsOfDirectory(atPath: directory)
            .map { (path: $0, bytes: Array($0.utf8)) }
            .sorted { $0.bytes.lexicographicallyPrecedes($1.bytes) }
            .map(\.path)
        // As for a base snapshot, the sizes come from a scan before the first file is read.
        let expectedFileBytes = paths.reduce(Int64(0)) { total, path in
            var status = stat()
            return lstat(directory + "/" + path, &status) == 0 ? total + Int64(status.st_size) : total
        }
        let writer = try ArchiveWriter(sink: encryption, compressionLevel: level, expectedFileBytes: expectedFileBytes)
        for path in paths {
            let file = try OpenFile(directory + "/" + path, flags: O_RDONLY | O_NOFOLLOW)
            var status = stat()
            guard fstat(file.descriptor, &status) == 0 else { throw SystemError("stat", path: file.path) }
            switch status.st_mode & S_IFMT {
            case S_IFREG:
                try writer.addFile(
                    relativePath: path, fileDescriptor: file.descriptor, size: Int64(status.st_size),
                    modificationTime: Int64(status.st_mtim.tv_sec))
            case S_IFDIR:
                try writer.addDirectory(relativePath: path, modificationTime: Int64(status.st_mtim.tv_sec))
            default:
                continue
            }
        }
        try writer.finish()
        try encryption.finish()
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
        let input = try OpenFile.reading(object)
        let decryption = try DecryptingSource(keyring: try key.keyring(), identity: benchIdentity, upstream: input.source)
        try ArchiveExtractor().restore(from: decryption, replacing: directory)
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
        let plaintext = try OpenFile.reading(input)
        let object = try OpenFile.creating(output)
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
        let object = try OpenFile.reading(input)
        let decryption = try DecryptingSource(keyring: try key.keyring(), identity: benchIdentity, upstream: object.source)
        let plaintext = try OpenFile.creating(output)
        try decryption.copy(to: plaintext.sink)
    }
}
