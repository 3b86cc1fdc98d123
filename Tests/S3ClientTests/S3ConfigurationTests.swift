import S3Client
import Testing

/// Where the client's settings come from: flags first, then the AWS names, then the MinIO
/// names gateways already use.
@Suite("S3 configuration")
struct S3ConfigurationTests {
    let credentials = ["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"]

    @Test func awsEndpointAndCredentialsFromTheEnvironment() throws {
        let configuration = try S3Configuration.resolve(
            bucket: "sessions", environment: credentials.merging(
                ["AWS_ENDPOINT_URL": "https://s3.example.net:9443/", "AWS_REGION": "eu-west-1", "AWS_SESSION_TOKEN": "token"]
            ) { $1 })
        #expect(configuration.endpoint == .init(scheme: "https", host: "s3.example.net", port: 9443))
        #expect(configuration.region == "eu-west-1")
        #expect(configuration.addressing == .path)
        #expect(configuration.credentials.accessKeyID == "AKID")
        #expect(configuration.credentials.sessionToken == "token")
    }

    @Test func minioNamesWithoutASchemeMeanPlainHTTPUnlessTLSIsAskedFor() throws {
        let minio = ["MINIO_ENDPOINT": "minio", "MINIO_PORT": "9000", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"]
        let plain = try S3Configuration.resolve(bucket: "sessions", environment: minio)
        #expect(plain.endpoint == .init(scheme: "http", host: "minio", port: 9000))
        #expect(plain.credentials.accessKeyID == "a")
        let tls = try S3Configuration.resolve(bucket: "sessions", environment: minio.merging(["MINIO_USE_SSL": "true"]) { $1 })
        #expect(tls.endpoint.scheme == "https")
    }

    @Test func flagsWinOverTheEnvironment() throws {
        let configuration = try S3Configuration.resolve(
            bucket: "sessions", endpoint: "http://127.0.0.1:8333", region: "us-west-2", accessKeyID: "flag",
            secretAccessKey: "flag-secret", environment: credentials.merging(["AWS_ENDPOINT_URL": "https://ignored"]) { $1 })
        #expect(configuration.endpoint == .init(scheme: "http", host: "127.0.0.1", port: 8333))
        #expect(configuration.region == "us-west-2")
        #expect(configuration.credentials.accessKeyID == "flag")
    }

    @Test func withoutAnEndpointItIsAWSWithVirtualHostedAddressing() throws {
        let configuration = try S3Configuration.resolve(bucket: "sessions", region: "eu-central-1", environment: credentials)
        #expect(configuration.endpoint.host == "s3.eu-central-1.amazonaws.com")
        #expect(configuration.addressing == .virtualHosted)
    }

    /// Credentials belong in the environment: an endpoint URL with a user and password is
    /// refused, and the refusal never shows them, whichever check refuses it.
    @Test(arguments: [
        "http://backup:hunter2-pw@minio:9000", "https://backup:hunter2-pw@minio", "backup:hunter2-pw@minio:9000",
        "ftp://backup:hunter2-pw@minio", "http://backup:hunter2/pw@minio", "http://backup:hunter2@pw@minio:9000/",
    ])
    func anEndpointWithCredentialsIsRefusedWithoutShowingThem(_ endpoint: String) {
        for environment in [["AWS_ENDPOINT_URL": endpoint], ["MINIO_ENDPOINT": endpoint]] {
            let error = #expect(throws: S3ConfigurationError.self) {
                try S3Configuration.resolve(bucket: "sessions", environment: credentials.merging(environment) { $1 })
            }
            let message = error?.description ?? ""
            #expect(!message.contains("hunter2") && !message.contains("backup"), "\(message)")
            #expect(message.contains("***@minio"), "\(message)")
        }
    }

    @Test(arguments: [
        ("no access key", "sessions", [String: String](), "access key"),
        ("bad bucket", "Not_A_Bucket", ["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"], "bucket name"),
        ("bad scheme", "sessions", ["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_ENDPOINT_URL": "ftp://x"], "scheme"),
        ("bad port", "sessions", ["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_ENDPOINT_URL": "http://x:99999"], "port"),
    ])
    func badValuesSayWhatIsWrong(_ name: String, bucket: String, environment: [String: String], expected: String) {
        let error = #expect(throws: S3ConfigurationError.self) {
            try S3Configuration.resolve(bucket: bucket, environment: environment)
        }
        #expect(error?.description.contains(expected) == true, "\(name): \(String(describing: error))")
    }
}
