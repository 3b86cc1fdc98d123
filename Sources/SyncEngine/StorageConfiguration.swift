import SessionCrypto
import FoundationEssentials
import Glibc

/// Where snapshots go.
public enum StorageMode: String, Sendable, CaseIterable {
    /// A filesystem snapshot store on this machine; no server. The embedded default.
    case local
    /// S3 (or MinIO, SeaweedFS…) is the only store.
    case cloud
    /// The local store first, S3 behind it, caught up after outages and restarts.
    case hybrid
}

/// What a command does with the local mode's store. Only the commands that commit snapshots
/// create a store and its key: a read-only command on a mistyped path must fail, not report an
/// empty new store, and must work on a store it cannot write.
public enum StoreAccess: Sendable {
    /// `watch`, `backup`: the store and its key are created when missing.
    case create
    /// `prune`: an existing store, written.
    case write
    /// `restore`, `verify`, `snapshots`, `status`: an existing store, possibly read-only;
    /// nothing is created, locked or cleaned up there.
    case read
}

/// The settings every mode shares, built by the CLI from flags and the environment, and
/// independent of it. The stores themselves are assembled in the executable, which alone knows
/// the backends (`StoreAssembly.swift`); the engine only sees them as `ObjectStore`s.
public struct StorageConfiguration: Sendable {
    public var mode: StorageMode
    /// The local store's directory: the store of local mode, hybrid mode's backlog.
    public var localStore: String
    public var keyring: Keyring

    public init(mode: StorageMode, localStore: String, keyring: Keyring) {
        self.mode = mode
        self.localStore = localStore
        self.keyring = keyring
    }

    /// In local mode an encryption key is optional: without one, the agent keeps its own in
    /// the local store (created 0600 on first use, with `.create`), so snapshots are encrypted in
    /// every mode.
    public static func localKeyring(store directory: String, access: StoreAccess) throws -> Keyring {
        let path = "\(directory)/\(localKeyName)"
        if access == .create {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try createLocalKey(path)
        } else if !FileManager.default.fileExists(atPath: path) {
            throw StoreError.rejected("the local store \(directory) has no key \(localKeyName): set SESSION_ENCRYPTION_KEY or pass --key-file")
        }
        return try Keyring.load(keyFiles: [path], environmentValue: nil)
    }

    public static let localKeyName = ".sync-agent-key"

    /// Writes a new key to a temporary file, makes it durable, then links it into place: two
    /// first starts racing each see no key or the whole key, never a partial one, and the loser
    /// of the link reads the winner's key.
    private static func createLocalKey(_ path: String) throws {
        if FileManager.default.fileExists(atPath: path) { return }
        let temporaryPath = "\(path).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        let descriptor = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw keyFileError("create", temporaryPath, errno)
        }
        defer { unlink(temporaryPath) }
        let line = Array((EncryptionKey.generate().base64EncodedString() + "\n").utf8)
        let written = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        let failure = written == line.count && fsync(descriptor) == 0 ? 0 : errno
        close(descriptor)
        guard failure == 0 else { throw keyFileError("write", temporaryPath, failure) }
        guard link(temporaryPath, path) == 0 || errno == EEXIST else { throw keyFileError("create", path, errno) }
        let directoryPath = String(path[..<path.lastIndex(of: "/")!])
        let directory = open(directoryPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { throw keyFileError("open", directoryPath, errno) }
        defer { close(directory) }
        guard fsync(directory) == 0 else { throw keyFileError("fsync", directoryPath, errno) }
    }

    private static func keyFileError(_ operation: String, _ path: String, _ code: Int32) -> StoreError {
        .io("cannot \(operation) \(path) for the local key: \(String(cString: strerror(code == 0 ? EIO : code)))")
    }
}
