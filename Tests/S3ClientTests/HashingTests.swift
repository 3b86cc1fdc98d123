import Foundation
import S3Client
import SystemSupport
import Testing

struct HashingTests {
    @Test func sha256KnownVectors() {
        #expect(SHA256.hash([UInt8]()).lowercaseHex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hash("abc".utf8).lowercaseHex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    /// The one-shot forms (a state digest's line hashes, a request's canonical request and body)
    /// are the same SHA-256 and MD5 as a streaming digest's, empty input and block edges included.
    @Test func oneShotDigestsAreTheStreamingOnes() {
        for length in [0, 1, 55, 56, 63, 64, 65, 200] {
            let message = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let sha256 = StreamingDigest(.sha256)
            sha256.update(message)
            let expected = sha256.finalize()
            var digest = [UInt8](repeating: 0, count: 32)
            message.withUnsafeBytes { message in digest.withUnsafeMutableBytes { SHA256.hash(message, into: $0) } }
            #expect(digest == expected, "\(length) bytes")
            #expect(SHA256.hash(message) == expected, "\(length) bytes")
            let md5 = StreamingDigest(.md5)
            md5.update(message)
            #expect(MD5.hash(message) == md5.finalize(), "\(length) bytes")
        }
    }

    @Test func md5KnownVectorsAndContentMD5Form() {
        #expect(MD5.hash([UInt8]()).lowercaseHex == "d41d8cd98f00b204e9800998ecf8427e")
        #expect(MD5.hash("abc".utf8).lowercaseHex == "900150983cd24fb0d6963f7d28e17f72")
        #expect(MD5.hash([UInt8]()).base64 == "1B2M2Y8AsgTpgAmY7PhCfg==")
    }

    @Test func hmacSHA256RFC4231() {
        // Test case 2: a key shorter than the block size.
        #expect(HMACSHA256.authenticationCode(key: "Jefe".utf8, message: "what do ya want for nothing?".utf8).lowercaseHex == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        // Test case 6: a key longer than the block size, hashed first.
        #expect(HMACSHA256.authenticationCode(
                key: [UInt8](repeating: 0xaa, count: 131),
                message: "Test Using Larger Than Block-Size Key - Hash Key First".utf8
            ).lowercaseHex == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    @Test func hmacSHA256WithEmptyKeyAndMessage() {
        #expect(HMACSHA256.authenticationCode(key: [UInt8](), message: [UInt8]()).lowercaseHex == "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad")
    }

    @Test func streamingDigestMatchesOneShotAcrossUnevenChunks() {
        let data = (0..<1_000_003).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        for algorithm in [DigestAlgorithm.sha256, .md5] {
            let digest = StreamingDigest(algorithm)
            var offset = 0
            var chunk = 1
            while offset < data.count {
                let end = min(data.count, offset + chunk)
                data[offset..<end].withUnsafeBytes { digest.update($0) }
                offset = end
                chunk = chunk * 3 + 1
            }
            let oneShot = algorithm == .sha256 ? SHA256.hash(data) : MD5.hash(data)
            #expect(digest.finalize() == oneShot, "\(algorithm)")
        }
    }

    @Test func finalizeStartsOverForTheNextBody() {
        let digest = StreamingDigest(.sha256)
        digest.update("first body".utf8)
        #expect(digest.finalize() == SHA256.hash("first body".utf8))
        digest.update("abc".utf8)
        #expect(digest.finalize().lowercaseHex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func nonContiguousCollectionsHashLikeArrays() {
        let bytes = "abc".utf8.lazy.map { $0 }
        #expect(SHA256.hash(bytes) == SHA256.hash(Array("abc".utf8)))
    }

    @Test func hexIsLowercaseTwoDigitsPerByte() {
        #expect([UInt8]([0x00, 0x0f, 0xa5, 0xff]).lowercaseHex == "000fa5ff")
        #expect([UInt8]().lowercaseHex == "")
    }
}
