import SessionCrypto
import FoundationEssentials

/// A Baileys `creds.json` (its `useMultiFileAuthState`), as far as the agent needs it: whether
/// Baileys can reconnect with it without a QR code, whether it is paired, and the identity keys.
///
/// Binary values are Baileys' `BufferJSON`: `{"type":"Buffer","data":"<base64>"}` (older
/// versions wrote `data` as an array of bytes). Every other field is ignored. The parsed value
/// holds public keys and the account's JID only; private keys are checked for their length and
/// not kept.
struct BaileysCredentials: Sendable {
    /// The name of the file in a session directory.
    static let fileName = "creds.json"
    /// A real `creds.json` is 2 to 5 KB; one larger than this is not one, and is not read whole.
    static let maximumByteCount = 1 << 20

    /// `noiseKey.public`, `signedIdentityKey.public`: what the identity is.
    let noisePublicKey: [UInt8]
    let identityPublicKey: [UInt8]
    /// `me.id`, the account's JID (its phone number): only ever hashed into the fingerprint.
    let accountID: String?

    /// Paired with a WhatsApp account: `me.id` is set. Baileys' own `registered` flag is set by
    /// its pairing-code flow only (a session paired by QR code keeps `false`), so it is not the test.
    var isPaired: Bool { accountID != nil }

    /// Why a `creds.json` cannot bring a session back without a QR code.
    struct Defect: Error, Sendable, Equatable, CustomStringConvertible {
        enum Reason: String, Sendable {
            case missing
            case tooLarge = "too_large"
            case unparsable
            case incomplete
        }

        let reason: Reason
        let description: String
    }

    /// Parses `bytes` (nil: the file is absent). Throws a `Defect` naming the first field that is
    /// missing or malformed, never a value.
    /// `source` names where they were read in messages: the file, or a database's creds row.
    static func parse(_ bytes: [UInt8]?, source: String = fileName) throws(Defect) -> BaileysCredentials {
        let fileName = source
        guard let bytes else { throw Defect(reason: .missing, description: "\(fileName) is missing") }
        guard bytes.count <= maximumByteCount else {
            throw Defect(reason: .tooLarge, description: "\(fileName) is larger than \(maximumByteCount >> 20) MiB, so not Baileys' credentials")
        }
        guard !bytes.isEmpty else { throw Defect(reason: .unparsable, description: "\(fileName) is empty (0 bytes)") }
        let document: Document
        do {
            document = try JSONDecoder().decode(Document.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw Self.defect(error, source: source)
        } catch {
            throw Defect(reason: .unparsable, description: "\(fileName) does not parse as JSON")
        }
        return try document.credentials(source: source)
    }

    private static func defect(_ error: DecodingError, source fileName: String) -> Defect {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            let field = (path(context).isEmpty ? "" : path(context) + ".") + key.stringValue
            return Defect(reason: .incomplete, description: "\(fileName) has no \(field)")
        case .valueNotFound(_, let context), .typeMismatch(_, let context):
            return Defect(
                reason: .incomplete,
                description: path(context).isEmpty ? "\(fileName) is not a JSON object" : "\(fileName) has a malformed \(path(context))")
        case .dataCorrupted(let context) where !context.codingPath.isEmpty:
            return Defect(reason: .incomplete, description: "\(fileName) has a malformed \(path(context))")
        default:
            return Defect(reason: .unparsable, description: "\(fileName) does not parse as JSON")
        }
    }

    /// The fields Baileys needs to connect: those `initAuthCreds()` creates, and once paired `me`
    /// and `account` (the signed device identity it presents).
    private struct Document: Decodable {
        var noiseKey: KeyPair
        var signedIdentityKey: KeyPair
        var signedPreKey: SignedPreKey
        var registrationId: Int
        var advSecretKey: String
        var me: Me?
        var account: Account?

        struct KeyPair: Decodable {
            var `private`: Buffer
            var `public`: Buffer
        }

