import Foundation
import SessionCrypto
import SystemSupport
import TestSupport
import Testing

struct EncryptedObjectTests {
    let header = 41
    let chunkOverhead = 4 + 17

    @Test(arguments: [0, 1, 17, chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1, 3 * chunk - 1])
    func roundTripsAtChunkEdgesWithAnyWriteAndReadSizes(size: Int) throws {
        let plaintext = randomBytes(size, seed: UInt64(size))
        for pieces in [[size + 1], [1], [chunk], [1000, 7, chunk + 3]] where size < 4096 || pieces != [1] {
            let object = try encryptInPieces(plaintext, pieceSizes: pieces)
            let chunks = max(1, (size + chunk - 1) / chunk)
            #expect(object.count == header + chunks * chunkOverhead + size, "size \(size)")
            for bufferSize in [1, 7, 4093, chunk + 5] where size < 4096 || bufferSize > 1 {
                #expect(try decryptReading(object, bufferSize: bufferSize) == plaintext, "size \(size), pieces \(pieces), buffer \(bufferSize)")
            }
        }
    }

    @Test func roundTripsSeveralMegabytesAndRandomSizes() throws {
        let large = randomBytes(5 * 1024 * 1024 + 12345, seed: 1)
        let object = try encryptInPieces(large, pieceSizes: [10240])
        #expect(try decryptReading(object, bufferSize: 10240) == large)

        var generator = SplitMix64(seed: 2)
        for round in 0..<20 {
            let size = Int.random(in: 0...(4 * chunk), using: &generator)
            let piece = Int.random(in: 1...(2 * chunk), using: &generator)
            let buffer = Int.random(in: 1...(2 * chunk), using: &generator)
            let plaintext = randomBytes(size, seed: UInt64(100 + round))
            let object = try encryptInPieces(plaintext, pieceSizes: [piece])
            #expect(try decryptReading(object, bufferSize: buffer) == plaintext, "round \(round)")
        }
    }

    @Test func inMemoryHelpersMatchTheStreams() throws {
        let keyring = Keyring(primary: TestKeys.sequential)
        let manifest = Array(#"{"files":["creds.json"]}"#.utf8)
        let object = encrypt(manifest, key: keyring.primary, identity: identity)
        #expect(try decrypt(object, keyring: keyring, identity: identity) == manifest)
        #expect(try decryptReading(object, bufferSize: 3) == manifest)
        #expect(try decrypt(try encryptInPieces(manifest, pieceSizes: [5]), keyring: keyring, identity: identity) == manifest)
        #expect(try decrypt(encrypt([], key: keyring.primary, identity: identity), keyring: keyring, identity: identity) == [])
    }

    @Test func encryptingTwiceGivesDifferentObjects() {
        let plaintext = Array("same".utf8)
        #expect(encrypt(plaintext, key: TestKeys.sequential, identity: identity) != encrypt(plaintext, key: TestKeys.sequential, identity: identity))
    }

    @Test func sinkStreamsChunksBeforeFinish() throws {
        let object = BufferSink()
        let sink = EncryptingSink(key: TestKeys.sequential, identity: identity, downstream: object)
        let plaintext = randomBytes(3 * chunk, seed: 3)
        try plaintext.withUnsafeBytes { try sink.write($0) }
        // The third full chunk may still become FINAL, so only two have gone out.
        #expect(object.bytes.count == header + 2 * (chunk + chunkOverhead))
        try sink.finish()
        #expect(object.bytes.count == header + 3 * (chunk + chunkOverhead))
    }

    @Test func sourceNeverAsksUpstreamForMoreThanAChunk() throws {
        final class RecordingSource: ByteSource {
            let inner: BufferSource
            var largestRequest = 0
            init(_ bytes: [UInt8]) { inner = BufferSource(bytes) }
            func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
                largestRequest = max(largestRequest, buffer.count)
                return try inner.read(into: buffer)
            }
        }
        let plaintext = randomBytes(10 * chunk, seed: 4)
        let upstream = RecordingSource(try encryptInPieces(plaintext, pieceSizes: [chunk]))
        let source = try DecryptingSource(keyring: Keyring(primary: TestKeys.sequential), identity: identity, upstream: upstream)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var total = 0
        while case let count = try buffer.withUnsafeMutableBytes({ try source.read(into: $0) }), count > 0 {
            total += count
        }
        #expect(total == plaintext.count)
        #expect(upstream.largestRequest <= chunk + 17)
    }

    // MARK: - Damage

