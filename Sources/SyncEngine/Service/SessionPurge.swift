/// Deletes every object of a session whose directory went away (`--on-delete purge`).
struct SessionPurge: Sendable {
    let sessionStore: SessionStore

    /// False, deleting nothing, when `directory` is there again: a restore that falls back to two
    /// renames leaves the name missing for an instant; only a directory still gone now is a logout.
    /// Both places go: the keyed one, and the plain one of a move stopped halfway.
    ///
    /// `agent`: this agent's id. A session whose head names another holder is that agent's: its
    /// history is not ours to delete (`SnapshotError.fenced`), whatever our copy of it did.
    func purge(_ id: SessionID, directory: String, agent: String?) async throws -> Bool {
        guard !SessionFiles.isDirectory(directory) else { return false }
        if let agent, let holder = try await sessionStore.head(id)?.head.agent, holder != agent {
            throw SnapshotError.fenced(session: id.rawValue, by: "agent \(holder)")
        }
        var places = [SessionPlace.plain(id)]
        if let naming = try await sessionStore.naming() { places.append(.keyed(id, naming: naming)) }
        for place in places {
            let keys = try await sessionStore.store.list(prefix: place.prefix).map(\.key)
            if !keys.isEmpty { try await sessionStore.store.delete(keys) }
        }
        sessionStore.forget(id)
        return true
    }
}
