import StoreConformance
import TestSupport
import Testing

/// The `ObjectStore` contract, unchanged, on `S3ObjectStore` against each real server
/// (SeaweedFS, and rclone's S3 server, which ignores conditional writes and says so). Without
/// the servers the trait says so: no servers means no arguments, which alone reads "No test cases found".
@Suite("The S3 store conforms to ObjectStore", .needsTestServers)
struct S3StoreConformanceTests {
    @Test(arguments: objectStoreConformanceCases, StoreBackend.s3Servers)
    func conforms(_ contract: ObjectStoreConformanceCase, on server: StoreBackend) async throws {
        try await contract.run(on: server)
    }
}
