import Crypto
import FoundationEssentials
import Glibc
import SessionArchive

/// What restoring one session did.
public struct RestoreOutcome: Sendable, Equatable {
    public enum Status: String, Sendable, Codable {
        case restored
        /// The directory already equals the snapshot: left alone.
        case upToDate = "up_to_date"
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

    public init(sessionStore: SessionStore) {
        self.sessionStore = sessionStore
    }

    /// Counted in `sync_agent_restores_total` by status ("failed" when it throws) and timed.
    public func restore(
        _ session: SessionID, into sessionsRoot: String, target: SnapshotID? = nil, onlyIfMissing: Bool = false
    ) async throws -> RestoreOutcome {
        let started = ContinuousClock.now
        do {
            let outcome = try await restoreOrSkip(session, into: sessionsRoot, target: target, onlyIfMissing: onlyIfMissing)
            EngineMetrics.restored(status: outcome.status.rawValue, duration: .now - started)
            return outcome
        } catch {
            EngineMetrics.restored(status: "failed", duration: .now - started)
            throw error
        }
    }

    private func restoreOrSkip(
        _ session: SessionID, into sessionsRoot: String, target: SnapshotID?, onlyIfMissing: Bool
    ) async throws -> RestoreOutcome {
        let directory = "\(sessionsRoot)/\(session.rawValue)"
        if onlyIfMissing, !isMissingOrEmpty(directory) {
            return RestoreOutcome(session: session, status: .present, snapshot: nil, files: 0, bytes: 0)
        }
        guard let (head, _) = try await sessionStore.head(session), head.latest != nil else {
            return RestoreOutcome(session: session, status: .notFound, snapshot: nil, files: 0, bytes: 0)
        }
        let chain = try await sessionStore.chain(session, head: head, upTo: target)
        let newest = chain.last!
        if newest.kind == .tombstone {
            return RestoreOutcome(session: session, status: .loggedOut, snapshot: newest.id, files: 0, bytes: 0)
        }
        let objects = try await download(chain, session: session)
        let reader = SnapshotReader(keyring: sessionStore.keyring, limits: limits)
        let manifest = try reader.manifest(
            of: BufferSource(objects.last!), session: session, id: newest.id, kind: newest.kind)
        if let local = try? localState(directory), stateDigest(local) == manifest.stateDigest {
            return RestoreOutcome(
                session: session, status: .upToDate, snapshot: newest.id, files: manifest.stateFileCount,
                bytes: manifest.stateByteCount)
        }
        try DirectorySwap.replace(directory) { staging in
            try apply(chain, objects: objects, session: session, into: staging, reader: reader, expected: manifest)
        }
        return RestoreOutcome(
            session: session, status: .restored, snapshot: newest.id, files: manifest.stateFileCount,
            bytes: manifest.stateByteCount)
    }

    private func download(_ chain: [SnapshotEntry], session: SessionID) async throws -> [[UInt8]] {
        var objects = [[UInt8]](repeating: [], count: chain.count)
        try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
            var next = 0
            func start() {
                let index = next
                next += 1
                group.addTask { (index, try await sessionStore.snapshotBytes(session, chain[index])) }
            }
            for _ in 0..<min(downloadConcurrency, chain.count) { start() }
            while let (index, bytes) = try await group.next() {
                objects[index] = bytes
                if next < chain.count { start() }
            }
        }
        return objects
    }

    /// Newest snapshot first, so each file is written once, from the newest snapshot that
    /// holds it, and names a newer delta deleted are never taken from an older one.
    private func apply(
        _ chain: [SnapshotEntry], objects: [[UInt8]], session: SessionID, into staging: StagingDirectory,
        reader: SnapshotReader, expected: SnapshotManifest
    ) throws {
        var decided = Set<String>()
        var written = Set<String>()
        var manifests: [SnapshotManifest] = []
        for index in chain.indices.reversed() {
            let entry = chain[index]
            let manifest = try reader.read(BufferSource(objects[index]), session: session, id: entry.id, kind: entry.kind) {
                name, data in
                if decided.contains(name) { return try data.drain() }
                if let slash = name.lastIndex(of: "/") {
                    let parent = String(name[..<slash])
                    if !written.contains(parent + "/") {
                        try staging.makeDirectory(relativePath: parent)
                        written.insert(parent + "/")
                    }
                }
                try staging.writeFile(relativePath: name) { sink in try data.copy(to: sink) }
                written.insert(name)
            }
            let expectedParent = index > 0 ? chain[index - 1].id : nil
            if !manifest.follows(expectedParent) {
                throw SnapshotError.corrupt("snapshot \(entry.id) does not follow \(expectedParent.map(String.init(describing:)) ?? "nothing")")
            }
            decided.formUnion(manifest.files.keys)
            decided.formUnion(manifest.deleted)
            manifests.append(manifest)
        }
        let state = try SnapshotManifest.rebuiltState(manifests.reversed(), session: session)
        guard written.filter({ !$0.hasSuffix("/") }) == Set(state.keys) else {
            throw SnapshotError.corrupt("the rebuilt session \(session) has other files than snapshot \(expected.id) lists")
        }
    }

    private func isMissingOrEmpty(_ directory: String) -> Bool {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return true }
        return names.isEmpty
    }

    /// The directory's current state, by content (fingerprints differ between machines).
    private func localState(_ directory: String) throws -> SessionState {
        var state: SessionState = [:]
        let reader = StableFileReader()
        for name in try SessionFiles.scan(sessionDirectory: directory).keys {
            guard case .stable(let file) = try reader.read("\(directory)/\(name)") else {
                throw SnapshotError.io("\(name) is being written")
            }
            state[name] = FileRecord(
                size: Int64(file.bytes.count),
                contentID: sessionStore.keyring.primary.contentID(of: file.bytes), fingerprint: nil)
        }
        return state
    }
}