    @Test func everyByteFlippedInASmallObjectIsRejected() throws {
        let object = encrypt(Array("{\"me\":{\"id\":\"4915112345678@s.whatsapp.net\"}}".utf8), key: TestKeys.sequential, identity: identity)
        let keyring = Keyring(primary: TestKeys.sequential)
        for offset in object.indices {
            var damaged = object
            damaged[offset] ^= 0xff
            let error = #expect(throws: CryptoError.self, "offset \(offset)") { try decrypt(damaged, keyring: keyring, identity: identity) }
            if let error { expectRejection(error, flippingOffset: offset, in: damaged, chunkStarts: [header]) }
        }
    }

    @Test func flippedBytesAcrossEveryChunkOfALargerObjectAreRejected() throws {
        let plaintext = randomBytes(2 * chunk + 100, seed: 5)
        let object = try encryptInPieces(plaintext, pieceSizes: [4096])
        let keyring = Keyring(primary: TestKeys.sequential)
        let chunkStarts = [header, header + chunk + chunkOverhead, header + 2 * (chunk + chunkOverhead)]
        // Every byte near the start and end of each region, and a stride through the middle.
        var offsets = Set(0..<header)
        for start in chunkStarts {
            let end = start == chunkStarts.last ? object.count : start + chunk + chunkOverhead
            offsets.formUnion(start..<min(end, start + 40))
            offsets.formUnion(max(start, end - 40)..<end)
            offsets.formUnion(stride(from: start, to: end, by: 997))
        }
        for offset in offsets.sorted() {
            var damaged = object
            damaged[offset] ^= 0x01
            let error = #expect(throws: CryptoError.self, "offset \(offset)") { try decrypt(damaged, keyring: keyring, identity: identity) }
            if let error { expectRejection(error, flippingOffset: offset, in: damaged, chunkStarts: chunkStarts) }
        }
    }

    /// What a flip at `offset` must be reported as, by the region FORMAT.md puts there.
    private func expectRejection(
        _ error: CryptoError, flippingOffset offset: Int, in damaged: [UInt8], chunkStarts: [Int]
    ) {
        // A length field made larger can run past the end of the object: that reads as truncated.
        if chunkStarts.contains(where: { ($0..<$0 + 4).contains(offset) }) {
            #expect([.tampered, .truncated].contains(error), "offset \(offset): \(String(describing: error))")
            return
        }
        switch offset {
        case 0..<8: #expect(error == .notAnEncryptedObject, "offset \(offset)")
        case 8: #expect(error == .unsupportedVersion(damaged[8]), "offset \(offset)")
        case 9..<17:
            guard case .unknownKeyID(let id) = error else { Issue.record("offset \(offset): \(String(describing: error))"); return }
            #expect(id.bytes == Array(damaged[9..<17]), "offset \(offset)")
        default: #expect(error == .tampered, "offset \(offset)")
        }
    }

    @Test func cutAtEveryChunkBoundaryAndInsideChunksIsTruncated() throws {
        let plaintext = randomBytes(2 * chunk + 100, seed: 6)
        let object = try encryptInPieces(plaintext, pieceSizes: [chunk])
        let boundaries = [header, header + chunk + chunkOverhead, header + 2 * (chunk + chunkOverhead)]
        var cuts = Set(0..<header + 8)  // inside the header and the first length field
        for boundary in boundaries {
            cuts.formUnion([boundary - 1, boundary, boundary + 1, boundary + 3, boundary + 4, boundary + 5, boundary + 1000])
        }
        cuts.formUnion([object.count - 17, object.count - 1])
        for cut in cuts.sorted() where cut < object.count {
            #expect(throws: CryptoError.truncated, "cut at \(cut)") { try decrypt(Array(object[..<cut]), keyring: Keyring(primary: TestKeys.sequential), identity: identity) }
        }
    }

    @Test func objectEndingInAFullMessageChunkIsTruncated() throws {
        // Exactly two full chunks: dropping the FINAL one leaves a well-formed-looking prefix.
        let object = try encryptInPieces(randomBytes(2 * chunk, seed: 7), pieceSizes: [chunk])
        let firstChunkEnd = header + chunk + chunkOverhead
        #expect(throws: CryptoError.truncated) { try decryptReading(Array(object[..<firstChunkEnd]), bufferSize: 100) }
    }

