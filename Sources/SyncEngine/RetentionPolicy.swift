import FoundationEssentials

/// Which snapshots of a session to keep, like restic's `forget` options: each rule keeps some
/// snapshots, a snapshot is kept when any rule keeps it, and whatever a kept snapshot needs to
/// restore (a delta's chain back to its base) is kept with it. The head's snapshot is always
/// kept, whatever the rules, so a session's current state is never pruned, and so is the
/// snapshot the head's identity hold names (`IdentityHold`: a registered identity the session lost).
///
/// A snapshot's time is when its object was written to the store, as the store lists it (what
/// `sync-agent snapshots` prints): the manifest's own time is inside the encrypted object, and
/// reading every object to decide what to delete would cost a download of the whole history.
public struct RetentionPolicy: Sendable, Equatable {
    /// The newest N snapshots.
    public var keepLast: Int?
    /// The newest snapshot of each of the last N hours, days, ISO weeks that have one.
    public var keepHourly: Int?
    public var keepDaily: Int?
    public var keepWeekly: Int?
    /// Every snapshot written within this long before the newest one. Measured from the newest
    /// snapshot rather than from now, as restic does: a session nobody writes keeps its history.
    public var keepWithin: Duration?
    /// Every snapshot of the newest N chains (a base or tombstone and the deltas after it):
    /// the compaction default, not a flag.
    public var keepChains: Int?

    public init(
        keepLast: Int? = nil, keepHourly: Int? = nil, keepDaily: Int? = nil, keepWeekly: Int? = nil,
        keepWithin: Duration? = nil, keepChains: Int? = nil
    ) {
        self.keepLast = keepLast
        self.keepHourly = keepHourly
        self.keepDaily = keepDaily
        self.keepWeekly = keepWeekly
        self.keepWithin = keepWithin
        self.keepChains = keepChains
    }

    /// What the replicator keeps after each new base when no policy is configured: the current
    /// chain and the one before it.
    public static let compactionDefault = RetentionPolicy(keepChains: 2)

    /// Why a snapshot is kept; the stable words of `prune --json`.
    public enum Reason: String, Sendable, Codable, Comparable {
        /// The head's snapshot.
        case newest
        /// The newest snapshot of a registered identity the session lost (the head's identity
        /// hold), until a logout or `prune --forget-identity`.
        case lastRegisteredIdentity = "last_registered_identity"
        case last
        case hourly
        case daily
        case weekly
        case within
        case chains
        /// A kept delta is rebuilt from it.
        case chain
        /// The store listed no time for it, so no time rule can judge it.
        case unknownTime = "unknown_time"

        public static func < (lhs: Reason, rhs: Reason) -> Bool { lhs.order < rhs.order }
        private var order: Int {
            [.newest, .lastRegisteredIdentity, .last, .hourly, .daily, .weekly, .within, .chains, .chain, .unknownTime].firstIndex(of: self)!
        }
    }

    /// Decides, for one session, what to keep and what to delete from a listing of its snapshot
    /// objects and its head, read before the listing. Pure: no store, no clock.
    ///
    /// Objects at or above the head's sequence, or of a newer generation, that it did not commit
    /// are left alone: a writer may be committing them right now (at the head's own sequence: a
    /// writer that did not see its own commit's reply retries there, and so does a writer that
    /// lost a race). Below it, an object the head did not commit (a racing writer that lost, a
    /// crashed or fenced one) is deleted when it is certainly uncommitted: down to the highest
    /// sequence where the walk from the head met a deleted snapshot (`lowestCertainSequence`),
    /// and below that only when the store lists it as written after a committed snapshot of a
    /// higher sequence (an upload that landed late). Others below that gap are left to an
    /// operator (`verify`). Committed snapshots no rule keeps are deleted too. Throws when the
    /// head's own snapshot does not restore (missing, or a gap in its chain): a session in that
    /// state needs an operator (`verify`), and pruning could only make it worse.
    ///
    /// Hours, days and weeks are UTC's (weeks ISO 8601's, from Monday): what is kept must not
    /// change with the time zone of the machine that prunes.
    public func plan(_ entries: [SnapshotEntry], head: SessionHead, session: SessionID) throws -> RetentionPlan {
        guard let history = try SessionStore.committed(entries, head: head, session: session) else { return RetentionPlan() }
        let latest = history.latest.id
        var kept: [SnapshotID: Set<Reason>] = [:]
        for link in try history.chain(to: history.latest, session: session) {
            kept[link.id, default: []].insert(link.id == latest ? .newest : .chain)
        }
        // Whatever the rules: the identity a worker may have lost for good otherwise. A held
        // snapshot whose chain is broken cannot be restored, and keeps nothing.
        if let hold = head.identityHold, let held = history.snapshots[hold.snapshot.sequence], held.id == hold.snapshot,
            let chain = try? history.chain(to: held, session: session)
        {
            for link in chain { kept[link.id, default: []].insert(link.id == held.id ? .lastRegisteredIdentity : .chain) }
        }

        // Snapshots whose chain is broken (a prune interrupted half way) cannot be restored, so
        // no rule may pick them in place of one that can.
        let restorable = history.sorted.reversed().filter { (try? history.chain(to: $0, session: session)) != nil }
        for entry in rulesKeep(restorable) {
            kept[entry.id, default: []].formUnion(entry.reasons)
        }
        for entry in restorable where kept[entry.id] != nil {
            for link in try history.chain(to: entry, session: session) where kept[link.id] == nil {
                kept[link.id] = [.chain]
            }
        }

        var plan = RetentionPlan()
        for entry in history.sorted {
            if let reasons = kept[entry.id] {
                plan.kept.append(.init(entry: entry, reasons: reasons.sorted()))
            } else {
                plan.deleted.append(entry)
            }
        }
        let floor = Self.lowestCertainSequence(history)
        // A committed object was written before every snapshot that follows it: one the store
        // lists as written after a committed snapshot of a higher sequence is not committed.
        // The earliest time listed above each committed snapshot, so each check is one search.
        let committed = history.sorted
        var earliestFrom = [Date?](repeating: nil, count: committed.count + 1)
        for index in committed.indices.reversed() {
            earliestFrom[index] = [earliestFrom[index + 1], committed[index].lastModified].compactMap { $0 }.min()
        }
        func isLateUpload(_ entry: SnapshotEntry) -> Bool {
            var (firstAbove, end) = (0, committed.count)  // binary search: committed is by sequence
            while firstAbove < end {
                let middle = (firstAbove + end) / 2
                if committed[middle].id.sequence > entry.id.sequence { end = middle } else { firstAbove = middle + 1 }
            }
            guard let time = entry.lastModified, let earliest = earliestFrom[firstAbove] else { return false }
            return time > earliest
        }
        plan.orphans = entries.filter { entry in
            entry.id.sequence < latest.sequence && entry.id.generation <= head.generation && !history.contains(entry)
                && (entry.id.sequence >= floor || isLateUpload(entry))
        }
        // Newest first, so a prune cut short leaves every chain it did not finish whole at its start.
        plan.deleted.reverse()
        plan.orphans.sort { $0.id > $1.id }
        return plan
    }

