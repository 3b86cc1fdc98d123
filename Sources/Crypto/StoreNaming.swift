import CSodium
import SystemSupport

/// The store's naming secret and the keyed ids derived from it (FORMAT.md, "Keyed names"): the
/// names object keys carry instead of a session id (or an agent id), so a listing of the bucket
/// reveals no phone number. The same secret and name always give the same id, so every writer of
/// a store agrees on a session's prefix; without the secret the id says nothing about the name.
///
/// The secret is 32 random bytes of its own, not derived from a key: it is stored in the store
/// wrapped under each key of the keyring (`naming/<key id>`), so rotating the primary key adds a
/// wrap and changes no prefix, and an old key can leave the keyring once the new one has a wrap.
public final class StoreNaming: @unchecked Sendable {
    // @unchecked: the secret is written once in init and only read afterwards.

    public static let secretByteCount = 32
    /// BLAKE2b's shortest output: 128 bits, so no two names of a store meet by chance.
    public static let keyedIDByteCount = 16
    /// Prefixes the hashed message, so an id made for one use never equals one made for another.
    static let label = Array("sync-agent keyed name 1\n".utf8)

    /// What a keyed id names: the same name gives unrelated ids in two domains.
    public enum Domain: String, Sendable {
        /// `sessions/<keyed id>/`.
        case session
        /// `agents/<keyed id>/`.
        case agent
    }

    private let secret: WipedBuffer

    /// A secret read back from its wrap; nil unless exactly `secretByteCount` bytes.
    public init?(secret bytes: [UInt8]) {
        guard bytes.count == Self.secretByteCount else { return nil }
        secret = WipedBuffer(count: Self.secretByteCount)
        secret.bytes.copyBytes(from: bytes)
    }

    private init(filling fill: (UnsafeMutableRawBufferPointer) -> Void) {
        secret = WipedBuffer(count: Self.secretByteCount)
        fill(secret.bytes)
    }

    /// A new secret from the system's secure random source.
    public static func generate() -> StoreNaming {
        StoreNaming { Sodium.randomBytes(into: $0) }
    }

    /// The plaintext of a wrap: the secret's bytes. Only for encrypting it into the store.
    public var wrapPayload: [UInt8] { Array(UnsafeRawBufferPointer(secret.bytes)) }

    public func sameSecret(as other: StoreNaming) -> Bool {
        sodium_memcmp(secret.bytes.baseAddress!, other.secret.bytes.baseAddress!, Self.secretByteCount) == 0
    }

    /// BLAKE2b-128 keyed with the secret over `label ‖ u32be(len(domain)) ‖ domain ‖ u32be(len(name)) ‖ name`,
    /// as 32 lowercase hex digits.
    public func keyedID(_ domain: Domain, name: [UInt8]) -> String {
        let hash = KeyedHash(key: UnsafeRawBufferPointer(secret.bytes), outputByteCount: Self.keyedIDByteCount)
        var message = Self.label
        for part in [Array(domain.rawValue.utf8), name] {
            withUnsafeBytes(of: UInt32(part.count).bigEndian) { message += $0 }
            message += part
        }
        message.withUnsafeBytes { hash.update($0) }
        return hash.finalize().lowercaseHex
    }

    /// Whether `text` has the spelling of a keyed id: 32 lowercase hex digits.
    public static func isKeyedID(_ text: some StringProtocol) -> Bool {
        text.utf8.count == 2 * keyedIDByteCount && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

extension StoreNaming: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String { "StoreNaming(secret redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: [:]) }
}
