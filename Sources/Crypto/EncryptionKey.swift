import SystemSupport

/// A 32-byte master key and the subkeys derived from it (FORMAT.md, "Keys").
///
/// The bytes live in memory that is wiped when the last reference goes away, and no
/// description, debug description or mirror ever shows them.
public final class EncryptionKey: @unchecked Sendable {
    // @unchecked: the key bytes are written once in init and only read afterwards.

    public static let byteCount = 32
    /// `crypto_kdf` context shared by every subkey; FORMAT.md lists the subkey ids.
    static let derivationContext: StaticString = "syncagnt"
    static let streamSubkeyID: UInt64 = 1
    static let contentIDSubkeyID: UInt64 = 2
    static let keyIDSubkeyID: UInt64 = 3
    /// crypto_kdf's shortest subkey; the key id is its first `KeyID.byteCount` bytes.
    private static let keyIDSubkeyByteCount = 16

    public let id: KeyID
    /// master ‖ stream key ‖ content-id key, each `byteCount` bytes.
    private let storage: WipedBuffer

    private init(filling fill: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        Sodium.ensureInitialized()
        let n = Self.byteCount
        storage = WipedBuffer(count: 3 * n)
        let master = storage.slice(0..<n)
        try fill(master)
        Sodium.deriveSubkey(
            into: storage.slice(n..<2 * n), id: Self.streamSubkeyID,
            context: Self.derivationContext, masterKey: UnsafeRawBufferPointer(master))
        Sodium.deriveSubkey(
            into: storage.slice(2 * n..<3 * n), id: Self.contentIDSubkeyID,
            context: Self.derivationContext, masterKey: UnsafeRawBufferPointer(master))
        let keyIDSubkey = WipedBuffer(count: Self.keyIDSubkeyByteCount)
        Sodium.deriveSubkey(
            into: keyIDSubkey.bytes, id: Self.keyIDSubkeyID,
            context: Self.derivationContext, masterKey: UnsafeRawBufferPointer(master))
        id = KeyID(bytes: Array(keyIDSubkey.bytes.prefix(KeyID.byteCount)))
    }

    /// A new key from the system's secure random source.
    public static func generate() -> EncryptionKey {
        EncryptionKey { Sodium.randomBytes(into: $0) }
    }

    /// Parses 64 hex digits or base64 (standard or URL-safe alphabet, padded or not);
    /// surrounding whitespace is ignored. Errors never repeat the text.
    public convenience init(parsing text: String) throws {
        var text = text
        try self.init { key in
            try text.withUTF8 { try Self.decode(UnsafeRawBufferPointer($0), source: "the key", into: key) }
        }
    }

    /// `source` names where the text came from, for error messages ("key file /x, line 2").
    convenience init(parsing text: UnsafeRawBufferPointer, source: String) throws {
        try self.init { try Self.decode(text, source: source, into: $0) }
    }

    private static func decode(
        _ text: UnsafeRawBufferPointer, source: String, into key: UnsafeMutableRawBufferPointer
    ) throws {
        let text = trimmingWhitespace(text)
        let hexCount = 2 * byteCount
        switch text.count {
        case 0:
            throw CryptoError.invalidKey(reason: "\(source) is empty")
        case hexCount:
            guard Sodium.decodeHex(text, into: key) else {
                throw CryptoError.invalidKey(reason: "\(source) has \(hexCount) characters but is not hexadecimal")
            }
        case 43...44:
            guard Sodium.decodeBase64(text, into: key) else {
                throw CryptoError.invalidKey(reason: "\(source) is not valid base64 for \(byteCount) bytes")
            }
        default:
            throw CryptoError.invalidKey(
                reason: "\(source) has \(text.count) characters, but a \(byteCount)-byte key is "
                    + "\(hexCount) hex digits or 44 base64 characters (43 without padding)")
        }
    }

    /// The key as padded standard base64, the form `sync-agent keygen` prints. This is the
    /// only way key material leaves this type: call it only to show a new key to its owner.
    public func base64EncodedString() -> String {
        Sodium.encodeBase64(UnsafeRawBufferPointer(storage.slice(0..<Self.byteCount)))
    }

    var streamKey: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(storage.slice(Self.byteCount..<2 * Self.byteCount))
    }

    var contentIDKey: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(storage.slice(2 * Self.byteCount..<3 * Self.byteCount))
    }
}

extension EncryptionKey: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String { "EncryptionKey(id: \(id), key material redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["id": id]) }
}

/// Names a key without revealing it (FORMAT.md, "Key id"); safe to log and to store.
public struct KeyID: Sendable, Hashable, CustomStringConvertible {
    public static let byteCount = 8
    public let bytes: [UInt8]

    init(bytes: [UInt8]) {
        precondition(bytes.count == Self.byteCount)
        self.bytes = bytes
    }

    public var description: String { bytes.lowercaseHex }
}

func trimmingWhitespace(_ text: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
    let isWhitespace: (UInt8) -> Bool = { [0x20, 0x09, 0x0a, 0x0b, 0x0c, 0x0d].contains($0) }
    guard let start = text.firstIndex(where: { !isWhitespace($0) }),
        let last = text.lastIndex(where: { !isWhitespace($0) })
    else { return UnsafeRawBufferPointer(rebasing: text[0..<0]) }
    return UnsafeRawBufferPointer(rebasing: text[start...last])
}
