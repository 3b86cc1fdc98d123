import FoundationEssentials
import Glibc
import SessionArchive
import Logging
import SessionCrypto
import SystemSupport

/// What restoring one session did.
public struct RestoreOutcome: Sendable, Equatable {
    public enum Status: String, Sendable, Codable {
        case restored
        /// The directory already equals the snapshot: left alone.
        case upToDate = "up_to_date"
        /// A dry run: the snapshot checked out, and the directory differs from it.
        case wouldRestore = "would_restore"
        /// The newest snapshot is a tombstone: the session logged out and stays gone.
        case loggedOut = "logged_out"
        /// The store has no snapshot of the session.
        case notFound = "not_found"
        /// `--if-missing` and the directory is there.
        case present
    }

    public var session: SessionID
    public var status: Status
    public var snapshot: SnapshotID?
    public var files: Int
    public var bytes: Int64
    /// Whether the restored session is paired with an account (false: its client will need a QR
    /// code); nil for a session format without credentials, or a snapshot that does not record it.
    public var registered: Bool? = nil
    /// How an acquiring restore obtained the session; nil when it did not acquire.
    public var acquired: Acquisition? = nil
}

/// Which snapshot a restore brings back.
public enum RestorePoint: Sendable, Equatable {
    /// The head's.
    case newest
    /// The committed snapshot with this sequence and generation.
    case snapshot(SnapshotLabel)
    /// The newest committed snapshot written at or before this time, as the store lists it.
    case time(Date)
}

/// A restore point the session does not have: bad input rather than a failure of the store.
public struct RestorePointError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Reason: Sendable, Equatable {
        case unknownSnapshot
        case beforeFirstSnapshot
    }

    public let reason: Reason
    public let description: String
}

/// Something other than a directory is where a session directory goes: a restore neither
/// replaces it nor writes into it (it may be someone's file, or a link elsewhere).
public struct SessionDirectoryError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Reason: String, Sendable, Equatable {
        case notADirectory = "not_a_directory"
    }

    public let reason: Reason
    public let description: String
}

/// What a restore of one session will do, decided from the head and the listing alone, before
/// any directory is touched.
public struct RestorePlan: Sendable {
    public let session: SessionID
    /// The snapshots to apply, base first; empty when `decided` is set.
    let chain: [SnapshotEntry]
    /// The committed snapshots before the one restored, newest first: where a snapshot that
    /// passes the auth-state check is looked for when that one does not.
    var earlier: [SnapshotEntry] = []
    /// Present, not found or logged out: nothing to download.
    let decided: RestoreOutcome?
}

/// Rebuilds session directories from their snapshot chains: download, verify, decrypt,
/// unpack into a staging directory next to the target, check the result against the
/// manifest, then swap it into place atomically. The target is only ever replaced by a
/// complete, verified snapshot; on any failure it is left as it was.
public struct SessionRestorer: Sendable {
    public let sessionStore: SessionStore
    public var limits = ExtractionLimits.sessionDirectory
    /// Snapshot objects downloaded at once for one session.
    public var downloadConcurrency = 8
    /// What a rebuilt session's credentials are checked against before it is swapped in.
    public var format = SessionFormat.opaque
    /// Hears, at debug level, where a restore's time went (download, unpack and swap).
    public var logger: Logger?

    public init(sessionStore: SessionStore) {
        self.sessionStore = sessionStore
    }

    /// Plans and restores in one go.
    public func restore(
        _ session: SessionID, into sessionsRoot: String, target: SnapshotLabel? = nil, onlyIfMissing: Bool = false
    ) async throws -> RestoreOutcome {
        let point = target.map(RestorePoint.snapshot) ?? .newest
        return try await restore(try await plan(session, into: sessionsRoot, at: point, onlyIfMissing: onlyIfMissing), into: sessionsRoot)
    }

    /// Finds the chain to restore. Throws `RestorePointError` when `point` names a snapshot the
    /// session does not have, or a time before its first snapshot. A failure counts as a failed
    /// restore in `sync_agent_restores_total`.
    public func plan(
        _ session: SessionID, into sessionsRoot: String, at point: RestorePoint = .newest, onlyIfMissing: Bool = false
    ) async throws -> RestorePlan {
        try await counted(status: { _ in nil }) {
            try await findChain(session, into: sessionsRoot, at: point, onlyIfMissing: onlyIfMissing)
        }
    }

