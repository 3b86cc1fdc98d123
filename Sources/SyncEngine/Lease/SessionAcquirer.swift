import FoundationEssentials

/// How an acquire obtained a session: the restore report's `acquired`.
public enum Acquisition: String, Sendable, Codable {
    /// No head, or a head no agent holds (written before leases, or a logout).
    case unclaimed
    /// Its holder released it.
    case released
    /// This agent held it already (a restart with the same identity).
    case sameHolder = "same_holder"
    /// Its holder's lease was not renewed for a whole TTL (or is gone).
    case leaseExpired = "lease_expired"
    /// `takeOver` after the wait: the live holder was fenced.
    case takenOver = "taken_over"
}

extension SessionHead {
    /// Who has the session, as an acquire by `agent` sees it: decided (how it is obtained now),
    /// or held by another agent whose lease decides.
    enum Holding: Equatable {
        case obtainable(Acquisition)
        case heldBy(String)
    }

    func holding(for agent: String) -> Holding {
        guard let holder = self.agent, !isTombstoned else { return .obtainable(.unclaimed) }
        if released != nil { return .obtainable(.released) }
        if holder == agent { return .obtainable(.sameHolder) }
        return .heldBy(holder)
    }

    /// The head a claim writes over this one: a generation above this one's and `above`, this
    /// process and agent as the holder, no release.
    func claimed(owner: String, agent: String?, above: UInt64 = 0, at date: Date) -> SessionHead {
        var claimed = self
        claimed.generation = Swift.max(generation, above) + 1
        claimed.owner = owner
        claimed.agent = agent
        claimed.released = nil
        claimed.updatedAt = date
        return claimed
    }

    /// The head of a session no one has claimed yet.
    static func unclaimed(at date: Date) -> SessionHead {
        SessionHead(generation: 0, owner: "", latest: nil, latestKind: nil, base: nil, updatedAt: date)
    }
}

/// Takes a session over for an agent that is about to write it (a restore followed by the
/// worker running the session): claims it, by a conditional write of its head with a raised
/// generation, when it is unclaimed, released, already this agent's, or its holder's lease
/// expired; otherwise waits for one of those up to `options.waitRelease`, then fails with
/// `held_elsewhere`, or with `takeOver` fences the holder (its next commit fails on the condition).
/// The claim is written before the caller touches the local directory, so the old holder cannot
/// commit after the restore read the store.
public struct SessionAcquirer: Sendable {
    public let sessionStore: SessionStore
    public let lease: LeaseHolder
    public let options: AcquireOptions
    public let conditionalWrites: Bool
    /// How often a wait reads the head and the holder's lease again.
    public var pollInterval: Duration = .milliseconds(200)

    public init(sessionStore: SessionStore, lease: LeaseHolder, options: AcquireOptions, conditionalWrites: Bool) {
        self.sessionStore = sessionStore
        self.lease = lease
        self.options = options
        self.conditionalWrites = conditionalWrites
    }

    public func acquire(_ session: SessionID) async throws -> Acquisition {
        let started = ContinuousClock.now
        let leases = LeaseStore(sessionStore, conditionalWrites: conditionalWrites)
        var expiry = LeaseExpiry()
        var watchedHolder: String?
        // When the store wrote this agent's lease, read once: the store's "now" at the first look.
        var storeNow: Date?
        // Like every writer of the head: a session of format version 2 moves to its keyed place
        // first, so this claim is never written at a place a concurrent move deletes.
        try await sessionStore.prepareForWriting(session, conditionalWrites: conditionalWrites)
        while true {
            let current = try await sessionStore.head(session)
            let head = current?.head ?? .unclaimed(at: Date())
            let acquisition: Acquisition
            switch head.holding(for: lease.agent.id) {
            case .obtainable(let how):
                acquisition = how
            case .heldBy(let holder):
                if holder != watchedHolder { (expiry, watchedHolder) = (LeaseExpiry(), holder) }
                let read = try await leases.read(agent: holder)
                if storeNow == nil, read != nil { storeNow = try await lease.renewReadingStoreTime() }
                let staleBy = storeNow.flatMap { now in read?.written.map { Duration.seconds(now.timeIntervalSince($0)) } }
                let now = ContinuousClock.now
                if case .expired = expiry.observe(read?.lease, staleBy: staleBy, at: now) {
                    acquisition = .leaseExpired
                } else if now - started < options.waitRelease {
                    try await Task.sleep(for: min(pollInterval, options.waitRelease - (now - started)))
                    continue
                } else if options.takeOver {
                    acquisition = .takenOver
                } else {
                    throw SessionControlError(
                        .heldElsewhere,
                        "session \(session) is held by agent \(holder), whose lease is alive and which did not release it within \(options.waitRelease); nothing changed (--take-over fences it)")
                }
            }
            // The claim names this agent: its lease must be there for anyone who looks.
            try await lease.renewIfDue()
            let claimed = head.claimed(owner: lease.agent.instance, agent: lease.agent.id, at: Date())
            let condition: WriteCondition? = conditionalWrites ? (current.map { .ifMatch(etag: $0.etag) } ?? .ifAbsent) : nil
            do {
                try await sessionStore.writeHead(claimed, session: session, condition: condition)
                return acquisition
            } catch StoreError.preconditionFailed {
                continue  // the head moved (a commit, a release, another claim): decide again
            }
        }
    }
}
