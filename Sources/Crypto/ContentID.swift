import SystemSupport

/// A deduplication id: keyed BLAKE2b-256 of the content, keyed by a subkey of the master
/// key (FORMAT.md, "Content ids"). Equal content under the same key gives the same id;
/// without the key the id says nothing about the content.
///
/// The 32 bytes are stored inline, not in an array or a hex string: the sidecar keeps one id
/// per file of every session it watches (tens of thousands), and a heap object each would
/// cost more than the id itself. Encoded (JSON) as its hex form.
public struct ContentID: Sendable, Hashable, Codable, CustomStringConvertible {
    public static let byteCount = 32
    private var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    init(bytes: [UInt8]) {
        precondition(bytes.count == Self.byteCount)
        withUnsafeMutableBytes(of: &words) { $0.copyBytes(from: bytes) }
    }

    /// Parses the lowercase or uppercase hex form that `description` prints.
    public init?(hex: String) {
        var hex = hex
        guard let id = hex.withUTF8({ ContentID(hex: UnsafeRawBufferPointer($0)) }) else { return nil }
        self = id
    }

    /// The same from the text's bytes (a manifest line's, read without a String).
    public init?(hex: UnsafeRawBufferPointer) {
        guard hex.count == 2 * Self.byteCount,
              withUnsafeMutableBytes(of: &words, { Sodium.decodeHex(hex, into: $0) })
        else { return nil }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        guard let id = ContentID(hex: try container.decode(String.self)) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a 64-digit hex content id")
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public var bytes: [UInt8] { withUnsafeBytes(of: words) { Array($0) } }

    public var description: String { withUnsafeBytes(of: words) { $0.lowercaseHex } }

    /// Appends the lowercase hex form, without making a String: state digests spell every
    /// file's id this way on every upload.
    public func appendHex(to bytes: inout [UInt8]) {
        withUnsafeBytes(of: words) { Hex.append($0, to: &bytes) }
    }

    public static func == (lhs: ContentID, rhs: ContentID) -> Bool {
        lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2
            && lhs.words.3 == rhs.words.3
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: words) { hasher.combine(bytes: $0) }
    }
}

/// Computes a content id over data that arrives in pieces; a `ByteSink`, so it can sit in
/// a pipeline. Call `finalize()` once at the end.
public final class ContentHasher: ByteSink {
    private let hash: KeyedHash

    public init(key: EncryptionKey) {
        hash = KeyedHash(key: key.contentIDKey, outputByteCount: ContentID.byteCount)
    }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        hash.update(bytes)
    }

    public func finalize() -> ContentID {
        ContentID(bytes: hash.finalize())
    }
}

extension EncryptionKey {
    public func contentID(of bytes: [UInt8]) -> ContentID {
        let hasher = ContentHasher(key: self)
        bytes.withUnsafeBytes { hasher.write($0) }
        return hasher.finalize()
    }
}