    private func findChain(
        _ session: SessionID, into sessionsRoot: String, at point: RestorePoint, onlyIfMissing: Bool
    ) async throws -> RestorePlan {
        func decided(_ status: RestoreOutcome.Status, _ snapshot: SnapshotID? = nil) -> RestorePlan {
            RestorePlan(
                session: session, chain: [],
                decided: RestoreOutcome(session: session, status: status, snapshot: snapshot, files: 0, bytes: 0))
        }
        let directory = "\(sessionsRoot)/\(session.rawValue)"
        var status = stat()
        if FileName.withPlatformPath(directory, { lstat($0, &status) }) == 0, status.st_mode & S_IFMT != S_IFDIR {
            throw SessionDirectoryError(
                reason: .notADirectory,
                description: "\(FileName.displayed(directory)) is not a directory (a file or a symbolic link is there): not replacing it; move it away to restore session \(session)")
        }
        if onlyIfMissing, !isMissingOrEmpty(directory) { return decided(.present) }
        guard let stored = try await sessionStore.stored(session) else { return decided(.notFound) }
        if case .snapshot = point {
            // Named explicitly: taken from the head's history or from a newer chain above it.
        } else {
            // A head older than a chain the store holds above it was put back over a newer one
            // (a claim without a snapshot included): restoring it would roll the session's Signal
            // ratchets back ("Bad MAC" for every contact), so the session fails instead.
            try stored.checkHeadIsNewest()
        }
        guard var history = try stored.committed() else { return decided(.notFound) }
        let target: SnapshotEntry
        switch point {
        case .newest:
            target = history.latest
        case .snapshot(let label):
            if let entry = history.snapshots[label.sequence], entry.id.label == label {
                target = entry
            } else if let entry = stored.newerChain().last(where: { $0.id.label == label }) {
                // A snapshot of the newer chain above a head put back: its own history, as a head naming it has.
                var newerHead = stored.head
                newerHead.latest = entry.id
                history = try SessionStore.committed(stored.entries, head: newerHead, session: session)!
                target = entry
            } else {
                throw RestorePointError(
                    reason: .unknownSnapshot,
                    description: "session \(session) has no snapshot \(label) (`sync-agent snapshots \(session)` lists them)")
            }
        case .time(let time):
            let oldestFirst = history.sorted
            guard let entry = oldestFirst.last(where: { $0.lastModified.map { $0 <= time } ?? false }) else {
                let oldest = oldestFirst.first.map { " (its oldest, \($0.id), is from \($0.lastModified.map { $0.formatted(.iso8601) } ?? "an unknown time"))" }
                throw RestorePointError(
                    reason: .beforeFirstSnapshot,
                    description: "session \(session) has no snapshot at or before \(time.formatted(.iso8601))\(oldest ?? "")")
            }
            target = entry
        }
        if target.kind == .tombstone { return decided(.loggedOut, target.id) }
        return RestorePlan(
            session: session, chain: try history.chain(to: target, session: session),
            earlier: history.sorted.filter { $0.id < target.id }.reversed(), decided: nil)
    }

    /// Carries out a plan: downloads the chain, and unless the directory already equals the
    /// snapshot, rebuilds and swaps it in. A dry run checks the chain just as thoroughly and
    /// writes nothing. Counted in `sync_agent_restores_total` by status ("failed" when it
    /// throws) and timed.
    public func restore(_ plan: RestorePlan, into sessionsRoot: String, dryRun: Bool = false) async throws -> RestoreOutcome {
        try await counted(status: { $0.status.rawValue }) {
            try await carryOut(plan, into: sessionsRoot, dryRun: dryRun)
        }
    }

    /// Runs `body`, counting it as a restore with the status `status` gives (none: not counted)
    /// or as failed when it throws.
    private func counted<Result>(status: (Result) -> String?, _ body: () async throws -> Result) async throws -> Result {
        let started = ContinuousClock.now
        do {
            let result = try await body()
            if let status = status(result) { EngineMetrics.restored(status: status, duration: .now - started) }
            return result
        } catch {
            EngineMetrics.restored(status: "failed", duration: .now - started)
            throw error
        }
    }

