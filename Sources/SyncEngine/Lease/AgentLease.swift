import FoundationEssentials
import SessionCrypto

/// An agent's liveness (FORMAT.md, "Leases and handoff"): one object per agent, rewritten every
/// TTL/3 while it runs, whatever the number of sessions it holds. Heads name their holder's agent
/// id; an acquirer reads the holder's lease and calls it expired only after it saw it unchanged
/// for a whole TTL on its own clock (`LeaseExpiry`), never comparing clocks across hosts.
public struct AgentLease: Codable, Sendable, Equatable {
    public static let currentFormatVersion = 1

    public var formatVersion = AgentLease.currentFormatVersion
    public var agent: String
    /// The process renewing it (the head's `owner` of its claims).
    public var instance: String
    /// Raised by each renewal of this process, from 1: what an acquirer watches change.
    public var renewal: UInt64
    /// How long an acquirer waits, from when it first saw this renewal, before it calls the lease expired.
    public var ttlMilliseconds: Int64
    /// The holder's clock at the renewal: for people, never compared with another clock.
    public var renewedAt: Date

    public var ttl: Duration { .milliseconds(ttlMilliseconds) }

    package func encoded() throws -> [UInt8] { try StoredJSON.encode(self) }

    package static func decode(_ bytes: [UInt8]) throws -> AgentLease {
        try StoredJSON.decode(AgentLease.self, from: bytes, formatVersions: currentFormatVersion...currentFormatVersion, what: "the lease")
    }
}

/// Where leases live and how they are read and written. The key names the agent by its keyed id
/// under the store's naming secret (`agents/<32 hex digits>/lease`, FORMAT.md "Keyed names", domain
/// `agent`), so the store reveals no host name, and a key rotation moves no lease.
public struct LeaseStore: Sendable {
    public let sessionStore: SessionStore
    /// Whether the store honours write conditions: the first writer of a store makes its naming
    /// secret with one.
    public let conditionalWrites: Bool

    public init(_ sessionStore: SessionStore, conditionalWrites: Bool) {
        self.sessionStore = sessionStore
        self.conditionalWrites = conditionalWrites
    }

    static let root = "agents/"
    /// A lease is a few hundred bytes.
    static let maxLeaseSize: Int64 = 16 << 10

    static func key(agent: String, naming: StoreNaming) -> String {
        root + naming.keyedID(.agent, name: Array(agent.utf8)) + "/lease"
    }

    private static func identity(key: String) -> ObjectIdentity { ObjectIdentity(sessionID: "", objectName: key) }

    /// The key of `agent`'s lease; nil while the store has no naming secret (then it has no lease).
    private func existingKey(agent: String) async throws -> String? {
        try await sessionStore.naming().map { Self.key(agent: agent, naming: $0) }
    }

    /// Writes `lease` under the primary key (blind: one agent, one lease, and two processes of it
    /// write the same truth).
    func write(_ lease: AgentLease) async throws {
        let naming = try await sessionStore.preparedNaming(conditionalWrites: conditionalWrites)
        let key = Self.key(agent: lease.agent, naming: naming)
        let primary = sessionStore.keyring.primary
        try await sessionStore.store.put(
            key, body: .bytes(encrypt(try lease.encoded(), key: primary, identity: Self.identity(key: key))), condition: nil)
    }

    /// When the store says `agent`'s lease was written: after a write of it, the store's own
    /// "now", comparable with another lease's time from the same store.
    func written(agent: String) async throws -> Date? {
        guard let key = try await existingKey(agent: agent) else { return nil }
        return try await sessionStore.store.head(key)?.lastModified
    }

    /// A lease as read, with when the store says it was written (its own clock).
    public struct Read: Sendable {
        public var lease: AgentLease
        public var written: Date?
    }

    /// The agent's lease, nil when it has none.
    public func read(agent: String) async throws -> Read? {
        guard let key = try await existingKey(agent: agent),
            let object = try await sessionStore.store.get(key, maxSize: Self.maxLeaseSize)
        else { return nil }
        do {
            let lease = try AgentLease.decode(
                try decrypt(object.bytes, keyring: sessionStore.keyring, identity: Self.identity(key: key)))
            guard lease.agent == agent else { throw SnapshotError.corrupt("the lease at \(key) names another agent") }
            return Read(lease: lease, written: object.info.lastModified)
        } catch let error as CryptoError {
            throw SnapshotError.corrupt("the lease at \(key): \(error)")
        }
    }
}

/// Keeps this agent's lease alive: `renew` writes the next renewal. `watch` calls it every TTL/3;
/// an acquiring `restore` once, before its first claim, so the claim names a live lease until
/// `watch` takes over renewing it.
public actor LeaseHolder {
    public nonisolated let agent: AgentIdentity
    public nonisolated let ttl: Duration
    private let leases: LeaseStore
    private var renewal: UInt64 = 0
    private var lastWritten: ContinuousClock.Instant?

    public init(agent: AgentIdentity, ttl: Duration, leases: LeaseStore) {
        self.agent = agent
        self.ttl = ttl
        self.leases = leases
    }

    /// The renewal period: a third of the TTL, so one lost renewal does not let the lease expire.
    public var interval: Duration { ttl / 3 }

    public func renew() async throws {
        renewal += 1
        let (seconds, attoseconds) = ttl.components
        let lease = AgentLease(
            agent: agent.id, instance: agent.instance, renewal: renewal,
            ttlMilliseconds: seconds * 1000 + attoseconds / 1_000_000_000_000_000, renewedAt: Date())
        let started = ContinuousClock.now
        try await leases.write(lease)
        lastWritten = started
    }

    /// Renews now and returns when the store says it wrote the lease: the store's clock, to
    /// compare with the time it gives another agent's lease.
    public func renewReadingStoreTime() async throws -> Date? {
        try await renew()
        return try await leases.written(agent: agent.id)
    }

    /// Renews unless a renewal was written within the last interval.
    public func renewIfDue() async throws {
        if let lastWritten, ContinuousClock.now - lastWritten < interval { return }
        try await renew()
    }
}
