import Foundation
import S3Client
import Testing

/// A real S3 server on 127.0.0.1 that `scripts/test` started, described by its environment.
struct TestS3Server: Sendable, CustomTestStringConvertible {
    let name: String
    /// rclone's S3 server ignores If-None-Match and If-Match on PUT.
    let honorsConditionalWrites: Bool

    static let seaweedFS = TestS3Server(name: "SEAWEEDFS", honorsConditionalWrites: true)
    static let rclone = TestS3Server(name: "RCLONE", honorsConditionalWrites: false)
    static let all = [seaweedFS, rclone]

    var testDescription: String { name.lowercased() }

    private func environment(_ suffix: String) throws -> String {
        let variable = "SYNC_AGENT_TEST_\(name)_\(suffix)"
        return try #require(
            ProcessInfo.processInfo.environment[variable],
            "\(variable) is not set: run the tests with scripts/test, which starts the S3 servers")
    }

    var endpoint: String { get throws { try environment("ENDPOINT") } }
    var accessKey: String { get throws { try environment("ACCESS_KEY") } }
    var secretKey: String { get throws { try environment("SECRET_KEY") } }

    func configuration(bucket: String) throws -> S3Configuration {
        var configuration = S3Configuration(
            endpoint: try .init(parsing: try endpoint), bucket: bucket,
            credentials: AWSCredentials(accessKeyID: try accessKey, secretAccessKey: try secretKey))
        configuration.retry.baseDelay = .milliseconds(10)
        configuration.retry.maxDelay = .milliseconds(100)
        return configuration
    }

    /// A client on a new, empty bucket of its own.
    func freshBucket(configure: (inout S3Configuration) -> Void = { _ in }) async throws -> S3Client {
        var configuration = try configuration(bucket: "t-" + randomHex(8))
        configure(&configuration)
        let client = S3Client(configuration: configuration)
        try await client.createBucket()
        return client
    }

    /// Runs the AWS CLI (from the test venv) against this server.
    @discardableResult
    func aws(_ arguments: [String]) throws -> String {
        let tools = try #require(ProcessInfo.processInfo.environment["SYNC_AGENT_TEST_TOOLS"])
        var environment = ProcessInfo.processInfo.environment
        environment["AWS_ACCESS_KEY_ID"] = try accessKey
        environment["AWS_SECRET_ACCESS_KEY"] = try secretKey
        environment["AWS_DEFAULT_REGION"] = "us-east-1"
        return try run("\(tools)/aws", ["--endpoint-url", try endpoint] + arguments, environment: environment)
    }
}

func randomHex(_ byteCount: Int) -> String {
    (0..<byteCount).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
}

func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}

struct ProcessFailure: Error, CustomStringConvertible {
    let description: String
}

/// Runs a program to completion and returns its standard output; throws on a non-zero exit.
@discardableResult
func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    try process.run()
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw ProcessFailure(description: "\(executable) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(String(decoding: errorData, as: UTF8.self))")
    }
    return String(decoding: outputData, as: UTF8.self)
}

/// A temporary directory removed when the value is released.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("\(NSTemporaryDirectory())/sync-agent-test.XXXXXX".utf8CString)
        guard let created = mkdtemp(&template) else { throw ProcessFailure(description: "mkdtemp failed") }
        path = String(cString: created)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }
}
