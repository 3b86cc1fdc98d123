import Foundation
import S3Client
import TestSupport
import Testing

/// The S3 client against every real server the suite starts: the same tests, unchanged,
/// on each (as litestream's RunWithReplicaClient runs every backend).
@Suite("S3 client against real servers")
struct S3ClientConformanceTests {
    @Test(.needsTestServers, arguments: TestS3Server.all)
    func bytesRoundTripThroughPutGetHeadDelete(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let bytes = randomBytes(100_000)
        let etag = try await client.putObject(key: "a/b c+d=e~f.bin", bytes: bytes)

        let object = try await client.getObject(key: "a/b c+d=e~f.bin")
        #expect(object.bytes == bytes)
        #expect(object.info.etag == etag)
        let head = try await client.headObject(key: "a/b c+d=e~f.bin")
        #expect(head.size == 100_000)
        #expect(head.etag == etag)

        try await client.deleteObject(key: "a/b c+d=e~f.bin")
        let error = await #expect(throws: S3ClientError.self) { try await client.headObject(key: "a/b c+d=e~f.bin") }
        #expect(error?.isNotFound == true)
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func emptyObjectRoundTrips(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        try await client.putObject(key: "empty", bytes: [])
        #expect(try await client.getObject(key: "empty").bytes == [])
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func missingKeyIsNotFound(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let error = await #expect(throws: S3ClientError.self) { try await client.getObject(key: "nothing-here") }
        #expect(error?.isNotFound == true)
        #expect(error?.description.contains("nothing-here") == true)
    }

    /// rclone answers a range with 200 and the whole object; the client must cut the range
    /// out itself rather than trust the status.
    @Test(.needsTestServers, arguments: TestS3Server.all)
    func rangeReadsReturnExactlyTheRange(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let bytes = randomBytes(70_000)
        try await client.putObject(key: "ranged", bytes: bytes)

        #expect(try await client.getObject(key: "ranged", range: 10...19).bytes == Array(bytes[10...19]))
        #expect(try await client.getObject(key: "ranged", range: 65_000...69_999).bytes == Array(bytes[65_000...]))
        // A range running past the end is cut at the end, as HTTP says.
        #expect(try await client.getObject(key: "ranged", range: 69_990...80_000).bytes == Array(bytes[69_990...]))

        let directory = try TemporaryDirectory()
        try await client.downloadObject(key: "ranged", toFileAt: directory.file("part"), range: 1000...1999)
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: directory.file("part")))) == Array(bytes[1000...1999]))
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func filesStreamUpAndDownIncludingMultipart(server: TestS3Server) async throws {
        let client = try await server.freshBucket { configuration in
            configuration.multipart.threshold = 6 << 20
            configuration.multipart.partSize = 5 << 20
        }
        let directory = try TemporaryDirectory()
        for (name, size) in [("small", 300_000), ("multipart", (12 << 20) + 123)] {
            let bytes = randomBytes(size)
            try Data(bytes).write(to: URL(fileURLWithPath: directory.file(name)))
            try await client.putObject(key: name, fileAt: directory.file(name))
            let info = try await client.downloadObject(key: name, toFileAt: directory.file("\(name).back"))
            #expect(info.size == Int64(size))
            let back = try Data(contentsOf: URL(fileURLWithPath: directory.file("\(name).back")))
            #expect([UInt8](back) == bytes, "\(name) came back different")
        }
        let permissions = try FileManager.default.attributesOfItem(atPath: directory.file("small.back"))[.posixPermissions]
        #expect(permissions as? Int == 0o600)
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func listingFollowsEveryPageWithPrefixAndDelimiter(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let keys = ["s1/a", "s1/b", "s1/c/d", "s1/c/e", "s2/a"]
        for key in keys { try await client.putObject(key: key, bytes: Array(key.utf8)) }

        let firstPage = try await client.listObjectsPage(prefix: "s1/", maxKeys: 2)
        #expect(firstPage.objects.count == 2)
        #expect(firstPage.nextContinuationToken != nil)

        let all = try await client.listObjects(prefix: "s1/")
        #expect(all.objects.map(\.key).sorted() == ["s1/a", "s1/b", "s1/c/d", "s1/c/e"])
        #expect(all.objects.first { $0.key == "s1/a" }?.size == 4)

        let paged = try await pagedListing(client, prefix: "", maxKeys: 2)
        #expect(paged.sorted() == keys)

        let grouped = try await client.listObjects(prefix: "s1/", delimiter: "/")
        #expect(grouped.objects.map(\.key).sorted() == ["s1/a", "s1/b"])
        #expect(grouped.commonPrefixes == ["s1/c/"])
    }

    private func pagedListing(_ client: S3Client, prefix: String, maxKeys: Int) async throws -> [String] {
        var keys: [String] = []
        var token: String?
        repeat {
            let page = try await client.listObjectsPage(prefix: prefix, continuationToken: token, maxKeys: maxKeys)
            #expect(page.objects.count <= maxKeys)
            keys += page.objects.map(\.key)
            token = page.nextContinuationToken
        } while token != nil
        return keys
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func batchDeleteRemovesEveryKey(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let keys = (0..<25).map { "batch/\($0)" }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for key in keys { group.addTask { try await client.putObject(key: key, bytes: [1, 2, 3]) } }
            try await group.waitForAll()
        }
        let failures = try await client.deleteObjects(keys: keys + ["batch/never-existed"])
        #expect(failures.isEmpty)
        #expect(try await client.listObjects(prefix: "batch/").objects.isEmpty)
    }

    /// Servers that ignore conditional writes are detected, not assumed.
    @Test(.needsTestServers, arguments: TestS3Server.all)
    func conditionalWritesAreHonouredOrDetectedAsIgnored(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let honoured = try await client.probeConditionalWrites(key: "probe")
        #expect(honoured == server.honorsConditionalWrites)
        guard honoured else { return }

        let etag = try await client.putObject(key: "head", bytes: [1], condition: .ifAbsent)
        let again = await #expect(throws: S3ClientError.self) {
            try await client.putObject(key: "head", bytes: [2], condition: .ifAbsent)
        }
        #expect(again?.serviceKind == .preconditionFailed)
        let newer = try await client.putObject(key: "head", bytes: [3], condition: .ifMatch(etag: etag))
        let stale = await #expect(throws: S3ClientError.self) {
            try await client.putObject(key: "head", bytes: [4], condition: .ifMatch(etag: etag))
        }
        #expect(stale?.serviceKind == .preconditionFailed)
        #expect(try await client.getObject(key: "head").bytes == [3])
        #expect(try await client.headObject(key: "head").etag == newer)
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func conditionalReads(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let etag = try await client.putObject(key: "read", bytes: [9, 9])
        #expect(try await client.getObject(key: "read", condition: .ifMatch(etag: etag)).bytes == [9, 9])
        let unchanged = await #expect(throws: S3ClientError.self) {
            try await client.getObject(key: "read", condition: .ifNoneMatch(etag: etag))
        }
        #expect(unchanged?.serviceKind == .notModified)
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func presignedURLsWorkWithPlainCurl(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let directory = try TemporaryDirectory()
        try Data("presigned body".utf8).write(to: URL(fileURLWithPath: directory.file("up")))

        let putURL = client.presignedURL(.put, key: "shared/file", expiresIn: .seconds(300))
        try await runProgram("/usr/bin/curl", ["-sSf", "-X", "PUT", "--upload-file", directory.file("up"), putURL])
        let getURL = client.presignedURL(.get, key: "shared/file", expiresIn: .seconds(300))
        #expect(try await runProgram("/usr/bin/curl", ["-sSf", getURL]) == "presigned body")
        #expect(!getURL.contains(try server.secretKey))
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func manyConcurrentRequestsShareTheClient(server: TestS3Server) async throws {
        let client = try await server.freshBucket()
        let objects = (0..<64).map { ("many/\($0)", randomBytes(Int.random(in: 0...20_000))) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (key, bytes) in objects { group.addTask { try await client.putObject(key: key, bytes: bytes) } }
            try await group.waitForAll()
        }
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for (key, bytes) in objects { group.addTask { try await client.getObject(key: key).bytes == bytes } }
            for try await same in group { #expect(same) }
        }
    }
}

