import FoundationEssentials

/// What a worker asks of its sidecar when sessions move: the endpoint's mutating routes
/// (`POST /sessions/{id}/flush|release|acquire|logout`, `POST /sessions/release`) call exactly
/// these, and `SyncService` implements them. Every call is bounded by the timeout it is given.
public protocol SessionControl: Sendable {
    /// Returns once everything written to the session's directory before the call is committed.
    func flush(_ session: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot

    /// Flushes, then marks the head released, naming the final snapshot, and stops writing the
    /// session until it is acquired again. Releasing a released session returns the same answer.
    func release(_ session: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot

    /// Releases every session this agent holds (a draining worker), one entry per session.
    func releaseAll(timeout: Duration) async -> ReleaseReport

    /// Acquires the session (`AcquireOptions`: wait for a live holder, or take over), restores it
    /// into the sessions directory atomically, then watches it. The report holds one entry.
    func acquire(_ session: SessionID, options: AcquireOptions) async throws(SessionControlError) -> RestoreReport

    /// Commits a tombstone for the session and removes its local directory.
    func logout(_ session: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot
}

/// A snapshot that is committed (named by the head), as the control routes answer it.
public struct CommittedSnapshot: Encodable, Sendable, Equatable {
    public var sessionId: String
    /// `SEQUENCE.GENERATION`; nil when the session has no committed snapshot (an empty directory
    /// that never had a file).
    public var snapshot: String?
    public var committedAt: Date?

    public init(sessionId: String, snapshot: String?, committedAt: Date?) {
        self.sessionId = sessionId
        self.snapshot = snapshot
        self.committedAt = committedAt
    }
}

/// How an acquire treats a holder that is still alive.
public struct AcquireOptions: Sendable, Equatable {
    /// How long to wait for the holder to release or its lease to expire; zero does not wait.
    public var waitRelease: Duration
    /// After the wait, fence the holder instead of failing with `held_elsewhere`.
    public var takeOver: Bool

    public init(waitRelease: Duration = .seconds(30), takeOver: Bool = false) {
        self.waitRelease = waitRelease
        self.takeOver = takeOver
    }
}

/// The answer to a release of every session: preserved sessions and those that could not be,
/// in the shape of the restore report (which the backend already reads).
public struct ReleaseReport: Encodable, Sendable {
    public var preservedSessions: [CommittedSnapshot] = []
    public var failedSessions: [RestoreReport.Failed] = []

    public init() {}
}

/// Why a control call failed; `reason` is the stable word the endpoint answers with.
public struct SessionControlError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Reason: String, Sendable {
        /// No session of that id in the sessions directory (or, for acquire, in the store).
        case unknownSession = "unknown_session"
        /// The store did not commit within the timeout (down, refusing, slow).
        case notCommitted = "not_committed"
        /// Another agent claimed the session; this one no longer writes it.
        case fenced
        /// A live holder kept the session past the wait (acquire without take-over).
        case heldElsewhere = "held_elsewhere"
        /// This agent released the session and has not acquired it again.
        case released
        /// The restore that an acquire runs failed; the message holds its reason.
        case restoreFailed = "restore_failed"
    }

    public let reason: Reason
    public let message: String

    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { message }
}
