import SessionCrypto
import FoundationEssentials

/// What the agent knows of the files in a session directory. Everything specific to a client
/// library lives behind this type: `baileys` reads `creds.json` for the session's identity and
/// checks it before a restore; `opaque` treats a session as bytes only (no identity, no check).
public enum SessionFormat: String, Sendable, CaseIterable {
    case baileys
    case opaque

    public static let environmentVariable = "SYNC_AGENT_SESSION_FORMAT"

    /// The file that holds the session's identity; nil when the format knows none.
    var credentialsFile: String? {
        switch self {
        case .baileys: BaileysCredentials.fileName
        case .opaque: nil
        }
    }

    /// The identity credentials `bytes` hold (nil: the file is absent), fingerprinted with `key`.
    /// Nil for a format without an identity.
    func identity(ofCredentials bytes: [UInt8]?, key: EncryptionKey) -> SessionIdentity? {
        switch self {
        case .opaque:
            return nil
        case .baileys:
            do {
                let credentials = try BaileysCredentials.parse(bytes)
                return SessionIdentity(
                    authState: .valid, registered: credentials.isPaired,
                    fingerprint: credentials.fingerprint(key: key).description, keyID: key.id.description)
            } catch {
                return SessionIdentity(authState: error.reason.authState)
            }
        }
    }

    /// Checks a rebuilt session's credentials before it is swapped in: whether its client can
    /// reconnect without a QR code. Returns whether it is paired (nil: the format has no
    /// credentials to check); throws `AuthStateError` when the client could not use them.
    /// `source` names where they were read (`creds.json`, or a database's creds row).
    func checkAuthState(
        credentials bytes: [UInt8]?, source: String = BaileysCredentials.fileName, session: SessionID, snapshot: SnapshotID
    ) throws -> Bool? {
        switch self {
        case .opaque:
            return nil
        case .baileys:
            do {
                return try BaileysCredentials.parse(bytes, source: source).isPaired
            } catch {
                throw AuthStateError(session: session, snapshot: snapshot, defect: error.description)
            }
        }
    }

    /// The number of pre-keys among a session's files (`pre-key-<id>.json`): Baileys mints them
    /// without bound in some versions (sessions of 5,000 to 7,400 files). Nil for a format without them.
    func preKeyCount(_ state: SessionState) -> Int? {
        switch self {
        case .opaque: nil
        case .baileys: state.topLevelCount(withPrefix: "pre-key-")
        }
    }
}

extension BaileysCredentials.Defect.Reason {
    var authState: SessionIdentity.AuthState {
        switch self {
        case .missing: .missing
        case .tooLarge, .unparsable: .unparsable
        case .incomplete: .incomplete
        }
    }
}

/// A rebuilt session whose credentials its client could not use: restoring it would leave the
/// worker to mint a new identity (Baileys' `initAuthCreds()`) and lose the number, so it is not
/// swapped in. `passing` names the newest snapshot whose credentials pass, when one is known.
public struct AuthStateError: Error, Sendable, Equatable, CustomStringConvertible {
    public let session: SessionID
    public let snapshot: SnapshotID
    /// What is wrong, naming the field, never a value.
    public let defect: String
    public var passing: SnapshotID?

    public static let reason = "invalid_auth_state"

    public var description: String {
        let advice = passing.map { "; snapshot \($0) passes (restore it with --snapshot \($0) \(session))" }
            ?? "; no older snapshot is known to pass"
        return "snapshot \(snapshot) of session \(session) cannot reconnect: \(defect); the directory was left as it was\(advice)"
    }
}

extension SessionFormat {
    /// The identity credentials `bytes` give (nil: the file is absent), and whether it replaces
    /// `previous` when that one was registered: by one that is not registered (a client that
    /// minted a new identity, credentials that no longer parse, or none) or by another one. The
    /// fingerprints are compared under the key that keyed `previous` (a key rotation changes
    /// them); when no key of `keyring` has its id any more, only a loss of registration counts.
    func identity(ofCredentials bytes: [UInt8]?, keyring: Keyring, previous: SessionIdentity?)
        -> (identity: SessionIdentity?, replacesRegistered: Bool)
    {
        guard let current = identity(ofCredentials: bytes, key: keyring.primary) else { return (nil, false) }
        guard let previous, previous.registered else { return (current, false) }
        guard current.registered else { return (current, true) }
        guard let key = keyring.keys.first(where: { $0.id.description == previous.keyID }) else { return (current, false) }
        let comparable = key === keyring.primary ? current : identity(ofCredentials: bytes, key: key)
        return (current, comparable?.fingerprint != previous.fingerprint)
    }
}
