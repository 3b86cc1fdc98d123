import SystemSupport

/// Where an encrypted object belongs. Both strings are bound into every chunk's associated
/// data (as their UTF-8 bytes, unnormalised), so an object copied or renamed to another
/// session or snapshot fails to decrypt.
public struct ObjectIdentity: Sendable, Hashable, CustomStringConvertible {
    public let sessionID: String
    /// The snapshot id and object kind, e.g. "snap/000123.base".
    public let objectName: String

    public init(sessionID: String, objectName: String) {
        self.sessionID = sessionID
        self.objectName = objectName
    }

    public var description: String { "\(sessionID)/\(objectName)" }
}

/// The layout of an encrypted object, exactly as FORMAT.md ("Encrypted container") states it.
enum ObjectFormat {
    static let magic: [UInt8] = Array("SYNCAENC".utf8)
    static let version: UInt8 = 1

    static let versionOffset = magic.count
    static let keyIDOffset = versionOffset + 1
    static let streamHeaderOffset = keyIDOffset + KeyID.byteCount
    static let headerByteCount = streamHeaderOffset + SecretStream.headerByteCount

    /// Plaintext bytes in every chunk but the last, which holds 0 through this many.
    static let plaintextChunkByteCount = 64 * 1024
    /// Each chunk is preceded by its sealed length, so a reader can tell a stream cut
    /// inside a chunk (fewer bytes than announced: truncated) from a damaged one.
    static let chunkLengthByteCount = 4
    static let minimumSealedChunkByteCount = SecretStream.overheadByteCount
    static let maximumSealedChunkByteCount = plaintextChunkByteCount + SecretStream.overheadByteCount

    /// Header ‖ u32be(len(session id)) ‖ session id ‖ u32be(len(object name)) ‖ object name.
    static func associatedData(header: UnsafeRawBufferPointer, identity: ObjectIdentity) -> [UInt8] {
        precondition(header.count == headerByteCount)
        var data = Array(header)
        for field in [identity.sessionID, identity.objectName] {
            let bytes = Array(field.utf8)
            data += bigEndianBytes(UInt32(bytes.count))
            data += bytes
        }
        return data
    }

    static func bigEndianBytes(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    static func bigEndianUInt32(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        precondition(bytes.count == 4)
        return bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }
}

/// Encrypts a small object (a manifest) in memory, through the same `EncryptingSink`.
public func encrypt(_ plaintext: [UInt8], key: EncryptionKey, identity: ObjectIdentity) -> [UInt8] {
    let object = BufferSink()
    let sink = EncryptingSink(key: key, identity: identity, downstream: object)
    do {
        try plaintext.withUnsafeBytes { try sink.write($0) }
        try sink.finish()
    } catch {
        preconditionFailure("writing to memory cannot fail, yet: \(error)")
    }
    return object.bytes
}

/// Decrypts a small object in memory, through the same `DecryptingSource`.
public func decrypt(_ object: [UInt8], keyring: Keyring, identity: ObjectIdentity) throws -> [UInt8] {
    let source = try DecryptingSource(keyring: keyring, identity: identity, upstream: BufferSource(object))
    var plaintext: [UInt8] = []
    // Sized to the object (a head is a few hundred bytes), up to one chunk.
    var buffer = [UInt8](repeating: 0, count: max(1, min(object.count, ObjectFormat.plaintextChunkByteCount)))
    while true {
        let count = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
        if count == 0 { return plaintext }
        plaintext += buffer[0..<count]
    }
}
