import Foundation
import SystemSupport
import TestSupport
import Testing

@testable import S3Client

/// The MD5 of a parted download, hashed as its regions arrive in any order.
@Suite("In-order file digest")
struct InOrderFileDigestTests {
    private func makeFile(_ bytes: [UInt8], in directory: TemporaryDirectory) throws -> OpenFile {
        let path = directory.file("object")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return try OpenFile(path: path, flags: O_RDONLY)
    }

    @Test func regionsArrivingOutOfOrderGiveTheWholeFilesMD5() async throws {
        let directory = try TemporaryDirectory()
        let bytes = (0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }
        let digest = InOrderFileDigest(file: try makeFile(bytes, in: directory))
        async let md5 = digest.md5(size: 100_003)
        for region: Range<Int64> in [70_000..<100_003, 30_000..<50_000, 0..<10_000, 10_000..<30_000, 50_000..<70_000] {
            digest.arrived(region)
            try await Task.sleep(for: .milliseconds(5))
        }
        digest.finish()
        #expect(try await md5 == MD5.hash(bytes))
    }

    @Test func aRegionThatNeverArrivedIsAnError() async throws {
        let directory = try TemporaryDirectory()
        let digest = InOrderFileDigest(file: try makeFile([UInt8](repeating: 7, count: 300), in: directory))
        digest.arrived(0..<100)
        digest.arrived(200..<300)
        digest.finish()
        await #expect(throws: S3ClientError.self) { try await digest.md5(size: 300) }
    }

    @Test func anEmptyFileNeedsNoRegion() async throws {
        let directory = try TemporaryDirectory()
        let digest = InOrderFileDigest(file: try makeFile([], in: directory))
        digest.arrived(0..<0)
        digest.finish()
        #expect(try await digest.md5(size: 0) == MD5.hash([UInt8]()))
    }
}
