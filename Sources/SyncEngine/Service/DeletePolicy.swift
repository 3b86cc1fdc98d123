/// What to do with a session's snapshots when its directory disappears (a logout).
public enum DeletePolicy: String, Sendable, CaseIterable {
    /// Write a tombstone so no restore brings the logged-out session back.
    case tombstone
    /// Leave the snapshots as they are.
    case keep
    /// Delete every object of the session.
    case purge
}
