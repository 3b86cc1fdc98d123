import SessionCrypto
import XCTest

final class ContentIDTests: XCTestCase {
    func testSameKeyAndContentGiveTheSameID() {
        let content = pseudoRandomBytes(1000, seed: 1)
        let id = TestKeys.sequential.contentID(of: content)
        XCTAssertEqual(id, TestKeys.sequential.contentID(of: content))
        XCTAssertEqual(id, try EncryptionKey(parsing: TestKeys.sequentialHex).contentID(of: content))
        XCTAssertEqual(id.bytes.count, 32)
        XCTAssertEqual("\(id)".count, 64)
    }

    func testDifferentContentOrMasterKeyGiveDifferentIDs() {
        let content = Array("pre-key-1.json".utf8)
        let id = TestKeys.sequential.contentID(of: content)
        XCTAssertNotEqual(id, TestKeys.sequential.contentID(of: content + [0]))
        XCTAssertNotEqual(id, TestKeys.sequential.contentID(of: []))
        XCTAssertNotEqual(id, TestKeys.other.contentID(of: content))
    }

    func testStreamingInAnyPiecesEqualsOneShot() {
        let content = pseudoRandomBytes(3 * chunk + 17, seed: 2)
        let expected = TestKeys.sequential.contentID(of: content)
        for pieceSize in [1, 63, 4096, chunk + 1] where pieceSize > 1 || content.count < 100_000 {
            let hasher = ContentHasher(key: TestKeys.sequential)
            content.withUnsafeBytes { bytes in
                for start in stride(from: 0, to: bytes.count, by: pieceSize) {
                    hasher.write(UnsafeRawBufferPointer(rebasing: bytes[start..<min(bytes.count, start + pieceSize)]))
                }
            }
            XCTAssertEqual(hasher.finalize(), expected, "pieces of \(pieceSize)")
        }
        let singleBytes = ContentHasher(key: TestKeys.sequential)
        for byte in content.prefix(500) { [byte].withUnsafeBytes { singleBytes.write($0) } }
        XCTAssertEqual(singleBytes.finalize(), TestKeys.sequential.contentID(of: Array(content.prefix(500))))
    }

    func testHexFormParsesBack() {
        let id = TestKeys.sequential.contentID(of: [1, 2, 3])
        XCTAssertEqual(ContentID(hex: "\(id)"), id)
        XCTAssertEqual(ContentID(hex: "\(id)".uppercased()), id)
        XCTAssertNil(ContentID(hex: String("\(id)".dropLast())))
        XCTAssertNil(ContentID(hex: String("\(id)".dropLast()) + "g"))
        XCTAssertNil(ContentID(hex: ""))
    }
}
