import SessionCrypto
import FoundationEssentials

/// Who a session is, as each snapshot's manifest records it (FORMAT.md, "Session identity"):
/// whether its credentials let it reconnect, whether it is paired with an account, and a keyed
/// fingerprint of its identity keys and account. Never the keys or the account themselves.
public struct SessionIdentity: Codable, Sendable, Equatable {
    /// Whether the credentials can bring the session back without a QR code.
    public enum AuthState: String, Codable, Sendable {
        case valid
        /// No credentials file.
        case missing
        /// Empty, larger than the format allows, or not JSON.
        case unparsable
        /// JSON without what the client needs to connect.
        case incomplete
    }

    public var authState: AuthState
    /// Paired with an account (Baileys: `me.id` set). A session waiting for its QR code is not.
    public var registered: Bool
    /// 64 hex digits, keyed by the key `keyID` names; nil when the credentials do not parse.
    public var fingerprint: String?
    /// The key id (16 hex digits) whose content-id subkey keyed `fingerprint`.
    public var keyID: String?

    /// How much of the fingerprint people see: enough to tell identities apart by eye.
    public static let shownPrefixLength = 12

    /// The fingerprint as `snapshots`, `/sessions` and `status` show it.
    public var shownFingerprint: String? { fingerprint.map { String($0.prefix(Self.shownPrefixLength)) } }

    init(authState: AuthState, registered: Bool = false, fingerprint: String? = nil, keyID: String? = nil) {
        self.authState = authState
        self.registered = registered
        self.fingerprint = fingerprint
        self.keyID = keyID
    }
}

/// The newest snapshot that holds a registered identity the session has since lost, which the
/// retention policy keeps (`last_registered_identity`) until the session logs out or an operator
/// runs `prune --forget-identity` (FORMAT.md, "Heads").
public struct IdentityHold: Codable, Sendable, Equatable {
    public var snapshot: SnapshotID
    /// When the agent saw the identity replaced.
    public var since: Date

    public init(snapshot: SnapshotID, since: Date) {
        self.snapshot = snapshot
        self.since = since
    }
}
