import SessionCrypto
import SystemSupport
import XCTest

final class EncryptedObjectTests: XCTestCase {
    let header = 41
    let chunkOverhead = 4 + 17

    func testRoundTripsAtChunkEdgesWithAnyWriteAndReadSizes() throws {
        let sizes = [0, 1, 17, chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1, 3 * chunk - 1]
        for size in sizes {
            let plaintext = pseudoRandomBytes(size, seed: UInt64(size))
            for pieces in [[size + 1], [1], [chunk], [1000, 7, chunk + 3]] where size < 4096 || pieces != [1] {
                let object = try encryptInPieces(plaintext, pieceSizes: pieces)
                let chunks = max(1, (size + chunk - 1) / chunk)
                XCTAssertEqual(object.count, header + chunks * chunkOverhead + size, "size \(size)")
                for bufferSize in [1, 7, 4093, chunk + 5] where size < 4096 || bufferSize > 1 {
                    XCTAssertEqual(
                        try decryptReading(object, bufferSize: bufferSize), plaintext,
                        "size \(size), pieces \(pieces), buffer \(bufferSize)")
                }
            }
        }
    }

    func testRoundTripsSeveralMegabytesAndRandomSizes() throws {
        let large = pseudoRandomBytes(5 * 1024 * 1024 + 12345, seed: 1)
        let object = try encryptInPieces(large, pieceSizes: [10240])
        XCTAssertEqual(try decryptReading(object, bufferSize: 10240), large)

        var generator = SeededGenerator(state: 2)
        for round in 0..<20 {
            let size = Int.random(in: 0...(4 * chunk), using: &generator)
            let piece = Int.random(in: 1...(2 * chunk), using: &generator)
            let buffer = Int.random(in: 1...(2 * chunk), using: &generator)
            let plaintext = pseudoRandomBytes(size, seed: UInt64(100 + round))
            let object = try encryptInPieces(plaintext, pieceSizes: [piece])
            XCTAssertEqual(try decryptReading(object, bufferSize: buffer), plaintext, "round \(round)")
        }
    }

    func testInMemoryHelpersMatchTheStreams() throws {
        let keyring = Keyring(primary: TestKeys.sequential)
        let manifest = Array(#"{"files":["creds.json"]}"#.utf8)
        let object = encrypt(manifest, key: keyring.primary, identity: identity)
        XCTAssertEqual(try decrypt(object, keyring: keyring, identity: identity), manifest)
        XCTAssertEqual(try decryptReading(object, bufferSize: 3), manifest)
        XCTAssertEqual(try decrypt(try encryptInPieces(manifest, pieceSizes: [5]), keyring: keyring, identity: identity), manifest)
        XCTAssertEqual(try decrypt(encrypt([], key: keyring.primary, identity: identity), keyring: keyring, identity: identity), [])
    }

    func testEncryptingTwiceGivesDifferentObjects() {
        let plaintext = Array("same".utf8)
        XCTAssertNotEqual(
            encrypt(plaintext, key: TestKeys.sequential, identity: identity),
            encrypt(plaintext, key: TestKeys.sequential, identity: identity))
    }

    func testSinkStreamsChunksBeforeFinish() throws {
        let object = BufferSink()
        let sink = EncryptingSink(key: TestKeys.sequential, identity: identity, downstream: object)
        let plaintext = pseudoRandomBytes(3 * chunk, seed: 3)
        try plaintext.withUnsafeBytes { try sink.write($0) }
        // The third full chunk may still become FINAL, so only two have gone out.
        XCTAssertEqual(object.bytes.count, header + 2 * (chunk + chunkOverhead))
        try sink.finish()
        XCTAssertEqual(object.bytes.count, header + 3 * (chunk + chunkOverhead))
    }

    func testSourceNeverAsksUpstreamForMoreThanAChunk() throws {
        final class RecordingSource: ByteSource {
            let inner: BufferSource
            var largestRequest = 0
            init(_ bytes: [UInt8]) { inner = BufferSource(bytes) }
            func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
                largestRequest = max(largestRequest, buffer.count)
                return try inner.read(into: buffer)
            }
        }
        let plaintext = pseudoRandomBytes(10 * chunk, seed: 4)
        let upstream = RecordingSource(try encryptInPieces(plaintext, pieceSizes: [chunk]))
        let source = try DecryptingSource(keyring: Keyring(primary: TestKeys.sequential), identity: identity, upstream: upstream)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var total = 0
        while case let count = try buffer.withUnsafeMutableBytes({ try source.read(into: $0) }), count > 0 {
            total += count
        }
        XCTAssertEqual(total, plaintext.count)
        XCTAssertLessThanOrEqual(upstream.largestRequest, chunk + 17)
    }

