import SessionCrypto
import FoundationEssentials
import Glibc
import Logging
import SystemSupport

/// When a new base replaces a growing chain of deltas.
public struct CompactionPolicy: Sendable {
    /// A new base once the deltas since the last base add up to this share of its size.
    public var deltaToBaseRatio = 1.0
    /// A new base after this many deltas whatever their size, to bound restore work.
    public var maxChainLength = 500
    /// An acquired session (a move) whose chain holds this many deltas gets a base as its new
    /// holder's first snapshot, written at once after the acquire, changed or not. Every move
    /// restores the whole chain, and the holder changing did not shorten it: moved back and forth,
    /// a session reached a base and a hundred deltas (`maxChainLength` is for a session that
    /// stays), and the next acquire downloaded them all.
    public var maxChainLengthAfterAcquire = 8
    /// Applied after each new base: what stays of the session's history. A configured policy
    /// (`--keep-*`) replaces the default, so the replicator and `prune` keep the same snapshots.
    public var retention = RetentionPolicy.compactionDefault

    public init() {}
}

/// What one sync of a session did.
public enum SyncResult: Sendable, Equatable {
    /// Nothing to upload; `unsettled` files were mid-write and kept their last good version.
    case unchanged(unsettled: [String])
    case uploaded(SnapshotID, SnapshotKind, bytes: Int64, unsettled: [String])
}

