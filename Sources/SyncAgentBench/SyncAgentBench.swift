import ArgumentParser
import Foundation
import S3Client
import SystemSupport

/// The entry point. Not `@main` on the async root command: an async main parks the main thread
/// in libdispatch's `dispatch_main` (`pthread_exit`, then `sigsuspend`), and valgrind 3.19 dies
/// of an internal SIGSEGV when such a process exits; `bench/instructions` runs this under
/// callgrind. Here the main thread waits for the command and returns.
@main
enum SyncAgentBenchMain {
    static func main() {
        let finished = DispatchSemaphore(value: 0)
        // Detached: a task started here would run on the main actor, whose thread waits below.
        Task.detached {
            await SyncAgentBench.main()
            finished.signal()
        }
        finished.wait()
    }
}

/// The benchmark driver: each subcommand does one measured job with the project's own
/// code, so `bench/` scripts can time it beside a baseline tool on the same data.
struct SyncAgentBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync-agent-bench",
        abstract: "Measured jobs for the benchmarks in bench/.",
        subcommands: [
            S3Upload.self, S3Download.self,
            ArchivePack.self, ArchiveUnpack.self, SecretstreamEncrypt.self, SecretstreamDecrypt.self,
            SidecarWriter.self, ChangeCost.self,
        ])
}

struct S3Options: ParsableArguments {
    @Option(help: "S3 endpoint, e.g. http://127.0.0.1:8333.") var endpoint: String
    @Option(help: "Bucket.") var bucket: String
    @Option(help: "Key prefix.") var prefix: String = ""
    @Option(help: "Requests in flight at once.") var concurrency = 32
    @Option(help: "Multipart part size in MiB (the client's default when absent).") var partSizeMib: Int?
    @Option(help: "Parts of one object in flight at once (the client's default when absent).") var partConcurrency: Int?

    func client() throws -> S3Client {
        var configuration = try S3Configuration.resolve(
            bucket: bucket, endpoint: endpoint, environment: ProcessInfo.processInfo.environment)
        configuration.maxConnections = concurrency
        if let partSizeMib { configuration.multipart.partSize = Int64(partSizeMib) << 20 }
        if let partConcurrency { configuration.multipart.concurrency = partConcurrency }
        return S3Client(configuration: configuration)
    }
}

struct S3Upload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "s3-upload", abstract: "Upload every file of a directory.")
    @OptionGroup var s3: S3Options
    @Argument(help: "Directory whose files are uploaded.") var directory: String

    func run() async throws {
        let client = try s3.client()
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        let prefix = s3.prefix
        _ = try await names.concurrentMap(limit: s3.concurrency) { name in
            try await client.putObject(key: prefix + name, fileAt: "\(directory)/\(name)")
        }
    }
}

struct S3Download: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "s3-download", abstract: "Download every object under a prefix.")
    @OptionGroup var s3: S3Options
    @Argument(help: "Directory the objects are written to.") var directory: String

    func run() async throws {
        let client = try s3.client()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let objects = try await client.listObjects(prefix: s3.prefix).objects
        let prefix = s3.prefix
        _ = try await objects.concurrentMap(limit: s3.concurrency) { object in
            let name = String(object.key.dropFirst(prefix.count))
            try await client.downloadObject(key: object.key, toFileAt: "\(directory)/\(name)")
        }
    }
}
