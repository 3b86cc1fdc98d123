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
        try StoredJSON.decode(AgentLease.self, from: bytes, formatVersion: currentFormatVersion, what: "the lease")
    }
}

/// Where leases live and how they are read and written. The key names the agent by a keyed
/// hash of its id (`agents/<32 hex digits>/lease`), so the store reveals no host name.
public struct LeaseStore: Sendable {
    public let store: any ObjectStore
    public let keyring: Keyring

    public init(store: any ObjectStore, keyring: Keyring) {
        self.store = store
        self.keyring = keyring
    }

    public init(_ sessionStore: SessionStore) {
        self.init(store: sessionStore.store, keyring: sessionStore.keyring)
    }

    static let root = "agents/"
    /// A lease is a few hundred bytes.
    static let maxLeaseSize: Int64 = 16 << 10

    /// The lease's key under `key`: the first 16 bytes of the keyed BLAKE2b-256 content id of
    /// "sync-agent lease 1\n" and the agent id, as hex.
    static func key(agent: String, key: EncryptionKey) -> String {
        let id = key.contentID(of: Array("sync-agent lease 1\n".utf8) + Array(agent.utf8))
        return root + id.bytes.prefix(16).lowercaseHex + "/lease"
    }

    private static func identity(key: String) -> ObjectIdentity { ObjectIdentity(sessionID: "", objectName: key) }

    /// Writes `lease` under the primary key's name (blind: one agent, one lease, and two
    /// processes of it write the same truth).
    func write(_ lease: AgentLease) async throws {
        let key = Self.key(agent: lease.agent, key: keyring.primary)
        let bytes = encrypt(try lease.encoded(), key: keyring.primary, identity: Self.identity(key: key))
        try await store.put(key, body: .bytes(bytes), condition: nil)
    }

    /// When the store says `agent`'s lease (under the primary key) was written: after a write of
    /// it, the store's own "now", comparable with another lease's time from the same store.
    func written(agent: String) async throws -> Date? {
        try await store.head(Self.key(agent: agent, key: keyring.primary))?.lastModified
    }

    /// A lease as read, with when the store says it was written (its own clock).
    public struct Read: Sendable {
        public var lease: AgentLease
        public var written: Date?
    }

    /// The agent's lease, nil when it has none: looked for under each key's name, primary first
    /// (the holder may write under another primary during a key rotation).
    public func read(agent: String) async throws -> Read? {
        for encryptionKey in keyring.keys {
            let key = Self.key(agent: agent, key: encryptionKey)
            guard let object = try await store.get(key, maxSize: Self.maxLeaseSize) else { continue }
            do {
                let lease = try AgentLease.decode(try decrypt(object.bytes, keyring: keyring, identity: Self.identity(key: key)))
                guard lease.agent == agent else { throw SnapshotError.corrupt("the lease at \(key) names another agent") }
                return Read(lease: lease, written: object.info.lastModified)
            } catch let error as CryptoError {
                throw SnapshotError.corrupt("the lease at \(key): \(error)")
            }
        }
        return nil
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
