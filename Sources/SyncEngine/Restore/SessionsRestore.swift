import FoundationEssentials
import Logging
import SessionArchive
import SystemSupport

/// The stores sessions are read back from: the primary store and, in hybrid mode, its S3 copy,
/// of which a restore reads the newer.
public struct RestoreSources: Sendable {
    /// Where sessions are committed (and restored from, but in hybrid mode).
    public let primary: SessionStore
    /// Hybrid mode: the S3 copy behind the local store.
    public let mirror: SessionMirror?

    public init(primary: SessionStore, mirror: SessionMirror?) {
        self.primary = primary
        self.mirror = mirror
    }

    /// The store to restore a session from: in hybrid mode, the newer copy.
    public func store(for session: SessionID) async throws -> SessionStore {
        guard let mirror else { return primary }
        return try await mirror.newest(session)
    }

    /// Every session either store holds.
    public func sessions() async throws -> [SessionID] {
        var sessions = Set(try await primary.sessions())
        if let mirror { sessions.formUnion(try await mirror.remote.sessions()) }
        return sessions.sorted()
    }
}

/// Which sessions to bring back, to which point, and how.
public struct RestoreRequest: Sendable {
    public enum Sessions: Sendable, Equatable {
        /// These sessions: one with no snapshot, or that logged out, is reported as failed.
        case named([SessionID])
        /// What the store can bring back: sessions that logged out or have no snapshot yet are
        /// left out, not failed.
        case all
    }

    public var sessions: Sessions
    public var point: RestorePoint
    /// Restore only sessions whose directory is absent or empty.
    public var onlyIfMissing: Bool
    /// Download and check the snapshots, write nothing.
    public var dryRun: Bool
    /// Sessions restored at once: each unpacks on a thread of its own (`runBlocking`), so this
    /// is how many threads the restore holds (`restore --parallel` allows 1 to 64).
    public var parallel: Int
    /// What each rebuilt session's credentials are checked against before it is swapped in.
    public var format: SessionFormat
    /// Take each session over for this agent before its directory is touched (a restore the
    /// worker's running the sessions follows); nil restores without claiming (inspection). A dry
    /// run never acquires.
    public var acquiring: Acquiring?

    /// What an acquiring restore needs: this agent's lease and how to treat a live holder.
    public struct Acquiring: Sendable {
        public var lease: LeaseHolder
        public var options: AcquireOptions
        public var conditionalWrites: Bool

        public init(lease: LeaseHolder, options: AcquireOptions, conditionalWrites: Bool) {
            self.lease = lease
            self.options = options
            self.conditionalWrites = conditionalWrites
        }
    }

    public init(
        sessions: Sessions, point: RestorePoint = .newest, onlyIfMissing: Bool = false, dryRun: Bool = false, parallel: Int = 8,
        format: SessionFormat = .opaque, acquiring: Acquiring? = nil
    ) {
        self.acquiring = acquiring
        self.sessions = sessions
        self.point = point
        self.onlyIfMissing = onlyIfMissing
        self.dryRun = dryRun
        self.parallel = parallel
        self.format = format
    }
}

/// Restore points some sessions do not have: bad input, found before any directory changed.
public struct RestoreRequestError: Error, CustomStringConvertible, Sendable {
    public enum Reason: Sendable {
        case missingRestorePoints
    }

    public let reason: Reason
    /// One per session without the point asked for, in the sessions' order.
    public let points: [RestorePointError]
    public var description: String { points.map(\.description).joined(separator: "; ") }
}

/// One session's restore, done or failed, as it finishes.
public struct FinishedRestore: Sendable {
    public let session: SessionID
    public let outcome: Result<RestoreOutcome, any Error>
    public let duration: Duration
}

/// What a multi-session restore did.
public struct RestoreResult: Sendable {
    /// The report a worker can post to its backend.
    public var report = RestoreReport()
    /// Sessions `.all` left out: logged out or without a snapshot yet.
    public var leftOut: [RestoreOutcome] = []
}

/// Brings many sessions back at once, as `restore` does before a worker recovers its sessions:
/// every session's snapshot is found first (`plan`), so a snapshot or time some session does not
/// have stops the whole before any directory changes; then each session is replaced by its
/// verified snapshot (`SessionRestorer`), `parallel` at once.
public struct SessionsRestore: Sendable {
    public let sources: RestoreSources
    /// The directory holding one directory per session.
    public let root: String
    public let request: RestoreRequest
    /// Hears, at debug level, where each session's time went (acquire, plan, restore).
    public var logger: Logger?

