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
    /// The object header (magic, version, key id, stream header: nothing secret), sent in front
    /// of the first chunk.
    private let header: [UInt8]
    /// Plaintext waiting to be sealed. It grows to a whole chunk only as the stream does: most
    /// objects (a delta, a head) are a few KiB, and zeroing, wiping and mapping two chunk-sized
    /// buffers for each cost more than encrypting them.
    private var plaintext = WipedBuffer(count: EncryptingSink.firstPlaintextByteCount)
    private var plaintextCount = 0
    /// One chunk's length and sealed bytes, after the header for the first chunk; sized to the
    /// plaintext buffer.
    private var output: WipedBuffer?
    private var headerWritten = false
    private var finished = false

    static let firstPlaintextByteCount = 8 << 10

    /// Writes with `key`, normally `keyring.primary`.
    public init(key: EncryptionKey, identity: ObjectIdentity, downstream: ByteSink) {
        self.downstream = downstream
        var header = [UInt8](repeating: 0, count: ObjectFormat.headerByteCount)
        var stream: SecretStream?
        header.withUnsafeMutableBytes { header in
            header.copyBytes(from: ObjectFormat.magic)
            header[ObjectFormat.versionOffset] = ObjectFormat.version
            UnsafeMutableRawBufferPointer(rebasing: header[ObjectFormat.keyIDOffset..<ObjectFormat.streamHeaderOffset])
                .copyBytes(from: key.id.bytes)
            stream = SecretStream.push(
                key: key.streamKey,
                header: UnsafeMutableRawBufferPointer(rebasing: header[ObjectFormat.streamHeaderOffset...]))
        }
        self.stream = stream!
        self.header = header
        associatedData = header.withUnsafeBytes { ObjectFormat.associatedData(header: $0, identity: identity) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "EncryptingSink.write after finish()")
        var remaining = bytes
        while !remaining.isEmpty {
            if plaintextCount == plaintext.bytes.count {
                if plaintextCount < ObjectFormat.plaintextChunkByteCount {
                    growPlaintext()
                } else {
                    // A full chunk is sealed only once more bytes arrive: if none do, it is the FINAL chunk.
                    try sealChunk(tag: SecretStream.tagMessage)
                }
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

    private func growPlaintext() {
        let grown = WipedBuffer(count: min(2 * plaintext.bytes.count, ObjectFormat.plaintextChunkByteCount))
        grown.slice(0..<plaintextCount).copyMemory(from: UnsafeRawBufferPointer(plaintext.slice(0..<plaintextCount)))
        plaintext = grown
    }

    private func sealChunk(tag: UInt8) throws {
        let lengthOffset = ObjectFormat.headerByteCount
        let sealedOffset = lengthOffset + ObjectFormat.chunkLengthByteCount
        let outputByteCount = sealedOffset + plaintext.bytes.count + SecretStream.overheadByteCount
        if output == nil || output!.bytes.count < outputByteCount { output = WipedBuffer(count: outputByteCount) }
        let output = output!
        let sealedCount = associatedData.withUnsafeBytes { associatedData in
            stream.seal(
                UnsafeRawBufferPointer(plaintext.slice(0..<plaintextCount)), tag: tag,
                associatedData: associatedData, into: output.slice(sealedOffset..<output.bytes.count))
        }
        output.slice(lengthOffset..<sealedOffset).copyBytes(from: ObjectFormat.bigEndianBytes(UInt32(sealedCount)))
        plaintextCount = 0
        let start = headerWritten ? lengthOffset : 0
        if !headerWritten { output.slice(0..<lengthOffset).copyBytes(from: header) }
        headerWritten = true
        try downstream.write(UnsafeRawBufferPointer(output.slice(start..<sealedOffset + sealedCount)))
    }
}
