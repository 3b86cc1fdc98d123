import Foundation
import SystemSupport
import TestSupport
import Testing

@testable import S3Client

/// The MD5 of a parted download, hashed as its regions arrive in any order.
@Suite("In-order file digest")
struct InOrderFileDigestTests {
    private func makeFile(_ bytes: [UInt8]) throws -> (TemporaryDirectory, OpenFile) {
        let directory = try TemporaryDirectory()
        let path = directory.file("object")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return (directory, try OpenFile(path: path, flags: O_RDONLY))
    }

    @Test func regionsArrivingOutOfOrderGiveTheWholeFilesMD5() throws {
        let bytes = (0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }
        let (directory, file) = try makeFile(bytes)
        _ = directory
        let digest = InOrderFileDigest(file: file, arrived: 0..<10_000)
        for region: Range<Int64> in [70_000..<100_003, 30_000..<50_000, 10_000..<30_000, 50_000..<70_000] {
            try digest.arrived(region)
        }
        #expect(try digest.finalize(size: 100_003) == MD5.hash(bytes))
    }

    @Test func aRegionThatNeverArrivedIsAnError() throws {
        let (directory, file) = try makeFile([UInt8](repeating: 7, count: 300))
        _ = directory
        let digest = InOrderFileDigest(file: file, arrived: 0..<100)
        try digest.arrived(200..<300)
        #expect(throws: S3ClientError.self) { try digest.finalize(size: 300) }
    }

    @Test func anEmptyFirstRegionStartsFromNothing() throws {
        let (directory, file) = try makeFile([1, 2, 3])
        _ = directory
        let digest = InOrderFileDigest(file: file, arrived: 0..<0)
        try digest.arrived(0..<3)
        #expect(try digest.finalize(size: 3) == MD5.hash([1, 2, 3] as [UInt8]))
    }
}
