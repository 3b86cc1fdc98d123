import Foundation
import Glibc
import S3Client
import Synchronization

/// A SeaweedFS of one test's own (`weed mini`, as scripts/lib/s3-servers.sh starts the shared
/// one), which the test can stop and start again on the same ports and data directory to
/// simulate an outage. Stopped when released.
public final class PrivateSeaweedFS: Sendable {
    public let accessKey = "AK" + randomHex(8)
    public let secretKey = randomHex(20)
    public let s3Port: Int
    public var endpoint: String { "http://127.0.0.1:\(s3Port)" }
    private let directory: TemporaryDirectory
    private let ports: [String: Int]
    private let server = Mutex<ChildProcess?>(nil)

    /// Starts the server and waits until it answers.
    public init() async throws {
        directory = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.file("data"), withIntermediateDirectories: true)
        let identities = """
            {"identities":[{"name":"test","credentials":[{"accessKey":"\(accessKey)","secretKey":"\(secretKey)"}],\
            "actions":["Admin","Read","List","Tagging","Write"]}]}
            """
        try identities.write(toFile: directory.file("identities.json"), atomically: true, encoding: .utf8)
        var ports: [String: Int] = [:]
        for name in ["s3", "master", "volume", "filer", "admin"] {
            var port = try freePortPair()
            while ports.values.contains(port) { port = try freePortPair() }
            ports[name] = port
        }
        self.ports = ports
        s3Port = ports["s3"]!
        try await start()
    }

    deinit {
        // Killed and reaped before its data directory goes.
        server.withLock { $0 = nil }
    }

    /// Starts the server (again) and waits until its S3 port answers.
    public func start() async throws {
        let tools = try environmentValue("SYNC_AGENT_TEST_TOOLS", "the directory holding `weed`")
        let arguments = [
            "mini", "-dir=\(directory.file("data"))", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-s3.config=\(directory.file("identities.json"))", "-s3.port=\(s3Port)", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-master.port=\(ports["master"]!)", "-volume.port=\(ports["volume"]!)",
            "-filer.port=\(ports["filer"]!)", "-admin.port=\(ports["admin"]!)", "-webdav=false", "-admin.ui=false",
        ]
        let process = try ChildProcess(
            "\(tools)/weed", arguments, environment: ProcessInfo.processInfo.environment,
            standardOutput: directory.file("server.log"), standardError: directory.file("server.log"))
        server.withLock { $0 = process }
        try await waitUntil(timeout: .seconds(60), "SeaweedFS did not start; its log:\n\(log)") {
            guard process.isRunning else { throw ProgramFailure("SeaweedFS exited: \(log)") }
            return isListening(s3Port)
        }
    }

    /// Stops the server (SIGTERM, so what it acknowledged is on disk) and waits for its end.
    public func stop() async throws {
        guard let process = server.withLock({ $0.take() }) else { return }
        process.send(SIGTERM)
        do {
            try await process.waitForExit(timeout: .seconds(20))
        } catch {
            try await process.kill()
        }
        try await waitUntil(timeout: .seconds(10), "port \(s3Port) still in use") { !isListening(s3Port) }
    }

    public var log: String { (try? String(contentsOfFile: directory.file("server.log"), encoding: .utf8)) ?? "" }

    /// A client on a new, empty bucket.
    public func freshBucket() async throws -> S3Client {
        var configuration = S3Configuration(
            endpoint: try .init(parsing: endpoint), bucket: "t-" + randomHex(8),
            credentials: AWSCredentials(accessKeyID: accessKey, secretAccessKey: secretKey))
        configuration.retry.baseDelay = .milliseconds(10)
        configuration.retry.maxDelay = .milliseconds(100)
        let client = S3Client(configuration: configuration)
        // Right after start-up the filer may not take writes yet.
        try await waitUntil(timeout: .seconds(30), "cannot create a bucket on the private SeaweedFS") {
            (try? await client.createBucket()) != nil
        }
        return client
    }
}

func environmentValue(_ name: String, _ what: String) throws -> String {
    guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
        throw ProgramFailure("\(name) (\(what)) is not set: run the tests with scripts/test")
    }
    return value
}
