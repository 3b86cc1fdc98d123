import Foundation
import S3Client
import TestSupport
import Testing

/// Bad input gets a clear, typed error: wrong credentials, missing bucket, unreachable or
/// misbehaving endpoints, TLS that does not verify.
@Suite("S3 client errors")
struct S3ClientErrorTests {
    @Test(.needsTestServers, arguments: TestS3Server.all)
    func wrongSecretIsACredentialsError(server: TestS3Server) async throws {
        let good = try await server.freshBucket()
        var configuration = good.configuration
        configuration.credentials = AWSCredentials(accessKeyID: try server.accessKey, secretAccessKey: "not-the-secret")
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: configuration).putObject(key: "k", bytes: [1])
        }
        #expect(error?.serviceKind == .invalidCredentials || error?.serviceKind == .accessDenied)
        #expect(error?.description.contains("403") == true)
        #expect(error?.description.contains("not-the-secret") == false)
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func unknownAccessKeyIsACredentialsError(server: TestS3Server) async throws {
        let good = try await server.freshBucket()
        var configuration = good.configuration
        configuration.credentials = AWSCredentials(accessKeyID: "AKUNKNOWN", secretAccessKey: try server.secretKey)
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: configuration).getObject(key: "k")
        }
        #expect(error?.serviceKind == .invalidCredentials || error?.serviceKind == .accessDenied)
    }

    @Test(.needsTestServers, arguments: TestS3Server.all)
    func missingBucketSaysSo(server: TestS3Server) async throws {
        let client = S3Client(configuration: try server.configuration(bucket: "missing-" + randomHex(6)))
        let head = await #expect(throws: S3ClientError.self) { try await client.headBucket() }
        // HEAD answers carry no error document, so only the status tells.
        #expect(head?.isNotFound == true || head?.serviceKind == .noSuchBucket)
        let get = await #expect(throws: S3ClientError.self) { try await client.getObject(key: "k") }
        #expect(get?.serviceKind == .noSuchBucket)
        #expect(get?.description.contains("NoSuchBucket") == true)
        #expect(get?.description.contains("create the bucket first") == true)
    }

    /// A client for a server of the test's own on 127.0.0.1, retrying `attempts` times quickly.
    private func loopbackConfiguration(port: Int, scheme: String = "http", attempts: Int = 1) -> S3Configuration {
        var configuration = S3Configuration(
            endpoint: .init(scheme: scheme, host: "127.0.0.1", port: port), bucket: "bucket",
            credentials: AWSCredentials(accessKeyID: "a", secretAccessKey: "b"))
        configuration.retry.maxAttempts = attempts
        configuration.retry.baseDelay = .milliseconds(1)
        return configuration
    }

    /// The curl error code a failed GET ended with.
    private func transportErrorCode(_ configuration: S3Configuration) async -> Int32? {
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: configuration).getObject(key: "k")
        }
        guard case .transport(let transport) = error else {
            Issue.record("expected a transport error, got \(String(describing: error))")
            return nil
        }
        return transport.code
    }

    @Test func unreachableEndpointIsATransportErrorAfterBoundedRetries() async throws {
        #expect(await transportErrorCode(loopbackConfiguration(port: try freePort(), attempts: 3)) == 7)  // CURLE_COULDNT_CONNECT
    }

    /// A header value with CR or LF (an ETag from a server or a caller) would end its header and
    /// start one nobody meant; curl would cut it at NUL. Refused before it is signed: nothing is sent.
    @Test(arguments: ["abc\r\nX-Amz-Injected: 1", "abc\ndef", "abc\rdef", "abc\u{0}def"])
    func aHeaderValueThatWouldSplitTheRequestIsRefusedUnsent(_ etag: String) async throws {
        let server = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"x\"\r\n\r\n")
        let client = S3Client(configuration: loopbackConfiguration(port: server.port))
        let put = await #expect(throws: S3ClientError.self) {
            try await client.putObject(key: "k", bytes: [1], condition: .ifMatch(etag: etag))
        }
        let get = await #expect(throws: S3ClientError.self) {
            try await client.getObject(key: "k", condition: .ifNoneMatch(etag: etag))
        }
        for error in [put, get] {
            guard case .invalidRequest(let reason) = error else {
                Issue.record("expected an invalid request, got \(String(describing: error))")
                continue
            }
            #expect(reason.contains("If-") && !reason.contains("abc"), "\(reason)")
        }
        #expect(server.connectionCount == 0)
    }

    /// A fake server (fault injection only): it promises a body and closes half way.
    @Test func serverClosingMidBodyIsRetriedThenReported() async throws {
        let server = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"x\"\r\n\r\n0123456789")
        #expect(await transportErrorCode(loopbackConfiguration(port: server.port, attempts: 2)) == 18)  // CURLE_PARTIAL_FILE
        #expect(server.connectionCount == 2)
    }

    /// A fake server that closes inside the response headers, after a Content-Length: libcurl
    /// calls that a complete answer, which lost its ETag.
    @Test func serverClosingInsideTheHeadersIsRetriedThenReported() async throws {
        let server = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"d41d8cd9")
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: loopbackConfiguration(port: server.port, attempts: 2)).getObject(key: "k")
        }
        guard case .transport(let transport) = error else {
            Issue.record("expected a transport error, got \(String(describing: error))")
            return
        }
        #expect(transport.code == 56)  // CURLE_RECV_ERROR
        #expect(server.connectionCount == 2)
    }

    /// A fake server answering 200 with a body that is not XML where XML is due.
    @Test func malformedXMLIsAnInvalidResponse() async throws {
        let body = "<ListBucketResult><Contents><Key>unterminated"
        let server = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: loopbackConfiguration(port: server.port)).listObjects()
        }
        guard case .invalidResponse(let reason) = error else {
            Issue.record("expected an invalid response, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("malformed XML"))
    }

    // MARK: - What fuzz/FuzzS3XML found (scripts/fuzz)

    /// The inputs on which FoundationXML, our earlier parser, crashed, in fixtures/fuzz/regressions:
    /// an element name that is not UTF-8 (`<\xff>r>`), a processing instruction without data
    /// (`<?l?>`), and one that an entity declared in a DTD expands to. Any server could send them.
    static let crashingXML: [String] = {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("fixtures/fuzz/regressions").path
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("s3-xml-") }.sorted().map { "\(directory)/\($0)" }
    }()

    /// Parameterized over an empty list, the tests below would pass without running.
    @Test func theCrashingInputsAreFound() {
        #expect(!Self.crashingXML.isEmpty, "no fixtures/fuzz/regressions/s3-xml-* found")
    }

    @Test(arguments: crashingXML)
    func xmlThatCrashedTheParserIsAnInvalidResponse(_ path: String) throws {
        let body = Array(try #require(FileManager.default.contents(atPath: path)))
        let error = #expect(throws: S3ClientError.self) { try XMLElement.parse(body) }
        guard case .invalidResponse = error else {
            Issue.record("expected an invalid response, got \(String(describing: error))")
            return
        }
    }

    /// The same bytes as an error document: the status still says what happened.
    @Test(arguments: crashingXML)
    func anErrorDocumentThatCrashedTheParserStillGivesTheStatus(_ path: String) async throws {
        let body = Array(try #require(FileManager.default.contents(atPath: path)))
        let server = try FaultyHTTPServer(
            response: Array("HTTP/1.1 500 Internal Server Error\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
        let error = await #expect(throws: S3ClientError.self) {
            try await S3Client(configuration: loopbackConfiguration(port: server.port)).getObject(key: "k")
        }
        #expect(error?.serviceKind == .serverError)
    }

    @Test func certificateThatDoesNotVerifyIsATLSErrorUnlessItsCAIsGiven() async throws {
        let directory = try TemporaryDirectory()
        try await runProgram("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", directory.file("key.pem"), "-out", directory.file("cert.pem"),
        ])
        let port = try freePort()
        var configuration = loopbackConfiguration(port: port, scheme: "https")
        configuration.timeouts.idle = .seconds(5)
        let untrusting = configuration
        configuration.tls.caBundlePath = directory.file("cert.pem")
        let trusting = configuration

        try await withProgram("/usr/bin/openssl", [
            "s_server", "-quiet", "-www", "-accept", "127.0.0.1:\(port)",
            "-cert", directory.file("cert.pem"), "-key", directory.file("key.pem"),
        ]) {
            try await waitUntil(timeout: .seconds(10), "openssl s_server on port \(port)") { isListening(port) }
            #expect(await transportErrorCode(untrusting) == 60)  // CURLE_PEER_FAILED_VERIFICATION
            // The handshake verifies once the CA is given; `openssl s_server -www` answers a GET with a page.
            let page = try await S3Client(configuration: trusting).getObject(key: "k")
            #expect(!page.bytes.isEmpty)
        }
    }
}
