import Logging

/// What to do with a session's snapshots when its directory disappears (a logout).
public enum DeletePolicy: String, Sendable, CaseIterable {
    /// Write a tombstone so no restore brings the logged-out session back.
    case tombstone
    /// Leave the snapshots as they are.
    case keep
    /// Delete every object of the session.
    case purge
}

/// Deletes every object of a session whose directory went away (`--on-delete purge`).
struct SessionPurge: Sendable {
    let store: any ObjectStore

    /// False, deleting nothing, when `directory` is there again: a restore that falls back to two
    /// renames leaves the name missing for an instant; only a directory still gone now is a logout.
    func purge(_ id: SessionID, directory: String) async throws(StoreError) -> Bool {
        guard !SessionFiles.isDirectory(directory) else { return false }
        let keys = try await store.list(prefix: SessionLayout.sessionPrefix(id)).map(\.key)
        try await store.delete(keys)
        return true
    }
}
