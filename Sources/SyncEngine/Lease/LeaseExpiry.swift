/// Whether a holder's lease expired, decided on the acquirer's own monotonic clock: a lease is
/// expired once the acquirer has seen it unchanged (the same process, the same renewal) for a
/// whole TTL, or when there is none. Clocks of other hosts are never compared. Pure: the
/// caller passes each lease it read and the time it read it.
public struct LeaseExpiry: Sendable {
    public enum Verdict: Sendable, Equatable {
        /// Renewed recently enough; expired at `expiresAt` at the earliest if nothing changes.
        case alive(expiresAt: ContinuousClock.Instant)
        case expired
    }

    /// The renewal seen last and when it was first seen.
    private var seen: (instance: String, renewal: UInt64, since: ContinuousClock.Instant)?

    public init() {}

    /// The longest TTL believed: a lease is decrypted with our key, but a holder's typo must not
    /// make its sessions wait for a day.
    public static let maxTTL: Duration = .seconds(600)

    public mutating func observe(_ lease: AgentLease?, at now: ContinuousClock.Instant) -> Verdict {
        guard let lease else {
            seen = nil
            return .expired
        }
        if let seen, seen.instance == lease.instance, seen.renewal == lease.renewal {
            // Unchanged since `since`.
        } else {
            seen = (lease.instance, lease.renewal, now)
        }
        let expiresAt = seen!.since + min(max(lease.ttl, .zero), Self.maxTTL)
        return now >= expiresAt ? .expired : .alive(expiresAt: expiresAt)
    }
}
