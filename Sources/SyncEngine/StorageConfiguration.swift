import Crypto
import FoundationEssentials
import Glibc
import Logging
import S3Client

/// Where snapshots go.
public enum StorageMode: String, Sendable, CaseIterable {
    /// A filesystem snapshot store on this machine; no server. The embedded default.
    case local
    /// S3 (or MinIO, SeaweedFS…) is the only store.
    case cloud
    /// The local store first, S3 behind it, caught up after outages and restarts.
    case hybrid
}

/// Everything needed to open the stores of one mode; built by the CLI from flags and the
/// environment, and independent of it.
public struct StorageConfiguration: Sendable {
    public var mode: StorageMode
    public var localStore: String
    public var s3: S3Configuration?
    /// Key prefix in the bucket ("" for none).
    public var prefix: String
    public var keyring: Keyring

    public init(mode: StorageMode, localStore: String, s3: S3Configuration?, prefix: String, keyring: Keyring) {
        self.mode = mode
        self.localStore = localStore
        self.s3 = s3
        self.prefix = prefix
        self.keyring = keyring
    }

    /// The stores of this mode: where sessions are committed, and in hybrid mode the S3
    /// store the local store is mirrored to.
    public func openStores(logger: Logger) throws -> (primary: any ObjectStore, mirror: (any ObjectStore)?) {
        switch mode {
        case .local: (try FileSystemStore(root: localStore), nil)
        case .cloud: (try openS3(logger: logger), nil)
        case .hybrid: (try FileSystemStore(root: localStore), try openS3(logger: logger))
        }
    }

    private func openS3(logger: Logger) throws -> S3ObjectStore {
        guard let s3 else { throw StoreError.rejected("\(mode.rawValue) mode needs a bucket (--bucket or STORAGE_BUCKET)") }
        return try S3ObjectStore(client: S3Client(configuration: s3, logger: logger), prefix: prefix)
    }

    /// In local mode an encryption key is optional: without one, the agent keeps its own in
    /// the local store (created 0600 on first use), so snapshots are encrypted in every mode.
    public static func localKeyring(store directory: String) throws -> Keyring {
        let path = "\(directory)/.sync-agent-key"
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        if !FileManager.default.fileExists(atPath: path) {
            let key = EncryptionKey.generate()
            let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if descriptor >= 0 {
                let line = Array((key.base64EncodedString() + "\n").utf8)
                let written = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
                let synced = fsync(descriptor)
                close(descriptor)
                guard written == line.count, synced == 0 else {
                    unlink(path)
                    throw StoreError.io("cannot write the local key file \(path)")
                }
            } else if errno != EEXIST {
                throw StoreError.io("cannot create the local key file \(path): \(String(cString: strerror(errno)))")
            }
        }
        return try Keyring.load(keyFiles: [path], environmentValue: nil)
    }
}
