import FoundationEssentials
import Glibc

/// What is wrong with one committed snapshot, sorted by where the fault lies.
public enum SnapshotDefect: Error, Sendable, Equatable, CustomStringConvertible {
    /// The object itself: it does not decrypt (wrong key or tampered), does not unpack, a
    /// file does not match its content id, or its manifest names another snapshot.
    case corrupt(String)
    /// The head or the listing names it, but the object cannot be found.
    case missing(String)
    /// The chain to it is broken: a sequence is missing before it, or it does not name the
    /// snapshot before it as its parent.
    case brokenChain(String)
    /// Its chain rebuilds a session other than the one its manifest records.
    case stateMismatch(String)
    /// An earlier snapshot of its chain has a defect, so it cannot be restored either.
    case dependsOnDefective(SnapshotID)

    /// A stable word for reports (`--json`).
    public var reason: String {
        switch self {
        case .corrupt: "corrupt"
        case .missing: "missing"
        case .brokenChain: "broken_chain"
        case .stateMismatch: "state_mismatch"
        case .dependsOnDefective: "depends_on_defective"
        }
    }

    public var description: String {
        switch self {
        case .corrupt(let reason), .missing(let reason), .brokenChain(let reason), .stateMismatch(let reason): reason
        case .dependsOnDefective(let id): "its chain goes through defective snapshot \(id)"
        }
    }
}

/// The verdict on one committed snapshot.
public struct SnapshotCheck: Sendable, Equatable {
    public var id: SnapshotID
    public var kind: SnapshotKind
    /// nil: it restores, byte for byte, to the session its manifest records.
    public var defect: SnapshotDefect?

    public var isOK: Bool { defect == nil }
}

/// Checks a session's committed snapshots the way a restore would use them, writing
/// nothing: each object authenticates and matches its manifest, each delta follows the
/// snapshot before it, and each chain rebuilds the state its last manifest records.
public struct SnapshotVerifier: Sendable {
    public let sessionStore: SessionStore

    public init(sessionStore: SessionStore) {
        self.sessionStore = sessionStore
    }

    /// Checks every committed snapshot, or a random `sample` share of them (0 < sample ≤ 1,
    /// at least one), always including the newest. Snapshots a sampled one's chain goes
    /// through are read too, but reported only when sampled. Oldest first; empty when
    /// the session has no committed snapshot. Throws when the store cannot answer, or the
    /// head does not decrypt, is missing beside snapshots or is behind a newer committed chain
    /// (`StoredSession.newerChain`): which snapshots are committed is then unknown.
    public func verify(_ session: SessionID, sample: Double? = nil) async throws -> [SnapshotCheck] {
        guard let stored = try await sessionStore.stored(session) else { return [] }
        try stored.checkHeadIsNewest()
        let head = stored.head
        guard let latest = head.latest else { return [] }
        let history: CommittedHistory
        do {
            guard let found = try stored.committed() else { return [] }
            history = found
        } catch {
            // Nothing else is judged: without the head's own snapshot, which objects are committed is unknown.
            return [SnapshotCheck(id: latest, kind: head.latestKind ?? .delta, defect: .missing(snapshotErrorReason(error)))]
        }
        var checks: [SnapshotCheck] = []
        var reading = ManifestCache(sessionStore: sessionStore, session: session)
        for entry in Self.sampled(history.sorted, share: sample) {
            checks.append(SnapshotCheck(
                id: entry.id, kind: entry.kind, defect: try await defect(of: entry, in: history, reading: &reading)))
        }
        checks.sort { $0.id < $1.id }
        // Databases stored as pages: the newest snapshot's, put together from its chain, pass
        // `integrity_check` (a database stored whole was checked in its own object).
        if let newest = checks.indices.last, checks[newest].isOK, reading.holdsDatabasePages,
            let entry = history.snapshots[checks[newest].id.sequence], entry.kind != .tombstone
        {
            do {
                try await SessionRestorer(sessionStore: sessionStore).checkRebuilt(session, chain: try history.chain(to: entry, session: session))
            } catch let error as StoreError {
                throw error
            } catch {
                checks[newest].defect = .corrupt(snapshotErrorReason(error))
            }
        }
        return checks
    }

    private func defect(
        of entry: SnapshotEntry, in history: CommittedHistory, reading: inout ManifestCache
    ) async throws(StoreError) -> SnapshotDefect? {
        let session = reading.session
        if case .failure(let defect) = try await reading.manifest(entry) { return defect }
        let chain: [SnapshotEntry]
        do {
            chain = try history.chain(to: entry, session: session)
        } catch {
            return .brokenChain(snapshotErrorReason(error))
        }
        var manifests: [SnapshotManifest] = []
        for (index, link) in chain.enumerated() {
            let manifest: SnapshotManifest
            switch try await reading.manifest(link) {
            case .success(let read): manifest = read
            case .failure: return .dependsOnDefective(link.id)
            }
            let previous = index > 0 ? chain[index - 1].id : nil
            if !manifest.follows(previous) {
                let defect = SnapshotDefect.brokenChain(
                    "snapshot \(link.id.tagged) names \(manifest.parent?.tagged ?? "no parent") as its parent, not \(previous?.tagged ?? "nothing")")
                return link.id == entry.id ? defect : .dependsOnDefective(link.id)
            }
            manifests.append(manifest)
        }
        do {
            _ = try SnapshotManifest.rebuiltState(manifests, session: session)
            return nil
        } catch {
            return .stateMismatch(snapshotErrorReason(error))
        }
    }

    /// `ceil(share × count)` entries at random, at least one, always the newest; oldest first.
    static func sampled(_ entries: [SnapshotEntry], share: Double?) -> [SnapshotEntry] {
        guard let share, share < 1, let newest = entries.last else { return entries }
        let wanted = max(1, Int((share * Double(entries.count)).rounded(.up)))
        let others = entries.dropLast().shuffled().prefix(wanted - 1)
        return (others + [newest]).sorted { $0.id < $1.id }
    }
}

/// Each snapshot downloaded and checked at most once per verification: chains share their
/// base and earlier deltas.
private struct ManifestCache {
    let sessionStore: SessionStore
    let session: SessionID
    private var read: [SnapshotID: Result<SnapshotManifest, SnapshotDefect>] = [:]
    /// Whether a manifest read holds a page of a database stored as pages.
    private(set) var holdsDatabasePages = false

    init(sessionStore: SessionStore, session: SessionID) {
        self.sessionStore = sessionStore
        self.session = session
    }

    /// A store that cannot answer throws: that says nothing about the snapshot.
    mutating func manifest(_ entry: SnapshotEntry) async throws(StoreError) -> Result<SnapshotManifest, SnapshotDefect> {
        if let known = read[entry.id] { return known }
        let result: Result<SnapshotManifest, SnapshotDefect>
        do {
            if let manifest = try await sessionStore.manifest(session, entry, checkingDatabases: true) {
                result = .success(manifest)
                if !holdsDatabasePages { holdsDatabasePages = manifest.files.contains { SQLitePages.page($0.name) != nil } }
            } else {
                result = .failure(.missing("snapshot \(entry.id.tagged) was listed but is not in the store"))
            }
        } catch let error as StoreError {
            throw error
        } catch {
            result = .failure(.corrupt(snapshotErrorReason(error)))
        }
        read[entry.id] = result
        return result
    }
}

/// An error's message without the "corrupt snapshot:" prefix a defect's kind already says.
private func snapshotErrorReason(_ error: any Error) -> String {
    if case SnapshotError.corrupt(let reason) = error { return reason }
    return "\(error)"
}
