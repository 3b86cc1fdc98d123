import SystemSupport

/// The report of a multi-session restore, which a worker can post to its backend as is: its
/// JSON shape is a contract.
public struct RestoreReport: Encodable, Sendable {
    public struct Recovered: Encodable, Sendable {
        public var sessionId: String
        /// `restored`, `up_to_date`, `present` (--if-missing) or `would_restore` (--dry-run).
        public var status: String
        public var snapshot: String?
        public var files: Int
        public var bytes: Int64
        /// False: the session was never paired, and its client will need a QR code. Absent with
        /// `--session-format opaque`.
        public var registered: Bool?
        /// How an acquiring restore obtained the session (`unclaimed`, `released`, `same_holder`,
        /// `lease_expired`, `taken_over`); absent when it did not acquire (`--no-acquire`, `--dry-run`).
        public var acquired: String? = nil
    }

    public struct Failed: Encodable, Sendable {
        public var sessionId: String
        public var error: String
        public var reason: String
    }

    public var recoveredSessions: [Recovered] = []
    public var failedSessions: [Failed] = []

    public init() {}

    public mutating func record(_ outcome: RestoreOutcome) {
        switch outcome.status {
        case .restored, .upToDate, .present, .wouldRestore:
            recoveredSessions.append(.init(
                sessionId: outcome.session.description, status: outcome.status.rawValue,
                snapshot: outcome.snapshot.map(String.init(describing:)), files: outcome.files, bytes: outcome.bytes,
                registered: outcome.registered, acquired: outcome.acquired?.rawValue))
        case .notFound, .loggedOut:
            failedSessions.append(.init(
                sessionId: outcome.session.description,
                error: outcome.status == .notFound ? "no snapshot in the store" : "the session logged out",
                reason: outcome.status.rawValue))
        }
    }

    public mutating func record(_ session: SessionID, failure error: any Error) {
        failedSessions.append(.init(sessionId: session.description, error: "\(error)", reason: Self.reason(for: error)))
    }

    static func reason(for error: any Error) -> String {
        switch error {
        case StoreError.unavailable: "unreachable"
        case StoreError.rejected: "store_refused"
        case SnapshotError.corrupt, StoreError.invalidObject: "corrupt"
        case SnapshotError.notFound: "not_found"
        case SnapshotError.unsupportedFormat: "unsupported_format"
        case SnapshotError.wrongKey: "wrong_key"
        case SnapshotError.headMissing: "head_missing"
        case SnapshotError.headBehind: "head_behind"
        case SnapshotError.changedDuringRead: "changed_during_restore"
        // The staging directory, a download's temporary file: the disk, not the store.
        case SnapshotError.io, StoreError.io, is SystemError: "local_io"
        case let error as SessionDirectoryError: error.reason.rawValue
        case let error as SessionControlError: error.reason.rawValue
        case is AuthStateError: AuthStateError.reason
        default: "failed"
        }
    }
}
