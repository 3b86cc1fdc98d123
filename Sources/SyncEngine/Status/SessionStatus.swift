import FoundationEssentials
import Glibc

/// One session as the sidecar sees it: what the endpoint's `/sessions` serves and `status`
/// prints. Shaped for a worker's heartbeat: stable camelCase keys, times as ISO 8601 text,
/// no field that depends on the exporter or the transport.
public struct SessionStatus: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable, CaseIterable {
        /// The store holds the directory as the agent last saw it.
        case synced
        /// Changes seen and not uploaded yet: in the quiet period, queued, or files mid-write.
        case pending
        case uploading
        /// The last upload failed; the agent retries with backoff, nothing is dropped.
        case failing
        /// Another agent claimed the session: this one no longer writes it, for good.
        case fenced
        /// This agent released the session (a move): its head names the final snapshot, and
        /// another agent may acquire it. Handed over, not a failure; nothing of it is uploaded.
        case released
        /// The directory was removed and the logout recorded (`--on-delete tombstone`).
        case tombstoned
        /// Backed up, but without some files the agent cannot take (`skippedFiles` names them):
        /// the store keeps their last good version, or has none.
        case partial
        /// Present under the root but not backed up at all (`refusal` says why).
        case refused
        /// Backed up, but its registered identity was replaced (by none, an unregistered or
        /// another one) since `identityChangedAt`: retention keeps the last snapshot that has it.
        case identityChanged = "identity_changed"
    }

    public var sessionId: String
    public var state: State
    /// The session's latest committed snapshot, as `snapshots` and `restore --snapshot` name it.
    public var lastSnapshot: String?
    /// When the session's head last moved (a commit, or this agent's claim of it).
    public var lastSnapshotAt: String?
    /// Seconds since the oldest change not yet in the store was made; 0 when there is none.
    public var lagSeconds: Double
    /// Files reported changed and not yet in a snapshot. A comparison of the whole directory
    /// (start-up, rescans) counts none until it has run.
    public var pendingChanges: Int
    /// Why the last upload failed, who fenced the session, or why it is refused; nil once an upload succeeds.
    public var lastError: String?
    public var consecutiveFailures: Int
    /// False while a directory of the session has no inotify watch (the watch limit): its changes
    /// are then found by comparing it every `--rescan-interval`.
    public var watched: Bool
    /// Files its snapshots leave out, and why.
    public var skippedFiles: [SkippedFile]
    /// Why a `refused` session is not backed up.
    public var refusal: Refusal?
    /// The session as its latest snapshot holds it (`SessionHealth`); absent until one is known.
    public var files: Int?
    public var bytes: Int64?
    public var registered: Bool?
    /// The identity's fingerprint prefix.
    public var identity: String?
    public var identityChangedAt: String?
    public var preKeys: Int?

    public init(
        sessionId: String, state: State, lastSnapshot: String?, lastSnapshotAt: String?, lagSeconds: Double,
        pendingChanges: Int, lastError: String?, consecutiveFailures: Int, watched: Bool = true,
        skippedFiles: [SkippedFile] = [], refusal: Refusal? = nil
    ) {
        self.sessionId = sessionId
        self.state = state
        self.lastSnapshot = lastSnapshot
        self.lastSnapshotAt = lastSnapshotAt
        self.lagSeconds = lagSeconds
        self.pendingChanges = pendingChanges
        self.lastError = lastError
        self.consecutiveFailures = consecutiveFailures
        self.watched = watched
        self.skippedFiles = skippedFiles
        self.refusal = refusal
    }

    /// Fills the health fields.
    mutating func describe(_ health: SessionHealth) {
        files = health.files
        bytes = health.bytes
        registered = health.identity?.registered
        identity = health.identity?.shownFingerprint
        identityChangedAt = health.identityChangedAt?.formatted(.iso8601)
        preKeys = health.preKeys
    }
}

/// What a session's latest snapshot holds, for `/sessions` and the metrics: its size, its
/// identity (`SessionFormat`), and its pre-keys, which some Baileys versions mint without bound.
/// Reported only: the agent deletes nothing of a session.
public struct SessionHealth: Sendable, Equatable {
    public var files = 0
    public var bytes: Int64 = 0
    public var identity: SessionIdentity?
    /// Since when the registered identity is gone (the head's identity hold).
    public var identityChangedAt: Date?
    /// Nil for a session format without pre-keys.
    public var preKeys: Int?

    public init() {}
}

/// Whether the sidecar does its job: its start-up comparison is over and its store answers.
public struct Readiness: Sendable, Equatable {
    public var isReady: Bool
    /// "ready", or what it waits for, in one line.
    public var reason: String
}

/// Changes of one session not yet in the store: when the oldest was made and which files.
struct ChangeBacklog: Sendable {
    private(set) var oldest: ContinuousClock.Instant?
    private(set) var paths: Set<String> = []

    var isEmpty: Bool { oldest == nil }

    mutating func record(_ paths: Set<String>, at instant: ContinuousClock.Instant) {
        oldest = min(oldest ?? instant, instant)
        self.paths.formUnion(paths)
    }

    mutating func absorb(_ other: ChangeBacklog) {
        if let instant = other.oldest { record(other.paths, at: instant) }
    }

    /// What an upload leaves behind: only the files it found mid-write, still as old as before.
    mutating func keepOnly(_ unsettled: [String]) {
        if unsettled.isEmpty {
            self = ChangeBacklog()
        } else {
            paths = Set(unsettled)
        }
    }
}
