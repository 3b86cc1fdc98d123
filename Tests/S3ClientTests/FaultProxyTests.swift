import S3Client
import TestSupport
import Testing

/// The fault proxy the agent's fault tests rely on, in front of the shared SeaweedFS: it passes
/// requests through on kept-alive connections, and each fault reaches the client as the error
/// it imitates.
@Suite("fault proxy")
struct FaultProxyTests {
    /// A client on a fresh bucket, through a new proxy, trying every request once.
    private func clientThroughProxy() async throws -> (S3Client, FaultProxy) {
        let direct = try await TestS3Server.seaweedFS.freshBucket()
        let proxy = try FaultProxy(upstream: try TestS3Server.seaweedFS.endpoint)
        var configuration = direct.configuration
        configuration.endpoint = try .init(parsing: proxy.endpoint)
        configuration.retry.maxAttempts = 1
        return (S3Client(configuration: configuration), proxy)
    }

    @Test(.needsTestServers) func passesRequestsThrough() async throws {
        let (client, proxy) = try await clientThroughProxy()
        let bytes = randomBytes(300_000)
        for index in 0..<5 {
            try await client.putObject(key: "k\(index)", bytes: bytes)
            #expect(try await client.getObject(key: "k\(index)").bytes == bytes)
            #expect(try await client.headObject(key: "k\(index)").size == Int64(bytes.count))
        }
        #expect(try await client.listObjects().objects.count == 5)
        #expect(proxy.faultedRequests == 0)
    }

    @Test(.needsTestServers) func errorRepliesAreTheServiceErrorsTheyImitate() async throws {
        let (client, proxy) = try await clientThroughProxy()
        try await client.putObject(key: "k", bytes: [1, 2, 3])
        let cases: [(FaultProxy.Fault, S3Error.Kind)] = [
            (.internalError, .serverError), (.slowDown, .throttled), (.accessDenied, .accessDenied),
        ]
        for (fault, kind) in cases {
            proxy.inject(fault)
            let error = await #expect(throws: S3ClientError.self) { try await client.getObject(key: "k") }
            #expect(error?.serviceKind == kind, "\(fault)")
        }
        proxy.inject(.internalError, every: 2)
        #expect(try await client.getObject(key: "k").bytes == [1, 2, 3])
        await #expect(throws: S3ClientError.self) { try await client.getObject(key: "k") }
        #expect(proxy.faultedRequests == 4)
    }

    @Test(.needsTestServers) func brokenConnectionsAreTransportErrors() async throws {
        let (client, proxy) = try await clientThroughProxy()
        let bytes = randomBytes(100_000)
        try await client.putObject(key: "k", bytes: bytes)

        proxy.inject(.cutResponseBody)
        let cut = await #expect(throws: S3ClientError.self) { try await client.getObject(key: "k") }
        #expect(cut.map { if case .transport = $0 { true } else { false } } == true, "\(String(describing: cut))")

        // A PUT's answer has no body: half its head goes back.
        let cutHead = await #expect(throws: S3ClientError.self) { try await client.putObject(key: "other", bytes: [1]) }
        #expect(cutHead.map { if case .transport = $0 { true } else { false } } == true, "\(String(describing: cutHead))")

        proxy.inject(.dropMidRequest)
        let dropped = await #expect(throws: S3ClientError.self) { try await client.putObject(key: "k", bytes: randomBytes(100_000)) }
        #expect(dropped.map { if case .transport = $0 { true } else { false } } == true, "\(String(describing: dropped))")

        // The server never saw the cut upload whole: the object is unchanged.
        proxy.inject(.delayResponse(.milliseconds(300)))
        #expect(try await client.getObject(key: "k").bytes == bytes)
        #expect(proxy.faultedRequests == 4)
    }
}