        struct SignedPreKey: Decodable {
            var keyPair: KeyPair
            var signature: Buffer
            var keyId: Int
        }

        struct Me: Decodable {
            var id: String
        }

        struct Account: Decodable {
            var details: Buffer
            var accountSignatureKey: Buffer
            var accountSignature: Buffer
            var deviceSignature: Buffer
        }

        func credentials(source fileName: String) throws(Defect) -> BaileysCredentials {
            func check(_ valid: Bool, _ field: String) throws(Defect) {
                if !valid { throw Defect(reason: .incomplete, description: "\(fileName) has a malformed \(field)") }
            }
            for (pair, name) in [(noiseKey, "noiseKey"), (signedIdentityKey, "signedIdentityKey"), (signedPreKey.keyPair, "signedPreKey.keyPair")] {
                // Curve25519: 32-byte keys; libsignal's public keys may carry their 0x05 type byte.
                try check(pair.private.bytes.count == 32, "\(name).private")
                try check([32, 33].contains(pair.public.bytes.count), "\(name).public")
            }
            try check(signedPreKey.signature.bytes.count == 64, "signedPreKey.signature")
            try check(registrationId > 0, "registrationId")
            try check(Data(base64Encoded: advSecretKey)?.count == 32, "advSecretKey")
            let accountID = me.map(\.id).flatMap { $0.isEmpty ? nil : $0 }
            if accountID != nil {
                guard account != nil else { throw Defect(reason: .incomplete, description: "\(fileName) has me but no account") }
            }
            return BaileysCredentials(
                noisePublicKey: noiseKey.public.bytes, identityPublicKey: signedIdentityKey.public.bytes, accountID: accountID)
        }
    }

    /// Baileys' `BufferJSON` spelling of bytes.
    private struct Buffer: Decodable {
        var bytes: [UInt8]

        private enum CodingKeys: String, CodingKey { case type, data }

        init(from decoder: any Decoder) throws {
            // Bytes written as a bare base64 string, as Baileys writes `advSecretKey` and some
            // versions and forks write the account's fields: the check is for credentials a
            // session cannot reconnect with, not for one spelling of the same bytes.
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                guard let data = Data(base64Encoded: text) else {
                    throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not base64"))
                }
                bytes = Array(data)
                return
            }
            let container = try decoder.container(keyedBy: CodingKeys.self)
            guard try container.decode(String.self, forKey: .type) == "Buffer" else {
                throw DecodingError.dataCorruptedError(forKey: .type, in: container, debugDescription: "not a Buffer")
            }
            if let text = try? container.decode(String.self, forKey: .data) {
                guard let data = Data(base64Encoded: text) else {
                    throw DecodingError.dataCorruptedError(forKey: .data, in: container, debugDescription: "not base64")
                }
                bytes = Array(data)
            } else {
                bytes = try container.decode([UInt8].self, forKey: .data)
            }
        }
    }

    /// The keyed fingerprint of this identity (FORMAT.md, "Session identity"): BLAKE2b-256 keyed
    /// with `key`'s content-id subkey over a domain-separated, length-prefixed encoding of the
    /// two public keys and `me.id`. Without the key it says nothing about them.
    func fingerprint(key: EncryptionKey) -> ContentID {
        let hasher = ContentHasher(key: key)
        func add(_ bytes: [UInt8]) {
            let count = UInt32(bytes.count)
            let length: [UInt8] = [UInt8(count >> 24), UInt8(count >> 16 & 0xff), UInt8(count >> 8 & 0xff), UInt8(count & 0xff)]
            (length + bytes).withUnsafeBytes { hasher.write($0) }
        }
        Array(Self.fingerprintDomain.utf8).withUnsafeBytes { hasher.write($0) }
        add(noisePublicKey)
        add(identityPublicKey)
        add(Array((accountID ?? "").utf8))
        return hasher.finalize()
    }

    /// Sets the fingerprint's input apart from any file's content.
    static let fingerprintDomain = "sync-agent session identity 1\n"
}
