import SystemSupport

/// Decrypts an object in the container of FORMAT.md as it is pulled, one chunk at a time,
/// with memory bounded by two chunk buffers.
///
/// Each chunk's plaintext is served only after that chunk authenticates, but a stream is
/// only known to be complete when `read` returns 0: that happens after the FINAL chunk
/// authenticated and the upstream proved to end right after it. Until then, treat what
/// was read as provisional (a later `read` may still throw `.truncated` or `.tampered`).
public final class DecryptingSource: ByteSource {
    /// The key the object names, which also keyed the content ids of what it holds.
    public let key: EncryptionKey
    private let upstream: ByteSource
    private let stream: SecretStream
    private let associatedData: [UInt8]
    /// Big enough for the object header, and for a chunk's length and sealed bytes.
    /// The header, then one sealed chunk at a time; and that chunk opened. Both are sized to the
    /// largest chunk read so far: a head or a state file is a few hundred bytes, and zeroing,
    /// wiping and mapping two chunk-sized buffers for each cost more than opening it.
    private var input = WipedBuffer(count: ObjectFormat.headerByteCount)
    private var plaintext: WipedBuffer?
    private var unread = 0..<0
    private var verifiedEnd = false

    /// Reads and checks the object header, choosing the key by the key id it names.
    public init(keyring: Keyring, identity: ObjectIdentity, upstream: ByteSource) throws {
        self.upstream = upstream
        let header = input.slice(0..<ObjectFormat.headerByteCount)
        let count = try upstream.readFully(into: header)
        let magicCount = min(count, ObjectFormat.magic.count)
        guard header[0..<magicCount].elementsEqual(ObjectFormat.magic[0..<magicCount]) else {
            throw CryptoError.notAnEncryptedObject
        }
        guard count > ObjectFormat.versionOffset else { throw CryptoError.truncated }
        guard header[ObjectFormat.versionOffset] == ObjectFormat.version else {
            throw CryptoError.unsupportedVersion(header[ObjectFormat.versionOffset])
        }
        guard count == header.count else { throw CryptoError.truncated }

        let keyID = KeyID(bytes: Array(header[ObjectFormat.keyIDOffset..<ObjectFormat.streamHeaderOffset]))
        guard let key = keyring.key(for: keyID) else { throw CryptoError.unknownKeyID(keyID) }
        self.key = key
        stream = SecretStream.pull(
            key: key.streamKey,
            header: UnsafeRawBufferPointer(rebasing: header[ObjectFormat.streamHeaderOffset...]))
        associatedData = ObjectFormat.associatedData(header: UnsafeRawBufferPointer(header), identity: identity)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        precondition(!buffer.isEmpty, "reading into an empty buffer would look like the end of the stream")
        while unread.isEmpty {
            if verifiedEnd { return 0 }
            try openNextChunk()
        }
        let count = min(buffer.count, unread.count)
        buffer.copyMemory(from: UnsafeRawBufferPointer(plaintext!.slice(unread.lowerBound..<unread.lowerBound + count)))
        unread = unread.lowerBound + count..<unread.upperBound
        return count
    }

    private func openNextChunk() throws {
        let length = input.slice(0..<ObjectFormat.chunkLengthByteCount)
        // A clean cut between chunks shows up here, as a missing length.
        guard try upstream.readFully(into: length) == length.count else { throw CryptoError.truncated }
        let sealedCount = Int(ObjectFormat.bigEndianUInt32(UnsafeRawBufferPointer(length)))
        guard (ObjectFormat.minimumSealedChunkByteCount...ObjectFormat.maximumSealedChunkByteCount)
            .contains(sealedCount)
        else { throw CryptoError.tampered }

        if input.bytes.count < sealedCount { input = WipedBuffer(count: sealedCount) }
        let openedCount = sealedCount - SecretStream.overheadByteCount
        if (plaintext?.bytes.count ?? 0) < max(1, openedCount) { plaintext = WipedBuffer(count: max(1, openedCount)) }
        let plaintext = plaintext!
        let sealed = input.slice(0..<sealedCount)
        guard try upstream.readFully(into: sealed) == sealedCount else { throw CryptoError.truncated }
        let opened = associatedData.withUnsafeBytes { associatedData in
            stream.open(UnsafeRawBufferPointer(sealed), associatedData: associatedData, into: plaintext.bytes)
        }
        guard let opened else { throw CryptoError.tampered }

        switch opened.tag {
        case SecretStream.tagMessage where opened.count == ObjectFormat.plaintextChunkByteCount:
            break
        case SecretStream.tagFinal:
            var probe: UInt8 = 0
            let trailing = try withUnsafeMutableBytes(of: &probe) { try upstream.readFully(into: $0) }
            guard trailing == 0 else { throw CryptoError.tampered }
            verifiedEnd = true
        default:
            // A short MESSAGE chunk, or a tag our writer never uses.
            throw CryptoError.tampered
        }
        unread = 0..<opened.count
    }
}

extension ByteSource {
    /// Reads until `buffer` is full or the stream ends; returns the count read.
    func readFully(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var count = 0
        while count < buffer.count {
            let read = try self.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[count...]))
            if read == 0 { break }
            count += read
        }
        return count
    }
}
