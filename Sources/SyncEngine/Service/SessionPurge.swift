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