    // MARK: - Damage

    func testEveryByteFlippedInASmallObjectIsRejected() throws {
        let object = encrypt(Array("{\"me\":{\"id\":\"4915112345678@s.whatsapp.net\"}}".utf8), key: TestKeys.sequential, identity: identity)
        let keyring = Keyring(primary: TestKeys.sequential)
        for offset in object.indices {
            var damaged = object
            damaged[offset] ^= 0xff
            XCTAssertThrowsError(try decrypt(damaged, keyring: keyring, identity: identity), "offset \(offset)") { error in
                assertRejection(error, flippingOffset: offset, in: damaged, chunkStarts: [header])
            }
        }
    }

    func testFlippedBytesAcrossEveryChunkOfALargerObjectAreRejected() throws {
        let plaintext = pseudoRandomBytes(2 * chunk + 100, seed: 5)
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
            XCTAssertThrowsError(try decrypt(damaged, keyring: keyring, identity: identity), "offset \(offset)") { error in
                assertRejection(error, flippingOffset: offset, in: damaged, chunkStarts: chunkStarts)
            }
        }
    }

    /// What a flip at `offset` must be reported as, by the region FORMAT.md puts there.
    private func assertRejection(
        _ error: Error, flippingOffset offset: Int, in damaged: [UInt8], chunkStarts: [Int]
    ) {
        let error = error as? CryptoError
        // A length field made larger can run past the end of the object: that reads as truncated.
        if chunkStarts.contains(where: { ($0..<$0 + 4).contains(offset) }) {
            XCTAssertTrue([.tampered, .truncated].contains(error), "offset \(offset): \(String(describing: error))")
            return
        }
        switch offset {
        case 0..<8: XCTAssertEqual(error, .notAnEncryptedObject, "offset \(offset)")
        case 8: XCTAssertEqual(error, .unsupportedVersion(damaged[8]), "offset \(offset)")
        case 9..<17:
            guard case .unknownKeyID(let id) = error else { return XCTFail("offset \(offset): \(String(describing: error))") }
            XCTAssertEqual(id.bytes, Array(damaged[9..<17]), "offset \(offset)")
        default: XCTAssertEqual(error, .tampered, "offset \(offset)")
        }
    }

    func testCutAtEveryChunkBoundaryAndInsideChunksIsTruncated() throws {
        let plaintext = pseudoRandomBytes(2 * chunk + 100, seed: 6)
        let object = try encryptInPieces(plaintext, pieceSizes: [chunk])
        let boundaries = [header, header + chunk + chunkOverhead, header + 2 * (chunk + chunkOverhead)]
        var cuts = Set(0..<header + 8)  // inside the header and the first length field
        for boundary in boundaries {
            cuts.formUnion([boundary - 1, boundary, boundary + 1, boundary + 3, boundary + 4, boundary + 5, boundary + 1000])
        }
        cuts.formUnion([object.count - 17, object.count - 1])
        for cut in cuts.sorted() where cut < object.count {
            assertThrows(.truncated, "cut at \(cut)") { try decrypt(Array(object[..<cut]), keyring: Keyring(primary: TestKeys.sequential), identity: identity) }
        }
    }

    func testObjectEndingInAFullMessageChunkIsTruncated() throws {
        // Exactly two full chunks: dropping the FINAL one leaves a well-formed-looking prefix.
        let object = try encryptInPieces(pseudoRandomBytes(2 * chunk, seed: 7), pieceSizes: [chunk])
        let firstChunkEnd = header + chunk + chunkOverhead
        assertThrows(.truncated) { try decryptReading(Array(object[..<firstChunkEnd]), bufferSize: 100) }
    }

    func testBytesAfterTheFinalChunkAreRejected() throws {
        let object = try encryptInPieces(pseudoRandomBytes(chunk + 10, seed: 8), pieceSizes: [chunk])
        for trailing in [[0], [0xff], Array(object[header...])] {
            assertThrows(.tampered, "\(trailing.count) trailing bytes") {
                try decrypt(object + trailing, keyring: Keyring(primary: TestKeys.sequential), identity: identity)
            }
        }
    }

    func testReorderedDroppedOrDuplicatedChunksAreRejected() throws {
        let object = try encryptInPieces(pseudoRandomBytes(3 * chunk + 10, seed: 9), pieceSizes: [chunk])
        let size = chunk + chunkOverhead
        let head = Array(object[..<header])
        let chunks = (0..<4).map { index in
            Array(object[(header + index * size)..<min(object.count, header + (index + 1) * size)])
        }
        let keyring = Keyring(primary: TestKeys.sequential)
        for order in [[1, 0, 2, 3], [0, 2, 3], [0, 0, 1, 2, 3], [0, 1, 3, 2]] {
            let shuffled = head + order.flatMap { chunks[$0] }
            assertThrows(.tampered, "order \(order)") { try decrypt(shuffled, keyring: keyring, identity: identity) }
        }
    }

    // MARK: - Identity, keys, version, magic

    func testAnotherSessionOrObjectNameCannotDecrypt() throws {
        let object = encrypt(Array("creds".utf8), key: TestKeys.sequential, identity: identity)
        let keyring = Keyring(primary: TestKeys.sequential)
        for other in [
            ObjectIdentity(sessionID: "4915112345679", objectName: identity.objectName),
            ObjectIdentity(sessionID: identity.sessionID, objectName: "snap/000124.base"),
            ObjectIdentity(sessionID: identity.sessionID, objectName: "snap/000123.delta"),
            // Same concatenation, different split: the length prefixes tell them apart.
            ObjectIdentity(sessionID: identity.sessionID + "s", objectName: "nap/000123.base"),
        ] {
            assertThrows(.tampered, "\(other)") { try decrypt(object, keyring: keyring, identity: other) }
        }
        XCTAssertTrue(CryptoError.tampered.description.contains("belongs to another session/snapshot"))
    }

    func testUnknownKeyIDNamesTheKeyThatIsNeeded() throws {
        let object = encrypt(Array("x".utf8), key: TestKeys.sequential, identity: identity)
        assertThrows(.unknownKeyID(TestKeys.sequential.id)) {
            try decrypt(object, keyring: Keyring(primary: TestKeys.other, additional: [TestKeys.third]), identity: identity)
        }
        XCTAssertTrue(CryptoError.unknownKeyID(TestKeys.sequential.id).description.contains("\(TestKeys.sequential.id)"))
    }

    func testRotationReadsOldObjectsAndWritesWithTheNewPrimary() throws {
        let old = TestKeys.sequential, new = TestKeys.other
        let writtenBefore = encrypt(Array("before".utf8), key: Keyring(primary: old).primary, identity: identity)
        let rotated = Keyring(primary: new, additional: [old])
        XCTAssertEqual(try decrypt(writtenBefore, keyring: rotated, identity: identity), Array("before".utf8))
        let writtenAfter = encrypt(Array("after".utf8), key: rotated.primary, identity: identity)
        XCTAssertEqual(try decrypt(writtenAfter, keyring: rotated, identity: identity), Array("after".utf8))
        assertThrows(.unknownKeyID(new.id)) { try decrypt(writtenAfter, keyring: Keyring(primary: old), identity: identity) }
    }

    func testUnsupportedVersionAndBadMagic() throws {
        var object = encrypt(Array("x".utf8), key: TestKeys.sequential, identity: identity)
        let keyring = Keyring(primary: TestKeys.sequential)
        object[8] = 2
        assertThrows(.unsupportedVersion(2)) { try decrypt(object, keyring: keyring, identity: identity) }
        // A future version may have a shorter header: the version is judged before the length.
        assertThrows(.unsupportedVersion(2)) { try decrypt(Array(object[..<12]), keyring: keyring, identity: identity) }

        let zstdFrame: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd] + Array(repeating: 0, count: 60)
        for notOurs in [zstdFrame, Array("SYNCAENX".utf8), Array("{}".utf8)] {
            assertThrows(.notAnEncryptedObject) { try decrypt(notOurs, keyring: keyring, identity: identity) }
        }
        assertThrows(.truncated) { try decrypt([], keyring: keyring, identity: identity) }
    }

    func testErrorMessagesSayWhatToDo() {
        let messages: [(CryptoError, String)] = [
            (.truncated, "cut short"), (.tampered, "another copy"), (.unsupportedVersion(9), "upgrade"),
            (.notAnEncryptedObject, "magic"), (.noKeyConfigured, "SESSION_ENCRYPTION_KEY"),
            (.insecureKeyFile(path: "/k", mode: 0o644), "(mode 0644); run: chmod 600 /k"),
        ]
        for (error, expected) in messages {
            XCTAssertTrue(error.description.contains(expected), error.description)
        }
    }
}
