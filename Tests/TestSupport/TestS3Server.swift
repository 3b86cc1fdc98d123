import Foundation
import S3Client
import Testing

/// A real S3 server on 127.0.0.1 that `scripts/test` started, described by its environment.
public struct TestS3Server: Sendable, CustomTestStringConvertible {
    public let name: String
    /// rclone's S3 server ignores If-None-Match and If-Match on PUT.
    public let honorsConditionalWrites: Bool

    public static let seaweedFS = TestS3Server(name: "SEAWEEDFS", honorsConditionalWrites: true)
    public static let rclone = TestS3Server(name: "RCLONE", honorsConditionalWrites: false)
    /// Both servers; none in a plain `swift test` without them (TestServers), so that a test run
    /// over every store still runs on the local one.
    public static let all = TestServers.available ? [seaweedFS, rclone] : []

    public var testDescription: String { name.lowercased() }

    private func environment(_ suffix: String) throws -> String {
        let variable = "SYNC_AGENT_TEST_\(name)_\(suffix)"
        return try #require(
            ProcessInfo.processInfo.environment[variable],
            "\(variable) is not set: run the tests with scripts/test, which starts the S3 servers")
    }

    public var endpoint: String { get throws { try environment("ENDPOINT") } }
    public var accessKey: String { get throws { try environment("ACCESS_KEY") } }
    public var secretKey: String { get throws { try environment("SECRET_KEY") } }

    public func configuration(bucket: String) throws -> S3Configuration {
        var configuration = S3Configuration(
            endpoint: try .init(parsing: try endpoint), bucket: bucket,
            credentials: AWSCredentials(accessKeyID: try accessKey, secretAccessKey: try secretKey))
        configuration.retry.baseDelay = .milliseconds(10)
        configuration.retry.maxDelay = .milliseconds(100)
        return configuration
    }

    /// A client on a new, empty bucket of its own.
    public func freshBucket(configure: (inout S3Configuration) -> Void = { _ in }) async throws -> S3Client {
        var configuration = try configuration(bucket: "t-" + randomHex(8))
        configure(&configuration)
        let client = S3Client(configuration: configuration)
        try await client.createBucket()
        return client
    }

    /// Runs the AWS CLI (from the test venv) against this server.
    @discardableResult
    public func aws(_ arguments: [String]) async throws -> String {
        let tools = try #require(ProcessInfo.processInfo.environment["SYNC_AGENT_TEST_TOOLS"])
        return try await runProgram(
            "\(tools)/aws", ["--endpoint-url", try endpoint] + arguments,
            environment: [
                "AWS_ACCESS_KEY_ID": try accessKey, "AWS_SECRET_ACCESS_KEY": try secretKey,
                "AWS_DEFAULT_REGION": "us-east-1",
            ])
    }
}