    public init(sources: RestoreSources, root: String, request: RestoreRequest, logger: Logger? = nil) {
        self.sources = sources
        self.root = root
        self.request = request
        self.logger = logger
    }

    /// Each session with how it will be restored, or why it cannot be.
    public struct Plan: Sendable {
        public let sessions: [SessionID]
        fileprivate let plans: [Result<(SessionRestorer, RestorePlan), any Error>]
    }

    /// Lists the sessions for `.all` and finds each one's snapshot. Throws `RestoreRequestError`
    /// when some session lacks the point asked for; a store that cannot list the sessions
    /// throws its error. A session whose store fails is planned as failed.
    public func plan() async throws -> Plan {
        let sessions: [SessionID]
        switch request.sessions {
        case .named(let named): sessions = named
        case .all: sessions = try await sources.sessions()
        }
        let plans = try await sessions.concurrentMap(limit: request.parallel) { [sources, root, request, logger] id in
            await Result { () async throws -> (SessionRestorer, RestorePlan) in
                var restorer = SessionRestorer(sessionStore: try await sources.store(for: id))
                restorer.format = request.format
                restorer.logger = logger
                return (restorer, try await restorer.plan(id, into: root, at: request.point, onlyIfMissing: request.onlyIfMissing))
            }
        }
        let badPoints = plans.compactMap { result -> RestorePointError? in
            guard case .failure(let error as RestorePointError) = result else { return nil }
            return error
        }
        guard badPoints.isEmpty else { throw RestoreRequestError(reason: .missingRestorePoints, points: badPoints) }
        return Plan(sessions: sessions, plans: plans)
    }

    /// Restores what `plan` found; `finished` hears of each session as it is done.
    public func run(_ plan: Plan, finished: @escaping @Sendable (FinishedRestore) async -> Void) async throws -> RestoreResult {
        if !request.dryRun {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try DirectorySwap.recoverLeftovers(in: root)
        }
        let outcomes = try await Array(zip(plan.sessions, plan.plans)).concurrentMap(limit: request.parallel) { [sources, root, request, logger] id, plan in
            let started = ContinuousClock.now
            let outcome = await Result { () async throws -> RestoreOutcome in
                let (restorer, plan) = try plan.get()
                guard let acquiring = request.acquiring, !request.dryRun,
                    ![.loggedOut, .notFound].contains(plan.decided?.status)
                else { return try await restorer.restore(plan, into: root, dryRun: request.dryRun) }
                let acquirer = SessionAcquirer(
                    sessionStore: sources.primary, lease: acquiring.lease, options: acquiring.options,
                    conditionalWrites: acquiring.conditionalWrites)
                let acquisition = try await acquirer.acquire(id)
                let claimed = ContinuousClock.now
                // Claimed before the directory is touched; the head may have moved meanwhile (the
                // holder's last commit, its release): plan again from what is committed now.
                let current = try await restorer.plan(id, into: root, at: request.point, onlyIfMissing: request.onlyIfMissing)
                let planned = ContinuousClock.now
                var outcome = try await restorer.restore(current, into: root)
                outcome.acquired = acquisition
                logger?.debug("acquire timing", metadata: [
                    "session": "\(id)", "claim": "\(claimed - started)", "plan": "\(planned - claimed)",
                    "restore": "\(ContinuousClock.now - planned)", "chain": "\(current.chain.count)",
                ])
                return outcome
            }
            await finished(FinishedRestore(session: id, outcome: outcome, duration: ContinuousClock.now - started))
            return outcome
        }

        var result = RestoreResult()
        for (id, outcome) in zip(plan.sessions, outcomes) {
            switch outcome {
            case .success(let outcome) where request.sessions == .all && [.loggedOut, .notFound].contains(outcome.status):
                // .all asks for what the store can bring back: a session that logged out was not
                // asked for, and must not fail a worker's start (named, it is reported as failed).
                // One with no snapshot was claimed by an agent that has not committed its first
                // snapshot yet (or was killed before it did): nothing to bring back, and nothing
                // wrong with the store.
                result.leftOut.append(outcome)
            case .success(let outcome): result.report.record(outcome)
            case .failure(let error): result.report.record(id, failure: error)
            }
        }
        return result
    }
}

extension Result where Failure == any Error {
    /// Result(catching:) for async work.
    init(_ body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}
