import Foundation
import SessionCrypto
import TestSupport
import Testing

struct ContentIDTests {
    @Test func sameKeyAndContentGiveTheSameID() throws {
        let content = randomBytes(1000, seed: 1)
        let id = TestKeys.sequential.contentID(of: content)
        #expect(id == TestKeys.sequential.contentID(of: content))
        #expect(try id == EncryptionKey(parsing: TestKeys.sequentialHex).contentID(of: content))
        #expect(id.bytes.count == 32)
        #expect("\(id)".count == 64)
    }

    @Test func differentContentOrMasterKeyGiveDifferentIDs() {
        let content = Array("pre-key-1.json".utf8)
        let id = TestKeys.sequential.contentID(of: content)
        #expect(id != TestKeys.sequential.contentID(of: content + [0]))
        #expect(id != TestKeys.sequential.contentID(of: []))
        #expect(id != TestKeys.other.contentID(of: content))
    }

    @Test func streamingInAnyPiecesEqualsOneShot() {
        let content = randomBytes(3 * chunk + 17, seed: 2)
        let expected = TestKeys.sequential.contentID(of: content)
        for pieceSize in [1, 63, 4096, chunk + 1] where pieceSize > 1 || content.count < 100_000 {
            let hasher = ContentHasher(key: TestKeys.sequential)
            content.withUnsafeBytes { bytes in
                for start in stride(from: 0, to: bytes.count, by: pieceSize) {
                    hasher.write(UnsafeRawBufferPointer(rebasing: bytes[start..<min(bytes.count, start + pieceSize)]))
                }
            }
            #expect(hasher.finalize() == expected, "pieces of \(pieceSize)")
        }
        let singleBytes = ContentHasher(key: TestKeys.sequential)
        for byte in content.prefix(500) { [byte].withUnsafeBytes { singleBytes.write($0) } }
        #expect(singleBytes.finalize() == TestKeys.sequential.contentID(of: Array(content.prefix(500))))
    }

    @Test func hexFormParsesBack() {
        let id = TestKeys.sequential.contentID(of: [1, 2, 3])
        #expect(ContentID(hex: "\(id)") == id)
        #expect(ContentID(hex: "\(id)".uppercased()) == id)
        #expect(ContentID(hex: String("\(id)".dropLast())) == nil)
        #expect(ContentID(hex: String("\(id)".dropLast()) + "g") == nil)
        #expect(ContentID(hex: "") == nil)
    }
}
