import SystemSupport

/// Encrypts a byte stream into the container of FORMAT.md and pushes it downstream, one
/// chunk at a time: memory stays at two chunk buffers whatever the stream's length.
///
/// Call `finish()` once at the end; without it the object has no FINAL chunk and every
/// reader rejects it as truncated. After a write error the sink is unusable.
public final class EncryptingSink: ByteSink {
    private let downstream: ByteSink
    private let stream: SecretStream
    private let associatedData: [UInt8]
    private let plaintext = WipedBuffer(count: ObjectFormat.plaintextChunkByteCount)
    private var plaintextCount = 0
    /// Object header, then one chunk's length and sealed bytes; the header goes out in
    /// front of the first chunk only.
    private let output = WipedBuffer(
        count: ObjectFormat.headerByteCount + ObjectFormat.chunkLengthByteCount
            + ObjectFormat.maximumSealedChunkByteCount)
    private var headerWritten = false
    private var finished = false

    /// Writes with `key`, normally `keyring.primary`.
    public init(key: EncryptionKey, identity: ObjectIdentity, downstream: ByteSink) {
        self.downstream = downstream
        let header = output.slice(0..<ObjectFormat.headerByteCount)
        header.copyBytes(from: ObjectFormat.magic)
        header[ObjectFormat.versionOffset] = ObjectFormat.version
        UnsafeMutableRawBufferPointer(rebasing: header[ObjectFormat.keyIDOffset..<ObjectFormat.streamHeaderOffset])
            .copyBytes(from: key.id.bytes)
        stream = SecretStream.push(
            key: key.streamKey,
            header: UnsafeMutableRawBufferPointer(rebasing: header[ObjectFormat.streamHeaderOffset...]))
        associatedData = ObjectFormat.associatedData(header: UnsafeRawBufferPointer(header), identity: identity)
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "EncryptingSink.write after finish()")
        var remaining = bytes
        while !remaining.isEmpty {
            // A full buffer is sealed only once more bytes arrive: if none do, it is the FINAL chunk.
            if plaintextCount == plaintext.bytes.count {
                try sealChunk(tag: SecretStream.tagMessage)
            }
            let count = min(remaining.count, plaintext.bytes.count - plaintextCount)
            plaintext.slice(plaintextCount..<plaintextCount + count)
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: remaining[..<count]))
            plaintextCount += count
            remaining = UnsafeRawBufferPointer(rebasing: remaining[count...])
        }
    }

    /// Seals what is buffered (possibly nothing) as the one FINAL chunk.
    public func finish() throws {
        precondition(!finished, "EncryptingSink.finish() called twice")
        finished = true
        try sealChunk(tag: SecretStream.tagFinal)
    }

    private func sealChunk(tag: UInt8) throws {
        let lengthOffset = ObjectFormat.headerByteCount
        let sealedOffset = lengthOffset + ObjectFormat.chunkLengthByteCount
        let sealedCount = associatedData.withUnsafeBytes { associatedData in
            stream.seal(
                UnsafeRawBufferPointer(plaintext.slice(0..<plaintextCount)), tag: tag,
                associatedData: associatedData, into: output.slice(sealedOffset..<output.bytes.count))
        }
        output.slice(lengthOffset..<sealedOffset).copyBytes(from: ObjectFormat.bigEndianBytes(UInt32(sealedCount)))
        plaintextCount = 0
        let start = headerWritten ? lengthOffset : 0
        headerWritten = true
        try downstream.write(UnsafeRawBufferPointer(output.slice(start..<sealedOffset + sealedCount)))
    }
}
