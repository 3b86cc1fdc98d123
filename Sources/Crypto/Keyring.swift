import Glibc
import SystemSupport

/// The keys this process may use: `primary` encrypts, and every key (primary first) may
/// decrypt, so that objects written before a key rotation stay readable.
public struct Keyring: Sendable {
    public static let environmentVariable = "SESSION_ENCRYPTION_KEY"
    /// A key file is a few lines; anything bigger is a wrong path, not a key file.
    static let maximumKeyFileByteCount = 64 * 1024

    public let primary: EncryptionKey
    /// Every key that can decrypt, primary first.
    public let keys: [EncryptionKey]

    public init(primary: EncryptionKey, additional: [EncryptionKey] = []) {
        self.primary = primary
        keys = [primary] + additional
    }

    /// The first key with this id; the same key configured twice is harmless.
    public func key(for id: KeyID) -> EncryptionKey? {
        keys.first { $0.id == id }
    }

    /// The keys of every key file in order, then those of `environmentValue` (the value of
    /// `SESSION_ENCRYPTION_KEY`, nil when unset: keys separated by commas, blank entries and
    /// entries starting with `#` ignored). The first of them is the primary: the first key of
    /// the first key file if any was given, otherwise the first key of the environment value.
    public static func load(keyFiles: [String], environmentValue: String?) throws -> Keyring {
        var keys = try keyFiles.flatMap { try Self.keys(fromKeyFile: $0) }
        if var environmentValue {
            keys += try environmentValue.withUTF8 { text in
                try parseKeys(UnsafeRawBufferPointer(text), separator: UInt8(ascii: ",")) {
                    "\(Self.environmentVariable), key \($0)"
                }
            }
        }
        guard let primary = keys.first else { throw CryptoError.noKeyConfigured }
        return Keyring(primary: primary, additional: Array(keys.dropFirst()))
    }

    /// Reads a key file: one key per line, blank lines and lines starting with `#` ignored.
    /// The file (after following symlinks) must be a regular file that neither group nor
    /// others may access, and must hold at least one key.
    public static func keys(fromKeyFile path: String) throws -> [EncryptionKey] {
        let (contents, count) = try readKeyFile(path)
        let keys = try parseKeys(UnsafeRawBufferPointer(contents.slice(0..<count)), separator: UInt8(ascii: "\n")) {
            "key file \(path), line \($0)"
        }
        guard !keys.isEmpty else { throw CryptoError.invalidKey(reason: "key file \(path) contains no key") }
        return keys
    }

    /// The file's bytes (the first `count` of `contents`), in memory that is wiped when released. Permissions are checked on
    /// the opened file, so a symlink is judged by its target and cannot be swapped between
    /// the check and the read.
    private static func readKeyFile(_ path: String) throws -> (contents: WipedBuffer, count: Int) {
        // O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a regular file.
        let fileDescriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fileDescriptor >= 0 else { throw unreadable(path, errno: errno) }
        defer { close(fileDescriptor) }

        var status = stat()
        guard fstat(fileDescriptor, &status) == 0 else { throw unreadable(path, errno: errno) }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw CryptoError.keyFileUnreadable(path: path, reason: "it is not a regular file")
        }
        guard status.st_mode & 0o077 == 0 else {
            throw CryptoError.insecureKeyFile(path: path, mode: status.st_mode & 0o7777)
        }

        // One byte more than allowed, to tell a full buffer from a file that is too big.
        let buffer = WipedBuffer(count: maximumKeyFileByteCount + 1)
        let source = FileDescriptorSource(fileDescriptor: fileDescriptor, path: path)
        let count: Int
        do {
            count = try source.readFully(into: buffer.bytes)
        } catch let error as SystemError {
            throw unreadable(path, errno: error.errno)
        }
        guard count <= maximumKeyFileByteCount else {
            throw CryptoError.keyFileUnreadable(
                path: path, reason: "it is larger than \(maximumKeyFileByteCount / 1024) KiB, so not a key file")
        }
        return (buffer, count)
    }

    private static func unreadable(_ path: String, errno: Int32) -> CryptoError {
        .keyFileUnreadable(path: path, reason: String(cString: strerror(errno)))
    }

    /// Splits `text` at `separator`, skipping blank entries and entries starting with `#`;
    /// `describe` names entry n (1-based, counting skipped ones) in error messages.
    private static func parseKeys(
        _ text: UnsafeRawBufferPointer, separator: UInt8, describe: (Int) -> String
    ) throws -> [EncryptionKey] {
        var keys: [EncryptionKey] = []
        for (index, entry) in text.split(separator: separator, omittingEmptySubsequences: false).enumerated() {
            let entry = trimmingWhitespace(UnsafeRawBufferPointer(rebasing: entry))
            if entry.isEmpty || entry.first == UInt8(ascii: "#") { continue }
            keys.append(try EncryptionKey(parsing: entry, source: describe(index + 1)))
        }
        return keys
    }
}