    @Test func bytesAfterTheFinalChunkAreRejected() throws {
        let object = try encryptInPieces(randomBytes(chunk + 10, seed: 8), pieceSizes: [chunk])
        for trailing in [[0], [0xff], Array(object[header...])] {
            #expect(throws: CryptoError.tampered, "\(trailing.count) trailing bytes") {
                try decrypt(object + trailing, keyring: Keyring(primary: TestKeys.sequential), identity: identity)
            }
        }
    }

    @Test func reorderedDroppedOrDuplicatedChunksAreRejected() throws {
        let object = try encryptInPieces(randomBytes(3 * chunk + 10, seed: 9), pieceSizes: [chunk])
        let size = chunk + chunkOverhead
        let head = Array(object[..<header])
        let chunks = (0..<4).map { index in
            Array(object[(header + index * size)..<min(object.count, header + (index + 1) * size)])
        }
        let keyring = Keyring(primary: TestKeys.sequential)
        for order in [[1, 0, 2, 3], [0, 2, 3], [0, 0, 1, 2, 3], [0, 1, 3, 2]] {
            let shuffled = head + order.flatMap { chunks[$0] }
            #expect(throws: CryptoError.tampered, "order \(order)") { try decrypt(shuffled, keyring: keyring, identity: identity) }
        }
    }

    // MARK: - Identity, keys, version, magic

    @Test func anotherSessionOrObjectNameCannotDecrypt() throws {
        let object = encrypt(Array("creds".utf8), key: TestKeys.sequential, identity: identity)
        let keyring = Keyring(primary: TestKeys.sequential)
        for other in [
            ObjectIdentity(sessionID: "4915112345679", objectName: identity.objectName),
            ObjectIdentity(sessionID: identity.sessionID, objectName: "snap/000124.base"),
            ObjectIdentity(sessionID: identity.sessionID, objectName: "snap/000123.delta"),
            // Same concatenation, different split: the length prefixes tell them apart.
            ObjectIdentity(sessionID: identity.sessionID + "s", objectName: "nap/000123.base"),
        ] {
            #expect(throws: CryptoError.tampered, "\(other)") { try decrypt(object, keyring: keyring, identity: other) }
        }
        #expect(CryptoError.tampered.description.contains("belongs to another session/snapshot"))
    }

    @Test func unknownKeyIDNamesTheKeyThatIsNeeded() throws {
        let object = encrypt(Array("x".utf8), key: TestKeys.sequential, identity: identity)
        #expect(throws: CryptoError.unknownKeyID(TestKeys.sequential.id)) {
            try decrypt(object, keyring: Keyring(primary: TestKeys.other, additional: [TestKeys.third]), identity: identity)
        }
        #expect(CryptoError.unknownKeyID(TestKeys.sequential.id).description.contains("\(TestKeys.sequential.id)"))
    }

    @Test func rotationReadsOldObjectsAndWritesWithTheNewPrimary() throws {
        let old = TestKeys.sequential, new = TestKeys.other
        let writtenBefore = encrypt(Array("before".utf8), key: Keyring(primary: old).primary, identity: identity)
        let rotated = Keyring(primary: new, additional: [old])
        #expect(try decrypt(writtenBefore, keyring: rotated, identity: identity) == Array("before".utf8))
        let writtenAfter = encrypt(Array("after".utf8), key: rotated.primary, identity: identity)
        #expect(try decrypt(writtenAfter, keyring: rotated, identity: identity) == Array("after".utf8))
        #expect(throws: CryptoError.unknownKeyID(new.id)) { try decrypt(writtenAfter, keyring: Keyring(primary: old), identity: identity) }
    }

    @Test func unsupportedVersionAndBadMagic() throws {
        var object = encrypt(Array("x".utf8), key: TestKeys.sequential, identity: identity)
        let keyring = Keyring(primary: TestKeys.sequential)
        object[8] = 2
        #expect(throws: CryptoError.unsupportedVersion(2)) { try decrypt(object, keyring: keyring, identity: identity) }
        // A future version may have a shorter header: the version is judged before the length.
        #expect(throws: CryptoError.unsupportedVersion(2)) { try decrypt(Array(object[..<12]), keyring: keyring, identity: identity) }

        let zstdFrame: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd] + Array(repeating: 0, count: 60)
        for notOurs in [zstdFrame, Array("SYNCAENX".utf8), Array("{}".utf8)] {
            #expect(throws: CryptoError.notAnEncryptedObject) { try decrypt(notOurs, keyring: keyring, identity: identity) }
        }
        #expect(throws: CryptoError.truncated) { try decrypt([], keyring: keyring, identity: identity) }
    }

    @Test(arguments: [
        (CryptoError.truncated, "cut short"), (.tampered, "another copy"), (.unsupportedVersion(9), "upgrade"),
        (.notAnEncryptedObject, "magic"), (.noKeyConfigured, "SESSION_ENCRYPTION_KEY"),
        (.insecureKeyFile(path: "/k", mode: 0o644), "(mode 0644); run: chmod 600 /k"),
    ])
    func errorMessagesSayWhatToDo(error: CryptoError, expected: String) {
        #expect(error.description.contains(expected), "\(error.description)")
    }
}