    private func carryOut(_ plan: RestorePlan, into sessionsRoot: String, dryRun: Bool) async throws -> RestoreOutcome {
        do {
            return try await rebuild(plan, into: sessionsRoot, dryRun: dryRun)
        } catch var error as AuthStateError {
            error.passing = try await newestPassing(plan.earlier, session: plan.session)
            throw error
        }
    }

    /// The newest of `snapshots` (newest first) whose manifest records credentials that pass the
    /// auth-state check: each manifest costs a download, so only a failed check looks. A snapshot
    /// whose manifest records no identity (written before identities were) is not known to pass.
    private func newestPassing(_ snapshots: [SnapshotEntry], session: SessionID) async throws -> SnapshotID? {
        for entry in snapshots where entry.kind != .tombstone {
            if try await sessionStore.manifest(session, entry)?.identity?.authState == .valid { return entry.id }
        }
        return nil
    }

    private func rebuild(_ plan: RestorePlan, into sessionsRoot: String, dryRun: Bool) async throws -> RestoreOutcome {
        if let decided = plan.decided { return decided }
        let session = plan.session
        let directory = "\(sessionsRoot)/\(session.rawValue)"
        let started = ContinuousClock.now
        let objects = try await plan.chain.concurrentMap(limit: downloadConcurrency) { [sessionStore] entry in
            try await sessionStore.downloadSnapshot(session, entry)
        }
        let downloaded = ContinuousClock.now
        // Reading, extracting, fsync and syncfs block their thread for as long as the session is large.
        logger?.debug("restore download timing", metadata: [
            "session": "\(session)", "objects": "\(objects.count)", "download": "\(downloaded - started)",
        ])
        return try await runBlocking { () throws in try restore(plan, from: objects, into: directory, dryRun: dryRun) }
    }

    /// The blocking half of `carryOut`, once the chain is downloaded.
    private func restore(_ plan: RestorePlan, from objects: [DownloadedSnapshot], into directory: String, dryRun: Bool) throws
        -> RestoreOutcome
    {
        let session = plan.session
        let chain = plan.chain
        let newest = chain.last!
        let reader = SnapshotReader(keyring: sessionStore.keyring, limits: limits)
        func outcome(_ status: RestoreOutcome.Status, _ manifest: SnapshotManifest, registered: Bool?) -> RestoreOutcome {
            RestoreOutcome(
                session: session, status: status, snapshot: newest.id, files: manifest.stateFileCount,
                bytes: manifest.stateByteCount, registered: registered)
        }
        // The up-to-date check reads the newest object once before it is unpacked. A directory
        // that is missing or empty cannot be up to date, so the usual restore (a new worker, an
        // empty disk) reads each object once: that pass is most of a restore's CPU.
        if !isMissingOrEmpty(directory) {
            let manifest = try reader.manifest(of: try objects.last!.source(), session: session, entry: newest)
            if let local = try? localState(directory), local.digest(formatVersion: manifest.formatVersion) == manifest.stateDigest,
                (try? entryCount(directory)) == local.count + Self.directories(holding: local.names).count
            {
                return outcome(.upToDate, manifest, registered: format == .opaque ? nil : manifest.identity?.registered)
            }
        }
        if dryRun {
            let rebuilt = try apply(chain, objects: objects, session: session, into: nil, reader: reader)
            return outcome(.wouldRestore, rebuilt.manifest, registered: rebuilt.registered)
        }
        let rebuilt = try replace(directory, session: session, chain: chain, objects: objects)
        return outcome(.restored, rebuilt.manifest, registered: rebuilt.registered)
    }

    /// Replaces `directory` by the session the chain's downloaded objects rebuild: each object
    /// decrypted and unpacked into a staging directory beside it (files 0600 and their
    /// directories 0700, at any depth), checked against its manifest and the chain, then swapped
    /// in atomically (`DirectorySwap`). Every restore writes a session directory this way and no
    /// other (the fuzz target and the hostile-archive tests drive it). Anything refused leaves
    /// `directory` as it was and nothing beside it, and so does a session whose credentials fail
    /// the auth-state check (`AuthStateError`). Returns the newest snapshot's manifest and
    /// whether the session is paired.
    func replace(_ directory: String, session: SessionID, chain: [SnapshotEntry], objects: [DownloadedSnapshot]) throws
        -> Rebuilt
    {
        let reader = SnapshotReader(keyring: sessionStore.keyring, limits: limits)
        var restored: Rebuilt?
        let started = ContinuousClock.now
        var unpacked = started
        try DirectorySwap.replace(directory) { staging in
            restored = try apply(chain, objects: objects, session: session, into: staging, reader: reader)
            unpacked = ContinuousClock.now
        }
        logger?.debug("restore unpack timing", metadata: [
            "session": "\(session)", "unpack": "\(unpacked - started)", "sync_swap": "\(ContinuousClock.now - unpacked)",
        ])
        return restored!
    }

