import StoreConformance
import Testing

/// The `ObjectStore` contract, unchanged, on `S3ObjectStore` against each real server
/// (SeaweedFS, and rclone's S3 server, which ignores conditional writes and says so).
@Suite("The S3 store conforms to ObjectStore")
struct S3StoreConformanceTests {
    @Test(arguments: objectStoreConformanceCases, StoreBackend.s3Servers)
    func conforms(_ contract: ObjectStoreConformanceCase, on server: StoreBackend) async throws {
        try await contract.run(on: server)
    }
}