/// Keeps one session's snapshots in a store up to date with its directory, as the one
/// writer of that session: it claims the session by raising the head's generation, writes
/// each snapshot object, then commits it by a conditional write of the head. A head whose
/// generation moved means another agent claimed the session: this one stops (fenced).
public actor SessionReplicator {
    public nonisolated let session: SessionID
    public nonisolated let directory: String
    private let sessionStore: SessionStore
    private let writer: SnapshotWriter
    private let owner: String
    /// The agent this process is (`AgentIdentity.id`): its claims name it as the holder, and it
    /// claims no session another agent holds. Nil: claims name no holder and take any session.
    private let agent: String?
    private let policy: CompactionPolicy
    private let conditionalWrites: Bool
    private let claimsOwnership: Bool
    /// Hybrid mode: the generation S3 knows, which a claim in the local store must pass.
    private let remoteGeneration: (@Sendable () async throws -> UInt64?)?
    /// Shared by the replicators of one agent: how many bases are built at once (see `sync`).
    private let baseBuilds: ConcurrencyLimit?
    /// Where the state of each commit and load is kept, so the next claim of the same snapshot
    /// reads it instead of the chain (`StateCache`); nil: every claim reads the chain.
    private let stateCache: StateCache?
    /// The newest state not in the state cache yet, and the task writing it: written behind the
    /// commits, one at a time, the newest winning, so a busy session's uploads never wait for its
    /// cache (a whole manifest of the session, encoded and fsynced) and skip the states between.
    private var unsavedState: StateCache.Entry?
    private var savingState: Task<Void, Never>?
    /// The session was just acquired and not synced since: the first sync writes a base when the
    /// chain is `policy.maxChainLengthAfterAcquire` deltas long (see `compactionDue`).
    private var acquired: Bool
    /// One operation (`claim`, `sync`, `tombstone`) at a time: each reads the head and state, awaits
    /// (the snapshot build, the store) and writes them back, and the actor lets other calls in at
    /// every await. Two syncs interleaved there would both write the sequence after the same head.
    private let operations = ConcurrencyLimit(1)
    private let logger: Logger

    private var state = SessionState() {
        didSet {
            health.files = state.count
            health.bytes = state.byteCount
            health.preKeys = format.preKeyCount(state)
        }
    }
    /// Whether the state keeps its digest, so that an upload's digest costs what changed (tests).
    var keepsStateDigest: Bool { state.keepsDigest }
    /// The session's identity after the latest snapshot, when known (`SessionFormat`).
    public private(set) var identity: SessionIdentity? {
        didSet { health.identity = identity }
    }
    /// The latest snapshot's size, identity and pre-keys.
    public private(set) var health = SessionHealth()
    private let format: SessionFormat
    private var baseBytes: Int64 = 0
    private var deltaBytes: Int64 = 0
    private var deltaCount = 0
    public private(set) var fencedBy: String?
    /// Set by `release`: the session is another agent's to acquire, and this replicator commits
    /// nothing more (an upload queued before the release that runs after it uploads nothing).
    private var released = false
    /// What the retention policy deleted after the last base, for `backup`'s summary.
    public private(set) var lastPrune: PruneOutcome?
    /// Files the snapshots leave out (over the size limit, unreadable), by name: as the last sync
    /// that looked at each found it. A sync of reported paths leaves the others as they were.
    private var skipped: [String: SkippedFile] = [:]

    /// The files left out, sorted by name.
    public var skippedFiles: [SkippedFile] { skipped.keys.sorted().map { skipped[$0]! } }

    /// `claimsOwnership`: the sidecar claims its sessions (fencing any other writer); a
    /// scheduled `backup` beside it joins the current owner's generation instead, so the
    /// two cooperate through the head's conditional writes rather than fence each other.
    /// `largeBasesOnWorkerThread`: speed over memory for large bases (`backup`; see SnapshotWriter).
    /// `acquired`: the session was acquired from another holder (or a released head) just now.
    public init(
        session: SessionID, directory: String, sessionStore: SessionStore, owner: String, agent: String? = nil,
        conditionalWrites: Bool, claimsOwnership: Bool = true, compressionLevel: Int = 3,
        largeBasesOnWorkerThread: Bool = false, format: SessionFormat = .opaque,
        policy: CompactionPolicy = CompactionPolicy(),
        remoteGeneration: (@Sendable () async throws -> UInt64?)? = nil, baseBuilds: ConcurrencyLimit? = nil,
        stateCache: StateCache? = nil, acquired: Bool = false, logger: Logger
    ) {
        self.session = session
        self.directory = directory
        self.sessionStore = sessionStore
        self.writer = SnapshotWriter(
            keyring: sessionStore.keyring, compressionLevel: compressionLevel,
            largeBasesOnWorkerThread: largeBasesOnWorkerThread, format: format)
        self.owner = owner
        self.agent = agent
        self.format = format
        self.policy = policy
        self.conditionalWrites = conditionalWrites
        self.claimsOwnership = claimsOwnership
        self.remoteGeneration = remoteGeneration
        self.baseBuilds = baseBuilds
        self.stateCache = stateCache
        self.acquired = acquired
        self.logger = logger
    }

    /// The committed snapshot this writer last wrote or loaded.
    public var latest: SnapshotID? { head?.head.latest }

    private var head: (head: SessionHead, etag: String)? {
        didSet { health.identityChangedAt = head?.head.identityHold?.since }
    }

    /// The latest committed snapshot and when the head last moved (its commit, or a claim since).
    public var lastCommit: (snapshot: SnapshotID, at: Date)? {
        guard let head = head?.head, let latest = head.latest else { return nil }
        return (latest, head.updatedAt)
    }

    /// Claims the session (generation + 1; or joins the current generation when not
    /// `claimsOwnership`) and loads the state of its latest snapshot, so
    /// the next sync uploads only what changed since, including changes made while no
    /// agent ran.
    public func claim() async throws {
        try await oneAtATime { try await claimSession() }
    }

    private func claimSession() async throws {
        // The first write to a session of format version 2 moves it to its keyed place.
        try await sessionStore.prepareForWriting(session, conditionalWrites: conditionalWrites)
        while true {
            let current = try await sessionStore.head(session)
            if let agent, let current, let holder = current.head.agent, !current.head.isTombstoned,
                holder != agent
            {
                // Another agent holds it, or released it to be acquired: only an acquire (a restore
                // before the worker runs the session) takes it, never a directory found here (by
                // `watch` or `backup`), which may be older than what that agent committed.
                fencedBy = "agent \(holder)"
                logger.error("session held by another agent; not writing it (an acquire takes it over)", metadata: [
                    "session": "\(session)", "holder": "\(holder)",
                ])
                throw SnapshotError.fenced(session: session.rawValue, by: "agent \(holder)")
            }
            if let current, !claimsOwnership {
                try await load(current)
                return
            }
            let claimed = (current?.head ?? .unclaimed(at: Date())).claimed(
                owner: owner, agent: agent, above: try await generationElsewhere(), at: Date())
            let condition: WriteCondition? =
                conditionalWrites ? (current.map { .ifMatch(etag: $0.etag) } ?? .ifAbsent) : nil
            do {
                let etag = try await sessionStore.writeHead(claimed, session: session, condition: condition)
                try await load((claimed, etag))
                fencedBy = nil
                return
            } catch StoreError.preconditionFailed {
                continue  // another claim landed in between: read the head again and claim over it
            }
        }
    }

    /// S3's generation in hybrid mode; while S3 is unreachable, the claim goes ahead locally
    /// and the mirror finds out later whether another agent took the session meanwhile.
    private func generationElsewhere() async throws -> UInt64 {
        guard let remoteGeneration else { return 0 }
        do {
            return try await remoteGeneration() ?? 0
        } catch let error as StoreError {
            guard case .unavailable = error else { throw error }
            logger.warning("S3 unreachable while claiming; claiming in the local store", metadata: [
                "session": "\(session)", "error": "\(error)",
            ])
            return 0
        }
    }

    /// Takes `loaded` as the head and loads the state of its latest snapshot. All or nothing: a
    /// read failing halfway (the store failing) leaves no head, so the next sync loads again.
    /// Keeping the head with half a state wrote the next delta against the wrong files: it named
    /// no deletions of files the state had missed, and its chain restored a different session
    /// than its manifest recorded (FaultInjectionTests, cut answers: verify's state_mismatch).
    private func load(_ loaded: (head: SessionHead, etag: String)) async throws {
        do {
            var loadedState: StateCache.Entry?
            if let latest = loaded.head.latest, !loaded.head.isTombstoned {
                if let cached = await cachedState(of: latest) {
                    loadedState = cached
                } else {
                    loadedState = try await chainState(of: loaded.head, latest: latest)
                }
            }
            head = loaded
            state = loadedState?.state ?? SessionState()
            // Kept from now on, so that each upload's digest costs what changed (the load read
            // every file's line anyway, and the cache's and the chain's checks keep it already).
            state.keepDigest()
            identity = loadedState?.identity
            (baseBytes, deltaBytes, deltaCount) = (loadedState?.baseBytes ?? 0, loadedState?.deltaBytes ?? 0, loadedState?.deltaCount ?? 0)
        } catch {
            head = nil
            throw error
        }
    }

    /// The state after `latest` as its chain rebuilds it, every snapshot downloaded and checked;
    /// kept in the state cache for the next claim.
    private func chainState(of head: SessionHead, latest: SnapshotID) async throws -> StateCache.Entry {
        var loaded = StateCache.Entry(snapshot: latest, state: SessionState(), identity: nil, baseBytes: 0, deltaBytes: 0, deltaCount: 0)
        for entry in try await sessionStore.chain(session, head: head) {
            guard let manifest = try await sessionStore.manifest(session, entry) else {
                throw SnapshotError.corrupt("snapshot \(entry.id) of session \(session) vanished from the store")
            }
            loaded.state = manifest.applied(to: loaded.state)
            loaded.identity = manifest.identity
            if entry.kind == .base {
                loaded.baseBytes = entry.size
            } else {
                loaded.deltaBytes += entry.size
                loaded.deltaCount += 1
            }
        }
        keepInStateCache(loaded)
        return loaded
    }

    /// The state cache's entry for `latest`, when it has exactly that snapshot's; nil (a miss,
    /// counted and said at debug level) otherwise.
    private func cachedState(of latest: SnapshotID) async -> StateCache.Entry? {
        guard let stateCache, let place = try? await sessionStore.place(session), place.isKeyed else { return nil }
        let session = session
        let found = await runBlocking { stateCache.read(session, place: place, snapshot: latest) }
        switch found {
        case .success(let entry):
            EngineMetrics.stateCacheRead(hit: true)
            return entry
        case .failure(let miss):
            EngineMetrics.stateCacheRead(hit: false)
            logger.debug("state cache not used; reading the session's chain from the store", metadata: [
                "session": "\(session)", "reason": "\(miss)",
            ])
            return nil
        }
    }

    /// Keeps `entry` in the state cache, behind the caller (`unsavedState`), `stateCacheDelay`
    /// later or at `stateCacheSaved()`, whichever is first: a cache is rewritten whole, and
    /// rewriting it at every commit (65 a second over 50 sessions in `bench/sidecar`) doubled the
    /// agent's CPU. Only a restart after a kill within that delay reads the session's chain.
    private func keepInStateCache(_ entry: StateCache.Entry) {
        guard stateCache != nil else { return }
        unsavedState = entry
        if savingState == nil {
            savingState = Task {
                // Cut short (cancelled) by `stateCacheSaved()`.
                try? await Task.sleep(for: Self.stateCacheDelay)
                await saveStateCache()
            }
        }
    }

    static let stateCacheDelay = Duration.seconds(10)

    /// Writes the newest unsaved state until there is none. A failure costs the next claim a read
    /// of the chain, and is said at debug level and counted: the commit stands.
    private func saveStateCache() async {
        while let entry = unsavedState, let stateCache {
            unsavedState = nil
            let session = session
            do {
                let place = try await sessionStore.place(session)
                guard place.isKeyed else { continue }
                try await runBlocking { () throws in try stateCache.write(entry, session: session, place: place) }
            } catch {
                EngineMetrics.stateCacheWriteFailed()
                logger.debug("state cache not written", metadata: ["session": "\(session)", "error": "\(error)"])
            }
        }
        savingState = nil
    }

    /// Returns once the state of the last commit or load is in the state cache (or failed to be),
    /// written now rather than after its delay.
    public func stateCacheSaved() async {
        savingState?.cancel()
        await savingState?.value
    }

    /// When the reads of the last snapshot written began, after any wait for a pause in its
    /// writer's writes: whatever was written before then is in it (the log says it, for the lag).
    public private(set) var lastSnapshotReadsStarted: ContinuousClock.Instant?

    /// What a sync leaves for its caller's records, read in one call (one hop to this actor
    /// after every upload, not one per field).
    public struct Aftermath: Sendable {
        public var lastCommit: (snapshot: SnapshotID, at: Date)?
        public var health: SessionHealth
        public var skippedFiles: [SkippedFile]
        public var snapshotReadsStarted: ContinuousClock.Instant?
    }

    public var aftermath: Aftermath {
        Aftermath(lastCommit: lastCommit, health: health, skippedFiles: skippedFiles, snapshotReadsStarted: lastSnapshotReadsStarted)
    }

    /// Uploads what changed since the last snapshot, if anything; a base when the chain
    /// has grown past the compaction policy or `forceBase` is set.
    ///
    /// `changedPaths`: what the watcher reported since the last sync, so a delta reads only
    /// those; nil reads the whole directory. `pause`: a session being written is taken between
    /// two of its writer's transactions (see `WritePause`); nil takes it as it is.
    /// `changesDuringSync`: when the writer deferred the snapshot, the paths changed since the
    /// sync started (the watcher's), which it then reads too; nil there, or no function, and it
    /// compares the whole directory.
    public func sync(
        forceBase: Bool = false, changedPaths: Set<String>? = nil, pause: WritePause? = nil,
        changesDuringSync: (@Sendable () async -> Set<String>?)? = nil
    ) async throws -> SyncResult {
        try await oneAtATime {
            try await syncSession(forceBase: forceBase, changedPaths: changedPaths, pause: pause, changesDuringSync: changesDuringSync)
        }
    }

    private func syncSession(
        forceBase: Bool, changedPaths: Set<String>?, pause: WritePause?, changesDuringSync: (@Sendable () async -> Set<String>?)?
    ) async throws -> SyncResult {
        var changedPaths = changedPaths
        let started = ContinuousClock.now
        if let fencedBy { throw SnapshotError.fenced(session: session.rawValue, by: fencedBy) }
        if released { return .unchanged(unsettled: []) }
        if head == nil { try await claimSession() }
        while true {
            let current = head!
            let previous = current.head.latest
            let id = nextID(after: current.head)
            var kind: SnapshotKind = forceBase || previous == nil || current.head.isTombstoned || compactionDue ? .base : .delta
            let written: (outcome: SnapshotWriter.Outcome, spool: SnapshotSpool)
            // A base reads and compresses every file of its session, and zstd's window and tables
            // alone take a few MiB: when every session needs its first base at once (an agent's
            // first start), those builds add up to the agent's peak memory. So bases take turns
            // (the uploads after them still overlap); a delta compresses a few files.
            let turn = kind == .base ? baseBuilds : nil
            await turn?.acquire()
            // Past its patience, a snapshot takes the session as it is.
            let awaitedPause = pause.flatMap { $0.isPatient(after: .now - started) ? $0 : nil }
            let readsStarted = ContinuousClock.now
            do {
                do {
                    defer { turn?.release() }
                    written = try await writeSnapshot(
                        kind: kind, id: id, parent: previous, changedPaths: changedPaths, pause: awaitedPause)
                } catch SnapshotWriter.Failure.baseIncomplete where previous != nil && !current.head.isTombstoned {
                    // Files mid-write cannot go into a base; a delta keeps their last good version.
                    // A spool of its own: the abandoned base may have written part of an archive.
                    kind = .delta
                    written = try await writeSnapshot(kind: kind, id: id, parent: previous, changedPaths: nil, pause: awaitedPause)
                }
            } catch SnapshotWriter.Failure.writtenDuringReads(let lastWrite) {
                let wait = awaitedPause!.remaining(afterWriteAt: lastWrite, now: SnapshotWriter.epochNanoseconds())
                logger.trace("session being written; snapshot deferred", metadata: ["session": "\(session)", "wait": "\(wait)"])
                try await Task.sleep(for: wait)
                // What was written meanwhile joins this snapshot: the paths it started with alone
                // could take part of a transaction that began during its reads.
                if let started = changedPaths, let meanwhile = await changesDuringSync?() {
                    changedPaths = started.addingReportedPaths(meanwhile)
                } else {
                    changedPaths = nil
                }
                continue
            }
            if pause != nil, awaitedPause == nil {
                logger.debug("session still written after the pause's patience; snapshot taken as it is", metadata: ["session": "\(session)"])
                EngineMetrics.takenWhileWritten()
            }
            let (outcome, spool) = written
            lastSnapshotReadsStarted = readsStarted
            recordSkipped(outcome)
            guard outcome.manifest != nil else {
                // The same files: an identity learnt from them (the first look at a session whose
                // snapshots record none) describes the state, and the next snapshot records it.
                identity = outcome.identity
                acquired = false
                return .unchanged(unsettled: outcome.unsettled)
            }

            let entry = SnapshotEntry(id: id, kind: kind, parentTag: previous?.tag, size: spool.size, lastModified: nil)
            try await sessionStore.putSnapshot(session, entry, spool: spool)
            var next = current.head
            // A commit is the holder writing the session again: it is no longer released.
            next.released = nil
            next.latest = id
            next.latestKind = kind
            next.base = kind == .base ? id : current.head.base
            next.updatedAt = Date()
            if outcome.replacesRegisteredIdentity, let previous {
                // The snapshot is still taken (the directory is the truth); the last one with the
                // registered identity stays until a logout or `prune --forget-identity`.
                next.identityHold = IdentityHold(snapshot: previous, since: next.updatedAt)
            }
            do {
                let etag = try await sessionStore.writeHead(
                    next, session: session, condition: conditionalWrites ? .ifMatch(etag: current.etag) : nil)
                head = (next, etag)
            } catch StoreError.preconditionFailed {
                try await headMoved()
                changedPaths = nil  // the state is now another writer's: compare everything
                continue
            }
            state = outcome.state
            identity = outcome.identity
            if let hold = next.identityHold, outcome.replacesRegisteredIdentity {
                EngineMetrics.identityChanged()
                logger.warning(
                    "the session's registered identity was replaced (creds.json missing, unregistered or another identity); keeping its last snapshot with it",
                    metadata: ["session": "\(session)", "kept": "\(hold.snapshot)", "registered": "\(identity?.registered ?? false)"])
            }
            let size = spool.size
            if kind == .base {
                (baseBytes, deltaBytes, deltaCount) = (size, 0, 0)
                await applyRetention()
            } else {
                deltaBytes += size
                deltaCount += 1
            }
            keepInStateCache(StateCache.Entry(
                snapshot: id, state: state, identity: identity, baseBytes: baseBytes, deltaBytes: deltaBytes, deltaCount: deltaCount))
            acquired = false
            return .uploaded(id, kind, bytes: size, unsettled: outcome.unsettled)
        }
    }

    /// Writes the next snapshot into a new spool, off the cooperative pool (`runBlocking`): it
    /// reads, hashes and compresses files. No other operation of this replicator runs meanwhile
    /// (`operations`).
    private func writeSnapshot(
        kind: SnapshotKind, id: SnapshotID, parent: SnapshotID?, changedPaths: Set<String>?, pause: WritePause?
    ) async throws -> (outcome: SnapshotWriter.Outcome, spool: SnapshotSpool) {
        let (writer, session, directory, state, identity) = (writer, session, directory, state, identity)
        return try await runBlocking {
            let spool = SnapshotSpool()
            let outcome = try writer.write(
                session: session, directory: directory, previous: state, previousIdentity: identity, kind: kind, id: id,
                parent: parent, changedPaths: changedPaths, pause: pause, openSink: { spool })
            return (outcome, spool)
        }
    }

    private func recordSkipped(_ outcome: SnapshotWriter.Outcome) {
        if let examined = outcome.examined {
            // A directory left out is taken again once a file below it was read.
            for name in examined {
                skipped[name] = nil
                for directory in skipped.keys where name.utf8.starts(with: (directory + "/").utf8) { skipped[directory] = nil }
            }
        } else {
            skipped = [:]
        }
        skipped.merge(outcome.skipped) { $1 }
    }

    /// Records that the session directory is gone (logout), so no restore brings it back.
    public func tombstone() async throws {
        try await oneAtATime { try await tombstoneSession() }
    }

    private func tombstoneSession() async throws {
        if let fencedBy { throw SnapshotError.fenced(session: session.rawValue, by: fencedBy) }
        if released { return }
        if head == nil { try await claimSession() }
        while true {
            let current = head!
            guard !current.head.isTombstoned else { return }
            let previous = current.head.latest
            let id = nextID(after: current.head)
            let (writer, session) = (writer, session)
            // Compressing and encrypting, however little, off the cooperative pool like every snapshot.
            let spool = try await runBlocking { () throws in
                let spool = SnapshotSpool()
                _ = try writer.tombstone(session: session, id: id, parent: previous, to: spool)
                return spool
            }
            let entry = SnapshotEntry(id: id, kind: .tombstone, parentTag: previous?.tag, size: spool.size, lastModified: nil)
            try await sessionStore.putSnapshot(session, entry, spool: spool)
            var next = current.head
            // A commit is the holder writing the session again: it is no longer released.
            next.released = nil
            next.latest = id
            next.latestKind = .tombstone
            next.updatedAt = Date()
            // A logout ends what an identity hold waited for.
            next.identityHold = nil
            do {
                let etag = try await sessionStore.writeHead(
                    next, session: session, condition: conditionalWrites ? .ifMatch(etag: current.etag) : nil)
                head = (next, etag)
                state = SessionState()
                identity = nil
                if let stateCache, let place = try? await sessionStore.place(session) {
                    await stateCacheSaved()
                    stateCache.remove(place: place)
                }
                return
            } catch StoreError.preconditionFailed {
                try await headMoved()
            }
        }
    }

    /// Marks the head released, naming the latest committed snapshot, by a conditional write like a
    /// commit: the session is then another agent's to acquire. The caller commits everything first
    /// and uploads nothing after. Releasing a released head writes nothing. Returns the released head.
    public func release() async throws -> SessionHead {
        try await oneAtATime {
            if let fencedBy { throw SnapshotError.fenced(session: session.rawValue, by: fencedBy) }
            if head == nil { try await claimSession() }
            while true {
                let current = head!
                if current.head.released != nil {
                    released = true
                    return current.head
                }
                var next = current.head
                next.released = SessionHead.Release(snapshot: current.head.latest, at: Date())
                next.updatedAt = next.released!.at
                do {
                    let etag = try await sessionStore.writeHead(
                        next, session: session, condition: conditionalWrites ? .ifMatch(etag: current.etag) : nil)
                    head = (next, etag)
                    released = true
                    return next
                } catch StoreError.preconditionFailed {
                    try await headMoved()
                }
            }
        }
    }

    /// Runs `operation` once every operation started before it has finished.
    private func oneAtATime<Value: Sendable>(_ operation: () async throws -> Value) async throws -> Value {
        await operations.acquire()
        defer { operations.release() }
        return try await operation()
    }

    /// The snapshot after the head's latest, with a tag of its own: another writer (a `backup`
    /// beside `watch`) or a retry of a commit whose reply was lost may write the same sequence
    /// and generation, and must never overwrite this object, committed or not.
    private func nextID(after head: SessionHead) -> SnapshotID {
        SnapshotID(sequence: (head.latest?.sequence ?? 0) + 1, generation: head.generation, tag: .random())
    }

    /// The head changed under us. A new generation means another agent claimed the session:
    /// stop. The same generation means a cooperating writer on our side (a `backup` run)
    /// committed a snapshot: continue from it.
    private func headMoved() async throws {
        guard let current = try await sessionStore.head(session) else {
            throw SnapshotError.corrupt("the head of session \(session) disappeared")
        }
        guard current.head.generation == head?.head.generation else {
            fencedBy = current.head.owner
            logger.error("session claimed by another agent; no longer writing it", metadata: [
                "session": "\(session)", "owner": "\(current.head.owner)",
                "generation": "\(current.head.generation)",
            ])
            throw SnapshotError.fenced(session: session.rawValue, by: current.head.owner)
        }
        try await load(current)
    }

    /// Not while a file of the state (or a directory holding some) is skipped: a base must hold it, so every attempt would read
    /// and compress the whole session only to fall back to a delta. The chain grows until it can be read.
    private var compactionDue: Bool {
        guard !skipped.keys.contains(where: { state[$0] != nil || !state.names(inDirectory: $0).isEmpty }) else { return false }
        return deltaCount >= (acquired ? min(policy.maxChainLength, policy.maxChainLengthAfterAcquire) : policy.maxChainLength)
            || Double(deltaBytes) >= Double(max(baseBytes, 1)) * policy.deltaToBaseRatio
    }

    /// Deletes what the retention policy no longer keeps. Best effort: a failure leaves extra
    /// objects, never a broken chain, and the next base tries again.
    private func applyRetention() async {
        do {
            let outcome = try await SnapshotPruner(sessionStore: sessionStore).prune(session, policy: policy.retention)
            lastPrune = outcome
            let deleted = outcome.plan.deletedCount
            if deleted > 0 {
                logger.info("pruned", metadata: ["session": "\(session)", "deleted": "\(deleted)", "kept": "\(outcome.plan.kept.count)"])
            }
        } catch {
            logger.warning("could not delete old snapshots", metadata: ["session": "\(session)", "error": "\(error)"])
        }
    }
}