    /// Rebuilds the session `chain` ends in without writing it, with every check a restore runs
    /// (`verify`: a database stored as pages passes `integrity_check` only once put together).
    func checkRebuilt(_ session: SessionID, chain: [SnapshotEntry]) async throws {
        let objects = try await chain.concurrentMap(limit: downloadConcurrency) { [sessionStore] entry in
            try await sessionStore.downloadSnapshot(session, entry)
        }
        let reader = SnapshotReader(keyring: sessionStore.keyring, limits: limits)
        _ = try await runBlocking { () throws in try apply(chain, objects: objects, session: session, into: nil, reader: reader) }
    }

    /// A session rebuilt from its chain, checked: its newest manifest, and whether it is paired.
    struct Rebuilt {
        var manifest: SnapshotManifest
        var registered: Bool?
    }


    /// Newest snapshot first, so each file is written once, from the newest snapshot that
    /// holds it, and names a newer delta deleted are never taken from an older one. Without a
    /// staging directory (a dry run) every check runs and the contents are only read. SQLite
    /// databases pass `PRAGMA integrity_check` (`corrupt`), then the credentials are checked last
    /// (`SessionFormat.checkAuthState`): `creds.json`, or without it a database's creds row.
    private func apply(
        _ chain: [SnapshotEntry], objects: [DownloadedSnapshot], session: SessionID, into staging: StagingDirectory?,
        reader: SnapshotReader
    ) throws -> Rebuilt {
        var decided = Set<NameKey>()
        var written = Set<NameKey>()
        var manifests: [SnapshotManifest] = []
        var credentials: CredentialsCapture?
        var databases: [(name: String, capture: DatabaseCapture)] = []
        /// The pages of databases stored as pages, by database and index (from 1).
        var pages: [String: [Int: [UInt8]]] = [:]
        for index in chain.indices.reversed() {
            let entry = chain[index]
            let manifest = try reader.read(try objects[index].source(), session: session, entry: entry) {
                name, data in
                let nameBytes = NameKey(name)
                if decided.contains(nameBytes) { return try data.drain() }
                if let page = SQLitePages.page(name) {
                    // Put together into one file once every snapshot of the chain is read.
                    let collected = BufferSink()
                    try data.copy(to: collected)
                    pages[page.database, default: [:]][page.index] = collected.bytes
                    written.insert(nameBytes)
                    return
                }
                let databaseCapture = name == format.credentialsFile ? nil : DatabaseCapture()
                let capture: any CapturingSink = databaseCapture ?? CredentialsCapture()
                if databaseCapture == nil { credentials = capture as? CredentialsCapture }
                // Its directories, at any depth, are created (0700) as the file is.
                try staging?.writeFile(relativePath: name) { sink in
                    capture.downstream = sink
                    try data.copy(to: capture)
                }
                written.insert(nameBytes)
                if staging == nil { try data.copy(to: capture) }
                if let databaseCapture, databaseCapture.database != nil { databases.append((name, databaseCapture)) }
            }
            let expectedParent = index > 0 ? chain[index - 1].id : nil
            if !manifest.follows(expectedParent) {
                throw SnapshotError.corrupt("snapshot \(entry.id.tagged) does not follow \(expectedParent?.tagged ?? "nothing")")
            }
            decided.formUnion(manifest.files.names.map(NameKey.init))
            decided.formUnion(manifest.deleted.map(NameKey.init))
            manifests.append(manifest)
        }
        let state = try SnapshotManifest.rebuiltState(manifests.reversed(), session: session)
        guard written == Set(state.names.map(NameKey.init)) else {
            throw SnapshotError.corrupt("the rebuilt session \(session) has other files than snapshot \(chain.last!.id) lists")
        }
        let snapshot = chain.last!.id
        // Each database as the snapshot holds it: whole, one file, checked before the swap.
        var images: [(name: String, image: SQLiteImage)] = []
        var wholeDatabases = databases.map { ($0.name, $0.capture.database!) }
        for (name, pagesByIndex) in pages {
            guard !written.contains(NameKey(name)) else {
                throw SnapshotError.corrupt("snapshot \(snapshot) holds the database \(FileName.displayed(name)) both whole and as pages")
            }
            var image: [UInt8] = []
            for index in 1...pagesByIndex.count {
                guard let page = pagesByIndex[index] else {
                    throw SnapshotError.corrupt("the database \(FileName.displayed(name)) in snapshot \(snapshot) lacks its page \(index)")
                }
                image += page
            }
            try staging?.writeFile(relativePath: name) { sink in try image.withUnsafeBytes { try sink.write($0) } }
            wholeDatabases.append((name, image))
        }
        for (name, bytes) in wholeDatabases.sorted(by: { SessionState.precedes($0.0, $1.0) }) {
            images.append((name, try SQLiteImage(checking: bytes, name: name, snapshot: snapshot, session: session)))
        }
        var credentialsBytes = credentials?.bytes
        var source = BaileysCredentials.fileName
        if credentials == nil, format.credentialsFile != nil, !images.isEmpty {
            let limit = BaileysCredentials.maximumByteCount + 1
            let found = images.lazy.compactMap { database in database.image.credentials(limit: limit).map { (database.name, $0) } }.first
            credentialsBytes = found?.1
            source = "the creds row of \(found.map { FileName.displayed($0.0) } ?? images.map { FileName.displayed($0.name) }.joined(separator: ", "))"
        }
        let registered = try format.checkAuthState(credentials: credentialsBytes, source: source, session: session, snapshot: snapshot)
        return Rebuilt(manifest: manifests[0], registered: registered)
    }

