/// Coalesces changes per session: a session is due once it has been quiet for `quietPeriod`, or
/// `maxDelay` after its first unreported change, whichever comes first, so a session written
/// continuously is still reported every `maxDelay`. Time is passed in, which keeps it testable
/// without sleeping. Keyed by `SessionID`, equal by its bytes: `String` keys merged the changes
/// of two sessions whose names are canonically equivalent.
struct ChangeDebouncer {
    struct Pending: Equatable {
        var first: ContinuousClock.Instant
        var last: ContinuousClock.Instant
        var paths: Set<String>
        /// Two reported names were canonically equivalent (see `addingReportedPaths`): the
        /// session is reported with no paths, to be scanned whole.
        var scansWholeSession = false

        func deadline(quietPeriod: Duration, maxDelay: Duration) -> ContinuousClock.Instant {
            min(last + quietPeriod, first + maxDelay)
        }
    }

    let quietPeriod: Duration
    let maxDelay: Duration
    private(set) var pending: [SessionID: Pending] = [:]

    init(quietPeriod: Duration, maxDelay: Duration) {
        self.quietPeriod = quietPeriod
        self.maxDelay = maxDelay
    }

    /// Records activity in `session`; `paths` may be empty (the directory itself changed).
    mutating func record(_ session: SessionID, paths: some Sequence<String>, at now: ContinuousClock.Instant) {
        // In place: this runs for every inotify event, and a copy of the set per event would make
        // a burst of files cost the square of its size.
        pending[session, default: Pending(first: now, last: now, paths: [])].last = now
        if !pending[session]!.paths.insertReportedPaths(paths) { pending[session]!.scansWholeSession = true }
    }

    /// When the earliest pending session falls due; nil when nothing is pending.
    var nextDeadline: ContinuousClock.Instant? {
        pending.values.lazy.map { $0.deadline(quietPeriod: self.quietPeriod, maxDelay: self.maxDelay) }.min()
    }

    /// Removes and returns the sessions due at `now`, sorted by session id.
    mutating func takeDue(at now: ContinuousClock.Instant) -> [Due] {
        // Called at every wake-up of the watcher: nothing is allocated when nothing is due.
        var due: [SessionID: Pending] = [:]
        for (session, entry) in pending where entry.deadline(quietPeriod: quietPeriod, maxDelay: maxDelay) <= now {
            due[session] = entry
        }
        guard !due.isEmpty else { return [] }
        for session in due.keys { pending[session] = nil }
        return Self.sorted(due)
    }

    /// Removes and returns `session`'s pending changes, due or not (a caller catching up).
    mutating func take(_ session: SessionID) -> Due? {
        guard let taken = pending.removeValue(forKey: session) else { return nil }
        return Self.sorted([session: taken]).first
    }

    /// Removes and returns every pending session, due or not (at shutdown).
    mutating func takeAll() -> [Due] {
        defer { pending = [:] }
        return Self.sorted(pending)
    }

    typealias Due = (session: SessionID, paths: Set<String>, since: ContinuousClock.Instant)

    private static func sorted(_ pending: [SessionID: Pending]) -> [Due] {
        pending.map { ($0.key, $0.value.scansWholeSession ? [] : $0.value.paths, $0.value.first) }.sorted { $0.session < $1.session }
    }

    mutating func discardAll() {
        pending = [:]
    }
}

extension Set<String> {
    /// Inserts `paths`; false when one of them is a name that Swift's String takes for a member
    /// but that is another file on Linux: canonically equivalent, different bytes ("é" as one code
    /// point and as "e" + U+0301). The set would keep one and lose the other's change, so the
    /// caller scans the whole session instead.
    mutating func insertReportedPaths(_ paths: some Sequence<String>) -> Bool {
        var distinct = true
        for path in paths {
            let (inserted, member) = insert(path)
            if !inserted, !member.utf8.elementsEqual(path.utf8) { distinct = false }
        }
        return distinct
    }

    /// The set with `paths` inserted, or nil when two names would merge (`insertReportedPaths`).
    func addingReportedPaths(_ paths: some Sequence<String>) -> Set<String>? {
        var union = self
        return union.insertReportedPaths(paths) ? union : nil
    }
}