/// What the AWS CLI writes our client reads, and the other way round: proof that our
/// signing, checksums and multipart agree with the reference implementation.
@Suite("S3 client interoperates with the AWS CLI")
struct AWSCLIInteropTests {
    @Test(.needsTestServers, arguments: TestS3Server.all)
    func objectsCrossBetweenOurClientAndTheAWSCLI(server: TestS3Server) async throws {
        let client = try await server.freshBucket { $0.multipart.threshold = 6 << 20; $0.multipart.partSize = 5 << 20 }
        let bucket = client.configuration.bucket
        let directory = try TemporaryDirectory()
        for (name, size) in [("single", 200_000), ("multi", (11 << 20) + 7)] {
            let bytes = randomBytes(size)
            let path = directory.file(name)
            try Data(bytes).write(to: URL(fileURLWithPath: path))

            try await client.putObject(key: "ours/\(name)", fileAt: path)
            try await server.aws(["s3api", "get-object", "--bucket", bucket, "--key", "ours/\(name)", directory.file("\(name).aws")])
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: directory.file("\(name).aws")))) == bytes)

            // `aws s3 cp` goes multipart above 8 MiB by default.
            try await server.aws(["s3", "cp", path, "s3://\(bucket)/theirs/\(name)"])
            try await client.downloadObject(key: "theirs/\(name)", toFileAt: directory.file("\(name).ours"))
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: directory.file("\(name).ours")))) == bytes)
        }
    }
}