    private func isMissingOrEmpty(_ directory: String) -> Bool {
        // Through `SessionFiles`, which passes the name's bytes: Foundation would pass the UTF-8 of
        // the escapes of a name that is not UTF-8 and find nothing there.
        guard let entries = try? SessionFiles.entries(of: directory) else { return true }
        return entries.isEmpty
    }

    /// Everything under `directory`, of any kind, at any depth. Up to date means identical: a
    /// directory whose files match the snapshot but which also holds anything the snapshot does
    /// not (a symbolic link, a FIFO, a file `localState` skips, an empty directory) differs.
    private func entryCount(_ directory: String) throws -> Int {
        var count = 0
        for entry in try SessionFiles.entries(of: directory) {
            count += 1
            if entry.kind == .directory { count += try entryCount(directory + "/" + entry.name) }
        }
        return count
    }

    /// The directories the files `names` need: every proper prefix of each name ending before a "/".
    private static func directories(holding names: [String]) -> Set<Substring> {
        var directories: Set<Substring> = []
        for name in names {
            for index in name.indices where name[index] == "/" { directories.insert(name[..<index]) }
        }
        return directories
    }

    /// The directory's current state, by content (fingerprints differ between machines).
    private func localState(_ directory: String) throws -> SessionState {
        var files = SessionState.Builder()
        let reader = StableFileReader()
        for (name, _) in try SessionFiles.scan(sessionDirectory: directory) {
            guard case .stable(let file) = try reader.read("\(directory)/\(name)") else {
                throw SnapshotError.io("\(FileName.displayed(name)) is being written")
            }
            _ = files.add(
                name,
                FileRecord(
                    size: Int64(file.bytes.count), contentID: sessionStore.keyring.primary.contentID(of: file.bytes),
                    fingerprint: nil))
        }
        return files.build()
    }
}

/// A sink that keeps what a check needs of a restored file and passes everything on to `downstream`
/// (nil in a dry run).
protocol CapturingSink: ByteSink, AnyObject {
    var downstream: ByteSink? { get set }
}

extension DatabaseCapture: CapturingSink {}

/// Keeps the first bytes of the credentials file as it is restored, up to one byte past what the
/// format reads (so a larger file is known to be), and passes everything on to `downstream`.
private final class CredentialsCapture: CapturingSink {
    var downstream: ByteSink?
    private(set) var bytes: [UInt8] = []

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        let room = BaileysCredentials.maximumByteCount + 1 - bytes.count
        if room > 0 { bytes += chunk.prefix(room) }
        try downstream?.write(chunk)
    }
}
