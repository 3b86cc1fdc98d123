/// The directories the watcher could not watch (the inotify watch limit), and when to look at
/// them instead: every `interval` their sessions are compared whole, and their watches tried
/// again. Time is passed in, which keeps it testable without sleeping.
struct UnwatchedDirectories {
    let interval: Duration
    private(set) var directories: Set<WatchedDirectory> = []
    /// When the next comparison is due; nil while every directory is watched.
    private(set) var nextPoll: ContinuousClock.Instant?
    /// Counts the changes of `directories`, so a caller can tell cheaply whether the set moved.
    private(set) var version = 0

    init(interval: Duration) {
        self.interval = interval
    }

    /// The sessions with a directory not watched, whose changes only a comparison finds.
    var sessions: Set<SessionID> { Set(directories.map(\.session)) }

    mutating func failed(_ directory: WatchedDirectory, at now: ContinuousClock.Instant) {
        if directories.insert(directory).inserted { version += 1 }
        if nextPoll == nil { nextPoll = now + interval }
    }

    /// `directory` is watched now, or gone.
    mutating func resolved(_ directory: WatchedDirectory) {
        if directories.remove(directory) != nil { version += 1 }
        if directories.isEmpty { nextPoll = nil }
    }

    /// Every directory of a session that is gone.
    mutating func resolvedSession(_ session: SessionID) {
        for directory in directories where directory.session == session { resolved(directory) }
    }

    /// The directories to look at now, sorted, when a comparison is due; the next one is then
    /// due `interval` later (not at a multiple of it: a slow comparison never makes them pile up).
    mutating func takeDue(at now: ContinuousClock.Instant) -> [WatchedDirectory] {
        guard let nextPoll, nextPoll <= now else { return [] }
        self.nextPoll = now + interval
        return sorted
    }

    /// Every unwatched directory, sorted (a comparison at shutdown takes them all).
    var sorted: [WatchedDirectory] {
        directories.sorted { ($0.session, $0.subdirectory ?? "") < ($1.session, $1.subdirectory ?? "") }
    }
}
