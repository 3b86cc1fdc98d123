import Foundation
import Glibc
import S3Client
import Synchronization

/// An S3 server of one test's own, which the test may take down: where it answers and the
/// random credentials it accepts.
public protocol PrivateS3Server: Sendable {
    var endpoint: String { get }
    var accessKey: String { get }
    var secretKey: String { get }
}

extension PrivateS3Server {
    /// A client on a new, empty bucket.
    public func freshBucket() async throws -> S3Client {
        var configuration = S3Configuration(
            endpoint: try .init(parsing: endpoint), bucket: "t-" + randomHex(8),
            credentials: AWSCredentials(accessKeyID: accessKey, secretAccessKey: secretKey))
        configuration.retry.baseDelay = .milliseconds(10)
        configuration.retry.maxDelay = .milliseconds(100)
        let client = S3Client(configuration: configuration)
        // Right after start-up the filer may not take writes yet.
        try await waitUntil(timeout: .seconds(30), "cannot create a bucket on the private S3 server at \(endpoint)") {
            (try? await client.createBucket()) != nil
        }
        return client
    }
}

/// A SeaweedFS of one test's own (`weed mini`, as scripts/lib/s3-servers.sh starts the shared
/// one), which the test can stop and start again on the same ports and data directory to
/// simulate an outage. Stopped when released.
public final class PrivateSeaweedFS: PrivateS3Server {
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
        try writeSeaweedFSIdentities(accessKey: accessKey, secretKey: secretKey, to: directory.file("identities.json"))
        let names = ["s3", "master", "volume", "filer", "admin"]
        ports = Dictionary(uniqueKeysWithValues: zip(names, try distinctFreePortPairs(names.count)))
        s3Port = ports["s3"]!
        try await start()
    }

    deinit {
        // Killed and reaped before its data directory goes.
        server.withLock { $0 = nil }
    }

    /// Starts the server (again) and waits until its S3 port answers.
    public func start() async throws {
        let process = try await startWeed(
            [
                "mini", "-dir=\(directory.file("data"))", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                "-s3.config=\(directory.file("identities.json"))", "-s3.port=\(s3Port)", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.port=\(ports["master"]!)", "-volume.port=\(ports["volume"]!)",
                "-filer.port=\(ports["filer"]!)", "-admin.port=\(ports["admin"]!)", "-webdav=false", "-admin.ui=false",
            ], log: directory.file("server.log"), listeningOn: s3Port)
        server.withLock { $0 = process }
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
}

/// Starts `weed` with `arguments` (a subcommand first), its output appended to the file `log`,
/// and waits until it accepts connections on `port`.
func startWeed(_ arguments: [String], log: String, listeningOn port: Int) async throws -> ChildProcess {
    let tools = try environmentValue("SYNC_AGENT_TEST_TOOLS", "the directory holding `weed`")
    let process = try ChildProcess(
        "\(tools)/weed", arguments, environment: ProcessInfo.processInfo.environment,
        standardOutput: log, standardError: log)
    let name = "weed \(arguments.first ?? "")"
    try await waitUntil(timeout: .seconds(60), "\(name) did not start; its log:\n\(process.standardError)") {
        guard process.isRunning else { throw ProgramFailure("\(name) exited: \(process.standardError)") }
        return isListening(port)
    }
    return process
}

/// The S3 gateway's identities file: one identity that may do everything, with these credentials.
func writeSeaweedFSIdentities(accessKey: String, secretKey: String, to path: String) throws {
    let identities = """
        {"identities":[{"name":"test","credentials":[{"accessKey":"\(accessKey)","secretKey":"\(secretKey)"}],\
        "actions":["Admin","Read","List","Tagging","Write"]}]}
        """
    try identities.write(toFile: path, atomically: true, encoding: .utf8)
}

/// `count` different ports, each free together with the port 10000 above it (`freePortPair`).
func distinctFreePortPairs(_ count: Int) throws -> [Int] {
    var ports: [Int] = []
    while ports.count < count {
        let port = try freePortPair()
        if !ports.contains(where: { abs($0 - port) == 10000 || $0 == port }) { ports.append(port) }
    }
    return ports
}

func environmentValue(_ name: String, _ what: String) throws -> String {
    guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
        throw ProgramFailure("\(name) (\(what)) is not set: run the tests with scripts/test")
    }
    return value
}
