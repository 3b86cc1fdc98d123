import Foundation
import Synchronization

/// SeaweedFS as deploy/seaweedfs-cluster runs it across machines, here all on 127.0.0.1: one
/// master, volume servers, a filer and the S3 gateway, each its own process with its own data
/// directory and log. The master's default replication keeps every write on two volume servers
/// ("001": two servers of one rack); a test kills a volume server the way a machine dies and
/// starts it again on the same port and data. Every process is killed when the cluster is released.
public final class SeaweedFSCluster: PrivateS3Server {
    public let accessKey = "AK" + randomHex(8)
    public let secretKey = randomHex(20)
    public var endpoint: String { "http://127.0.0.1:\(s3Port)" }
    public let volumeServerCount: Int
    private let directory: TemporaryDirectory
    private let masterPort: Int
    private let volumePorts: [Int]
    private let filerPort: Int
    private let s3Port: Int
    /// Running processes by component name ("master", "volume-1", "filer", "s3").
    private let processes = Mutex<[String: ChildProcess]>([:])

    /// Starts every process and waits until the master knows all volume servers and the S3
    /// gateway answers.
    public init(volumeServers: Int = 2, replication: String = "001") async throws {
        directory = try TemporaryDirectory()
        volumeServerCount = volumeServers
        let ports = try distinctFreePortPairs(volumeServers + 3)
        (masterPort, filerPort, s3Port) = (ports[0], ports[1], ports[2])
        volumePorts = Array(ports[3...])
        try writeSeaweedFSIdentities(accessKey: accessKey, secretKey: secretKey, to: directory.file("identities.json"))

        // Small volumes, as scripts/lib/s3-servers.sh gives the shared server: each bucket gets
        // volumes of its own, and at the default 30 GB a few buckets would claim the disk.
        try await start("master", port: masterPort, [
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=\(masterPort)", "-mdir=\(try dataDirectory("master"))",
            "-defaultReplication=\(replication)", "-volumeSizeLimitMB=32", "-telemetry=false",
        ])
        for index in 1...volumeServers { try await startVolumeServer(index) }
        try await start("filer", port: filerPort, [
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=\(filerPort)", "-master=127.0.0.1:\(masterPort)",
            "-defaultStoreDir=\(try dataDirectory("filer"))",
        ])
        try await start("s3", port: s3Port, [
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=\(s3Port)", "-port.iceberg=0", "-port.lance=0",
            "-filer=127.0.0.1:\(filerPort)", "-config=\(directory.file("identities.json"))",
        ])
    }

    deinit {
        // Killed and reaped before their data directories go.
        processes.withLock { $0.removeAll() }
    }

    /// Starts volume server `index` (1-based), again after a kill on the same port and data,
    /// and waits until the master counts it.
    public func startVolumeServer(_ index: Int) async throws {
        let port = volumePorts[index - 1]
        try await start("volume-\(index)", port: port, [
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=\(port)", "-dir=\(try dataDirectory("volume-\(index)"))",
            "-master=127.0.0.1:\(masterPort)", "-max=100", "-dataCenter=dc1", "-rack=rack1",
        ])
        try await waitUntil(timeout: .seconds(60), "the master never counted volume server \(index)") {
            try await volumeServersKnownToMaster().contains(port)
        }
    }

    /// SIGKILL for volume server `index`, as when its machine dies; waits until the master has
    /// dropped it from the topology.
    public func killVolumeServer(_ index: Int) async throws {
        let port = volumePorts[index - 1]
        guard let process = processes.withLock({ $0.removeValue(forKey: "volume-\(index)") }) else { return }
        try await process.kill()
        try await waitUntil(timeout: .seconds(60), "the master still counts the killed volume server \(index)") {
            try await !volumeServersKnownToMaster().contains(port)
        }
    }

    /// Everything the processes wrote, for a failing test's message.
    public var logs: String {
        let names = ["master", "filer", "s3"] + (1...volumeServerCount).map { "volume-\($0)" }
        return names.map { name in
            "== \(name)\n" + ((try? String(contentsOfFile: directory.file("\(name).log"), encoding: .utf8)) ?? "")
        }.joined(separator: "\n")
    }

    /// The ports of the volume servers in the master's topology (`/dir/status`).
    private func volumeServersKnownToMaster() async throws -> Set<Int> {
        let (status, body) = try await httpGet("http://127.0.0.1:\(masterPort)/dir/status")
        guard status == 200, let answer = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else {
            throw ProgramFailure("the master's /dir/status answered \(status): \(body)")
        }
        let topology = answer["Topology"] as? [String: Any]
        let dataCenters = topology?["DataCenters"] as? [[String: Any]] ?? []
        let racks = dataCenters.flatMap { $0["Racks"] as? [[String: Any]] ?? [] }
        let nodes = racks.flatMap { $0["DataNodes"] as? [[String: Any]] ?? [] }
        return Set(nodes.compactMap { ($0["Url"] as? String)?.split(separator: ":").last.flatMap { Int($0) } })
    }

    private func start(_ name: String, port: Int, _ arguments: [String]) async throws {
        let subcommand = name.hasPrefix("volume") ? "volume" : name
        let process = try await startWeed([subcommand] + arguments, log: directory.file("\(name).log"), listeningOn: port)
        processes.withLock { $0[name] = process }
    }

    private func dataDirectory(_ name: String) throws -> String {
        let path = directory.file("\(name)-data")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
