/// Whether a holder's lease expired, decided on the acquirer's own monotonic clock: a lease is
/// expired once the acquirer has seen it unchanged (the same process, the same renewal) for a
/// whole TTL, or when there is none; sooner only when the store's own clock says so (`staleBy`:
/// how long before the acquirer's own lease write the store wrote the holder's, both times
/// from the one store), past the TTL and a margin for the stores' time precision. Clocks of
/// two hosts are never compared. Pure: the caller passes each lease it read and the time it read it.
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

    /// What the store's times must show beyond the TTL: S3 lists times to the second.
    public static let storeTimeMargin: Duration = .seconds(2)

    public mutating func observe(_ lease: AgentLease?, staleBy: Duration? = nil, at now: ContinuousClock.Instant) -> Verdict {
        guard let lease else {
            seen = nil
            return .expired
        }
        let ttl = min(max(lease.ttl, .zero), Self.maxTTL)
        if let staleBy, staleBy >= ttl + Self.storeTimeMargin { return .expired }
        if let seen, seen.instance == lease.instance, seen.renewal == lease.renewal {
            // Unchanged since `since`.
        } else {
            seen = (lease.instance, lease.renewal, now)
        }
        let expiresAt = seen!.since + ttl
        return now >= expiresAt ? .expired : .alive(expiresAt: expiresAt)
    }
}