    /// Down to this sequence, the walk from the head named every sequence's committed snapshot
    /// through parent tags, so any other object there is certainly uncommitted. Below a gap (a
    /// snapshot pruned before), the walk carried on from the newest object no newer than the
    /// snapshot above the gap; other objects there are certainly uncommitted only when they are
    /// newer than a committed snapshot above them (`plan`).
    private static func lowestCertainSequence(_ history: CommittedHistory) -> UInt64 {
        var child = history.latest
        while child.parentTag != nil, child.id.sequence > 0 {
            guard let parent = history.snapshots[child.id.sequence - 1], parent.isParent(of: child) else {
                return child.id.sequence - 1
            }
            child = parent
        }
        return 0
    }

    /// What the rules keep among restorable snapshots, newest first, and why.
    private func rulesKeep(_ snapshots: [SnapshotEntry]) -> [(id: SnapshotID, reasons: Set<Reason>)] {
        var reasons: [SnapshotID: Set<Reason>] = [:]
        func keep(_ entry: SnapshotEntry, _ reason: Reason) { reasons[entry.id, default: []].insert(reason) }

        if let keepLast { snapshots.prefix(keepLast).forEach { keep($0, .last) } }
        if let keepChains {
            var chainsStarted = 0
            for entry in snapshots where chainsStarted < keepChains {
                keep(entry, .chains)
                if entry.kind != .delta { chainsStarted += 1 }
            }
        }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .gmt
        // ISO 8601 weeks: from Monday, the first week of a year the one with its first Thursday.
        calendar.firstWeekday = 2
        calendar.minimumDaysInFirstWeek = 4
        let buckets: [(Reason, Int?, Set<Calendar.Component>)] = [
            (.hourly, keepHourly, [.year, .month, .day, .hour]),
            (.daily, keepDaily, [.year, .month, .day]),
            (.weekly, keepWeekly, [.yearForWeekOfYear, .weekOfYear]),
        ]
        for case let (reason, count?, components) in buckets {
            var lastBucket: DateComponents?
            var taken = 0
            for entry in snapshots {
                guard let time = entry.lastModified else { continue }
                let bucket = calendar.dateComponents(components, from: time)
                guard bucket != lastBucket else { continue }
                guard taken < count else { break }
                keep(entry, reason)
                lastBucket = bucket
                taken += 1
            }
        }
        if let keepWithin, let newestTime = snapshots.compactMap(\.lastModified).max() {
            let oldest = newestTime.addingTimeInterval(-keepWithin.timeInterval)
            for entry in snapshots where entry.lastModified.map({ $0 >= oldest }) ?? false { keep(entry, .within) }
        }
        if usesTime {
            for entry in snapshots where entry.lastModified == nil { keep(entry, .unknownTime) }
        }
        return reasons.map { ($0.key, $0.value) }
    }

    private var usesTime: Bool { keepHourly != nil || keepDaily != nil || keepWeekly != nil || keepWithin != nil }
}

/// The outcome of `RetentionPolicy.plan` for one session.
public struct RetentionPlan: Sendable, Equatable {
    public struct Kept: Sendable, Equatable {
        public var entry: SnapshotEntry
        public var reasons: [RetentionPolicy.Reason]
    }

    /// Committed snapshots that stay, oldest first.
    public var kept: [Kept] = []
    /// Committed snapshots to delete, newest first.
    public var deleted: [SnapshotEntry] = []
    /// Objects below the head's sequence that it certainly never committed (a racing writer that
    /// lost, a retry, a crashed or fenced writer, an upload that landed late), newest first.
    public var orphans: [SnapshotEntry] = []

    public init() {}

    /// Objects a prune deletes: dropped snapshots and orphans.
    public var deletedCount: Int { deleted.count + orphans.count }
}

extension Duration {
    var timeInterval: TimeInterval {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
