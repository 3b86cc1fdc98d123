import FoundationEssentials
import Logging
import S3Client
import S3Store
import SyncEngine

/// Stores are assembled here, in the executable, like litestream's command line building its
/// replica clients: the engine owns the `ObjectStore` protocol and the local store, and knows
/// no backend but through it; `S3Store` brings the S3 one.
extension StorageOptions {
    /// The stores of `configuration`'s mode: where sessions are committed, and in hybrid mode the
    /// S3 store the local store is mirrored to.
    func openStores(_ configuration: StorageConfiguration, access: StoreAccess, logger: Logger) throws
        -> (primary: any ObjectStore, mirror: (any ObjectStore)?)
    {
        switch configuration.mode {
        case .local:
            return (try FileSystemStore(root: configuration.localStore, access: access), nil)
        case .cloud:
            return (try s3Store(mode: configuration.mode, logger: logger), nil)
        case .hybrid:
            // S3's settings are checked first: a bad one creates no local store.
            let remote = try s3Store(mode: configuration.mode, logger: logger)
            // The local store is hybrid mode's backlog: a new machine restores from S3 without one.
            return (try FileSystemStore(root: configuration.localStore, access: .create), remote)
        }
    }

    /// The bucket and prefix of cloud and hybrid mode, from the flags and the environment.
    private func s3Store(mode: StorageMode, logger: Logger) throws -> S3ObjectStore {
        guard let bucket = bucket ?? environment("STORAGE_BUCKET") else {
            throw ConfigurationError(.missingBucket, "\(mode.rawValue) mode needs a bucket: pass --bucket or set STORAGE_BUCKET")
        }
        var configuration = try S3Configuration.resolve(
            bucket: bucket, endpoint: endpoint, region: region,
            addressing: addressing,
            environment: ProcessInfo.processInfo.environment)
        configuration.tls.caBundlePath = caBundle ?? environment("SYNC_AGENT_CA_BUNDLE")
        let client = S3Client(configuration: configuration, logger: logger)
        return try S3ObjectStore(client: client, prefix: prefix ?? environment("SYNC_AGENT_PREFIX") ?? "")
    }
}

extension OpenedStorage {
    /// `access`: what the command does with the local store. Commands that create it are the
    /// ones that commit snapshots: they probe whether the stores enforce conditional writes (a write).
    static func open(_ options: StorageOptions, logger: Logger, access: StoreAccess) async throws -> OpenedStorage {
        let writes = access == .create
        let configuration = try options.storageConfiguration(access: access)
        let (primaryStore, mirrorStore) = try options.openStores(configuration, access: access, logger: logger)
        let primary = SessionStore(store: primaryStore, keyring: configuration.keyring)
        try await primary.probe()
        let conditional = writes ? try await primaryStore.probeConditionalWrites() : true
        if !conditional {
            logger.warning("the store ignores conditional writes: fencing is off, two agents on one session could overwrite each other", metadata: ["store": "\(primaryStore.location)"])
        }
        var mirror: SessionMirror?
        if let mirrorStore {
            let remote = SessionStore(store: mirrorStore, keyring: configuration.keyring)
            var mirrorConditional = true
            do {
                try await remote.probe()
                if writes { mirrorConditional = try await mirrorStore.probeConditionalWrites() }
            } catch StoreError.unavailable(let reason) {
                // Hybrid mode exists for this: commit locally now, catch S3 up later.
                logger.warning("S3 is unreachable; committing to the local store and catching up later", metadata: ["reason": "\(reason)"])
            }
            mirror = SessionMirror(local: primary, remote: remote, conditionalWrites: mirrorConditional)
        }
        return OpenedStorage(configuration: configuration, primary: primary, conditionalWrites: conditional, mirror: mirror)
    }
}
