import Foundation
import S3Client
import SystemSupport
import TestSupport
import Testing

/// Whole-object downloads come down in parallel ranged parts written at their offsets: the
/// file must still be the object, byte for byte, whatever its size against the part size.
@Suite("S3 client parted downloads")
struct S3ClientPartedDownloadTests {
    /// Small parts (downloads have no minimum part size) so that a few hundred kilobytes make
    /// more parts than are in flight at once. Multipart-uploaded objects come down in parts in
    /// the conformance and AWS CLI interop tests.
    private func client(_ server: TestS3Server) async throws -> S3Client {
        try await server.freshBucket { configuration in
            configuration.multipart.partSize = 64 << 10
            configuration.multipart.concurrency = 3
        }
    }

    /// Single-part objects keep their MD5 check however many parts they come down in.
    @Test(.needsTestServers, arguments: TestS3Server.all)
    func objectsOfEverySizeAgainstThePartSizeComeBackIdentical(server: TestS3Server) async throws {
        let client = try await client(server)
        let directory = try TemporaryDirectory()
        let sizes = ["empty": 0, "tiny": 1000, "one-part": 64 << 10, "two-parts": 128 << 10, "ragged": (5 << 16) + 7]
        for (name, size) in sizes {
            let bytes = patternBytes(size)
            let etag = try await client.putObject(key: name, bytes: bytes)
            // A longer file already there is replaced, not overwritten in place.
            try Data(patternBytes(size + 4096)).write(to: URL(fileURLWithPath: directory.file(name)))

            let info = try await client.downloadObject(key: name, toFileAt: directory.file(name))
            #expect(info.size == Int64(size), "\(name)")
            #expect(info.etag == etag, "\(name)")
            let back = try Data(contentsOf: URL(fileURLWithPath: directory.file(name)))
            #expect([UInt8](back) == bytes, "\(name) came back different")
        }
    }

    /// A server that ignores `Range` (200, no Content-Range) is asked once more for the rest,
    /// and the parts together are still checked against the single-part ETag.
    @Test func rangeIgnoringServerStillGivesTheObjectAndItsMD5Check() async throws {
        let body = "0123456789abcdefghijklmno"
        let directory = try TemporaryDirectory()

        let honest = try FaultyHTTPServer(response: response(status: "200 OK", body: body, etag: md5Hex(body)))
        let info = try await S3Client(configuration: configuration(port: honest.port))
            .downloadObject(key: "k", toFileAt: directory.file("honest"))
        #expect(info.size == 25)
        #expect(try String(contentsOfFile: directory.file("honest"), encoding: .utf8) == body)
        #expect(honest.connectionCount == 2)

        let lying = try FaultyHTTPServer(response: response(status: "200 OK", body: body, etag: md5Hex("something else")))
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: configuration(port: lying.port))
                .downloadObject(key: "k", toFileAt: directory.file("lying"))
        }
        guard case .integrity(let reason) = error else {
            Issue.record("expected an integrity error, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("does not match ETag"))
    }

    /// An object that fits in the first part is checked against its MD5 ETag from that answer.
    @Test func objectWithinTheFirstPartIsCheckedAgainstItsMD5() async throws {
        let body = "0123456789"
        let directory = try TemporaryDirectory()
        for (etag, matches) in [(md5Hex(body), true), (md5Hex("other"), false)] {
            let server = try FaultyHTTPServer(response: response(
                status: "206 Partial Content", body: body, etag: etag, extraHeaders: "Content-Range: bytes 0-9/10\r\n"))
            let client = S3Client(configuration: configuration(port: server.port))
            if matches {
                #expect(try await client.downloadObject(key: "k", toFileAt: directory.file("out")).size == 10)
                #expect(try String(contentsOfFile: directory.file("out"), encoding: .utf8) == body)
            } else {
                let error = await #expect(throws: S3ClientError.self) {
                    try await client.downloadObject(key: "k", toFileAt: directory.file("out"))
                }
                #expect(error?.description.contains("does not match ETag") == true)
            }
        }
    }

    /// An empty object has no first byte, so the bounded first GET gets 416 and the object is
    /// asked for whole: that answer stays bounded by `maxSize` too, whatever its length.
    @Test func wholeObjectAskedForAfterA416StaysBounded() async throws {
        let unsatisfiable = "HTTP/1.1 416 Requested Range Not Satisfiable\r\nContent-Length: 0\r\nContent-Range: bytes */0\r\n\r\n"
        let body = String(repeating: "x", count: 1000)
        let server = try FaultyHTTPServer(responses: [
            Array(unsatisfiable.utf8), Array(response(status: "200 OK", body: body, etag: md5Hex(body)).utf8),
        ])
        let directory = try TemporaryDirectory()
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: configuration(port: server.port))
                .downloadObject(key: "k", toFileAt: directory.file("out"), maxSize: 20)
        }
        guard case .tooLarge(let size, let maxSize) = error else {
            Issue.record("expected tooLarge, got \(String(describing: error))")
            return
        }
        #expect(size == 1000 && maxSize == 20)
        let written = try FileManager.default.attributesOfItem(atPath: directory.file("out"))[.size] as? Int
        #expect(written.map { $0 <= 21 } == true, "\(String(describing: written)) bytes written")
        #expect(server.connectionCount == 2)
    }

    /// Each part is written where it was asked for, so an answer for other bytes is refused.
    @Test func partAnsweredWithOtherBytesIsAnIntegrityError() async throws {
        let server = try FaultyHTTPServer(response: response(
            status: "206 Partial Content", body: "0123456789", etag: "0123456789abcdef0123456789abcdef-2",
            extraHeaders: "Content-Range: bytes 0-9/25\r\n"))
        let directory = try TemporaryDirectory()
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: configuration(port: server.port))
                .downloadObject(key: "k", toFileAt: directory.file("out"))
        }
        guard case .integrity(let reason) = error else {
            Issue.record("expected an integrity error, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("bytes 0-9/25"))
    }

    private func configuration(port: Int) -> S3Configuration {
        var configuration = S3Configuration(
            endpoint: .init(scheme: "http", host: "127.0.0.1", port: port), bucket: "bucket",
            credentials: AWSCredentials(accessKeyID: "a", secretAccessKey: "b"))
        configuration.multipart.partSize = 10
        configuration.retry.maxAttempts = 1
        return configuration
    }

    private func response(status: String, body: String, etag: String, extraHeaders: String = "") -> String {
        "HTTP/1.1 \(status)\r\nContent-Length: \(body.utf8.count)\r\nETag: \"\(etag)\"\r\n\(extraHeaders)\r\n\(body)"
    }

    /// Bytes that never repeat at any part-sized distance (a part written at the wrong offset
    /// shows), made without a system call per byte as `randomBytes` does: its megabytes take
    /// seconds.
    private func patternBytes(_ count: Int) -> [UInt8] {
        var state = UInt64.random(in: 1...UInt64.max)
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state >> 32)
        }
    }

    private func md5Hex(_ text: String) -> String { MD5.hash(Array(text.utf8)).lowercaseHex }
}
