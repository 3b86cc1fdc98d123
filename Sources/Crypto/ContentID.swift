/// A deduplication id: keyed BLAKE2b-256 of the content, keyed by a subkey of the master
/// key (FORMAT.md, "Content ids"). Equal content under the same key gives the same id;
/// without the key the id says nothing about the content.
public struct ContentID: Sendable, Hashable, CustomStringConvertible {
    public static let byteCount = 32
    public let bytes: [UInt8]

    init(bytes: [UInt8]) {
        precondition(bytes.count == Self.byteCount)
        self.bytes = bytes
    }

    /// Parses the lowercase or uppercase hex form that `description` prints.
    public init?(hex: String) {
        var hex = hex
        guard hex.utf8.count == 2 * Self.byteCount else { return nil }
        var bytes = [UInt8](repeating: 0, count: Self.byteCount)
        let decoded = hex.withUTF8 { text in
            bytes.withUnsafeMutableBytes { Sodium.decodeHex(UnsafeRawBufferPointer(text), into: $0) }
        }
        guard decoded else { return nil }
        self.bytes = bytes
    }

    public var description: String { hexString(bytes) }
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
