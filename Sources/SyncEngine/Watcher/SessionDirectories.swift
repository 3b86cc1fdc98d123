/// The session directories under a sessions root by the rules `watch` follows
/// (`SessionFiles.entries(of:)`, `Refusal.of`), for the commands that take every session at once:
/// a symbolic link or an unreadable directory is refused, never
/// followed nor skipped in silence.
public struct SessionDirectories: Sendable {
    /// The directories backed up, sorted.
    public var sessions: [SessionID]
    /// The names refused (as readdir gave them, `FileName` strings), sorted.
    public var refused: [(name: String, refusal: Refusal)]

    public init(root: String) throws(WatcherError) {
        sessions = []
        refused = []
        for entry in try SessionFiles.entries(of: root) where SessionFiles.isSessionDirectoryName(entry.name) {
            if let refusal = Refusal.of(entry.name, inRoot: root) {
                refused.append((entry.name, refusal))
            } else if entry.kind == .directory, let id = SessionID(entry.name) {
                sessions.append(id)
            }
        }
        sessions.sort()
        refused.sort { $0.name < $1.name }
    }
}
