/// What went wrong with a key or an encrypted object. Messages say what to do next and
/// never contain key material (nor the text a key was parsed from).
public enum CryptoError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The object names a key id that no configured key has.
    case unknownKeyID(KeyID)
    /// A chunk failed authentication, or the object is not laid out as FORMAT.md says.
    /// Associated data binds the session id and object name, so an intact object read
    /// under another identity fails here too: the two cannot be told apart.
    case tampered
    /// The object ends before its FINAL chunk (or inside its header).
    case truncated
    case unsupportedVersion(UInt8)
    /// The object does not start with the magic bytes.
    case notAnEncryptedObject
    case invalidKey(reason: String)
    /// `mode` is the permission bits (`st_mode & 0o7777`).
    case insecureKeyFile(path: String, mode: UInt32)
    case keyFileUnreadable(path: String, reason: String)
    case noKeyConfigured

    public var description: String {
        switch self {
        case .unknownKeyID(let id):
            return "the object was encrypted with key id \(id), which none of the configured keys has; "
                + "add that key for reading (after the primary in \(Keyring.environmentVariable) or a key file)"
        case .tampered:
            return "the object failed authentication: it was modified or corrupted, "
                + "or it belongs to another session/snapshot; use another copy of it"
        case .truncated:
            return "the object ends before its final chunk: it was cut short "
                + "(an interrupted upload, download or copy); fetch or write it again"
        case .unsupportedVersion(let version):
            return "the object uses format version \(version), but this sync-agent reads only version "
                + "\(ObjectFormat.version); upgrade sync-agent"
        case .notAnEncryptedObject:
            return "not a sync-agent encrypted object (its first bytes are not the format's magic); "
                + "check that the right file or object was given"
        case .invalidKey(let reason):
            return "invalid encryption key: \(reason); create a valid one with `sync-agent keygen`"
        case .insecureKeyFile(let path, let mode):
            return "key file \(path) is readable or writable by group or others "
                + "(mode \(octal(mode))); run: chmod 600 \(path)"
        case .keyFileUnreadable(let path, let reason):
            return "cannot read key file \(path): \(reason)"
        case .noKeyConfigured:
            return "no encryption key configured: set \(Keyring.environmentVariable) or give a key file; "
                + "create a key with `sync-agent keygen`"
        }
    }

    private func octal(_ mode: UInt32) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
