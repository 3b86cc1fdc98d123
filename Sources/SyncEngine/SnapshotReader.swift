import FoundationEssentials
import Glibc
import SessionArchive
import SessionCrypto
import SystemSupport

/// Reads snapshot objects back: decrypts, unpacks and checks each file against the manifest.
struct SnapshotReader {
    let keyring: Keyring
    let limits: ExtractionLimits

    /// Reads only the manifest (the last entry), checking every file entry against it, and with
    /// `checkingDatabases` every SQLite database in it against `PRAGMA integrity_check` (`verify`:
    /// a database is stored whole, so the one a snapshot rebuilds is the newest object's that holds it).
    func manifest(of object: ByteSource, session: SessionID, entry: SnapshotEntry, checkingDatabases: Bool = false) throws
        -> SnapshotManifest
    {
        var databases: [(name: String, capture: DatabaseCapture)] = []
        let manifest = try read(object, session: session, entry: entry) { name, data in
            // A page (its first one starts with the header) is checked once its database is put together.
            guard checkingDatabases, SQLitePages.page(name) == nil else { return try data.drain() }
            let capture = DatabaseCapture()
            try data.copy(to: capture)
            if capture.database != nil { databases.append((name, capture)) }
        }
        for (name, capture) in databases {
            _ = try SQLiteImage(checking: capture.database!, name: name, snapshot: entry.id, session: session)
        }
        return manifest
    }

    /// Streams every file entry to `visit` (name and content) and returns the manifest once
    /// the whole object has authenticated and every file matched its record. Whatever
    /// `visit` wrote must be thrown away if this throws.
    func read(
        _ object: ByteSource, session: SessionID, entry: SnapshotEntry, visit: (String, ByteSource) throws -> Void
    ) throws -> SnapshotManifest {
        let id = entry.id
        let identity = SessionLayout.identity(session, objectName: SessionLayout.snapshotName(entry))
        // The files as read, in archive order (name order, as the writer stores them, so this
        // builds in place): for a base of 100,000 files a dictionary cost more than the manifest.
        var contents = SessionState.Builder()
        var manifest: SnapshotManifest?
        do {
            let decrypted = try DecryptingSource(keyring: keyring, identity: identity, upstream: object)
            let archive = try ArchiveReader(source: decrypted, limits: limits)
            try archive.forEachEntry { entry, data in
                guard manifest == nil else {
                    throw SnapshotError.corrupt("entry \(FileName.displayed(entry.path)) follows the manifest")
                }
                if entry.path == SnapshotManifest.entryName {
                    manifest = try ManifestJSON.read(from: data)
                } else if entry.path.hasPrefix(SnapshotManifest.filePrefix), entry.kind == .file {
                    let name = String(entry.path.dropFirst(SnapshotManifest.filePrefix.count))
                    // Content ids are keyed by the key that wrote the snapshot, which may be an older one.
                    let hasher = ContentHasher(key: decrypted.key)
                    try visit(name, TeeSource(upstream: data, tee: hasher))
                    guard contents.add(name, FileRecord(size: entry.size, contentID: hasher.finalize(), fingerprint: nil)) else {
                        throw SnapshotError.corrupt("\(FileName.displayed(entry.path)) is in the archive twice")
                    }
                } else {
                    throw SnapshotError.corrupt("unexpected entry \(FileName.displayed(entry.path))")
                }
            }
            // The authentication tag of the final chunk is only checked at end of stream.
            try decrypted.drain()
        } catch let error as SnapshotError {
            throw error
        } catch CryptoError.unknownKeyID(let keyID) {
            throw SnapshotError.wrongKey("\(SessionLayout.snapshotName(entry)) of session \(session): \(CryptoError.unknownKeyID(keyID))")
        } catch let error as SystemError {
            // A local file failed (the staging directory `visit` writes, a spooled download): the
            // disk, not the snapshot.
            throw SnapshotError.io("restoring \(SessionLayout.snapshotName(entry)) of session \(session): \(error)")
        } catch {
            throw SnapshotError.corrupt("\(SessionLayout.snapshotName(entry)) of session \(session): \(error)")
        }
        guard let manifest else { throw SnapshotError.corrupt("snapshot \(id) has no manifest") }
        guard manifest.session == session.rawValue, manifest.id == id, manifest.kind == entry.kind,
            manifest.parent?.tag == entry.parentTag, manifest.parent.map({ $0.sequence + 1 == id.sequence }) ?? true
        else {
            throw SnapshotError.corrupt("snapshot \(id)'s manifest names another snapshot")
        }
        let readFiles = contents.build()
        guard readFiles.count == manifest.files.count, zip(readFiles, manifest.files).allSatisfy({ $0.name == $1.name })
        else {
            throw SnapshotError.corrupt("snapshot \(id)'s files do not match its manifest")
        }
        for ((name, read), (_, record)) in zip(readFiles, manifest.files) where read.contentID != record.contentID {
            // Same key id but another content key would also land here, so say both.
            throw SnapshotError.corrupt("\(FileName.displayed(name)) in snapshot \(id) does not match its recorded content hash")
        }
        return manifest
    }
}

/// Passes bytes through while feeding a copy to a second sink (a hasher).
private final class TeeSource: ByteSource {
    let upstream: ByteSource
    let tee: ByteSink

    init(upstream: ByteSource, tee: ByteSink) {
        self.upstream = upstream
        self.tee = tee
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = try upstream.read(into: buffer)
        try tee.write(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        return count
    }
}
