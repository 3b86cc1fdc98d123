// swift-tools-version: 6.0
import PackageDescription

/// C libraries come from the system through pkg-config; `scripts/install-deps`
/// installs the Debian packages named in each `providers` list.
func systemLibrary(_ name: String, pkgConfig: String, apt: String) -> Target {
    .systemLibrary(name: name, pkgConfig: pkgConfig, providers: [.apt([apt])])
}

let package = Package(
    name: "sync-agent",
    products: [
        .executable(name: "sync-agent", targets: ["SyncAgent"]),
        .executable(name: "sync-agent-bench", targets: ["SyncAgentBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // 1.16: `LogHandler.log(event:)`, which the JSON log handler implements.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        // The `watch` endpoint: swift-nio's HTTP/1 codec and event loops, swift-metrics as the
        // engine's metrics API, and the Prometheus exporter behind it.
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        systemLibrary("CCurl", pkgConfig: "libcurl", apt: "libcurl4-openssl-dev"),
        systemLibrary("COpenSSL", pkgConfig: "openssl", apt: "libssl-dev"),
        systemLibrary("CSodium", pkgConfig: "libsodium", apt: "libsodium-dev"),
        systemLibrary("CArchive", pkgConfig: "libarchive", apt: "libarchive-dev"),
        systemLibrary("CZstd", pkgConfig: "libzstd", apt: "libzstd-dev"),
        systemLibrary("CSQLite", pkgConfig: "sqlite3", apt: "libsqlite3-dev"),
        // glibc's allocator tuning: mallopt for Swift, and one arena for `watch`, set before main.
        .target(name: "CMalloc"),

        // Byte streams, system errors, descriptors, directory listing, hex, digests, a bounded
        // concurrent map and the thread for blocking work: what every other target shares.
        .target(name: "SystemSupport", dependencies: ["COpenSSL"]),
        .target(
            name: "S3Client",
            dependencies: ["SystemSupport", "CCurl", .product(name: "Logging", package: "swift-log")]
        ),
        .target(name: "SessionCrypto", dependencies: ["SystemSupport", "CSodium"], path: "Sources/Crypto"),
        .target(name: "SessionArchive", dependencies: ["SystemSupport", "CArchive", "CZstd"]),
        .target(
            name: "SyncEngine",
            dependencies: [
                "SystemSupport", "SessionCrypto", "SessionArchive", "CSQLite",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // The S3 backend of the engine's `ObjectStore`; the executable assembles the stores.
        .target(name: "S3Store", dependencies: ["SyncEngine", "S3Client"]),
        .executableTarget(
            name: "SyncAgent",
            dependencies: [
                "SyncEngine", "S3Store", "SystemSupport", "S3Client", "SessionCrypto", "SessionArchive", "CMalloc",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "SyncAgentBench",
            dependencies: [
                "SyncEngine", "S3Store", "SystemSupport", "S3Client", "SessionCrypto", "SessionArchive",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .target(
            name: "TestSupport",
            dependencies: ["S3Client", .product(name: "Subprocess", package: "swift-subprocess")],
            path: "Tests/TestSupport"
        ),
        .testTarget(name: "SystemSupportTests", dependencies: ["SystemSupport"]),
        .testTarget(name: "S3ClientTests", dependencies: ["S3Client", "TestSupport"]),
        .testTarget(name: "CryptoTests", dependencies: ["SessionCrypto", "SystemSupport", "TestSupport"]),
        .testTarget(name: "SessionArchiveTests", dependencies: ["SessionArchive", "SessionCrypto", "SystemSupport", "TestSupport"]),
        // The `ObjectStore` conformance suite and the store backends of the tests, run against the
        // filesystem store by SyncEngineTests and against the S3 store by S3StoreTests.
        .target(
            name: "StoreConformance",
            dependencies: ["SyncEngine", "S3Store", "SystemSupport", "TestSupport"],
            path: "Tests/StoreConformance"
        ),
        .testTarget(name: "SyncEngineTests", dependencies: ["SyncEngine", "S3Store", "StoreConformance", "TestSupport"]),
        .testTarget(name: "S3StoreTests", dependencies: ["StoreConformance", "TestSupport"]),
        .testTarget(name: "SyncAgentTests", dependencies: ["SyncAgent", "TestSupport"]),
    ]
)

/// libFuzzer targets (fuzz/), only when scripts/fuzz sets SYNC_AGENT_FUZZ: they are built with
/// `-sanitize=fuzzer,address` over the whole graph (in .build-fuzz), which links libFuzzer and
/// must stay out of an ordinary build.
if Context.environment["SYNC_AGENT_FUZZ"] != nil {
    package.targets += [
        .systemLibrary(name: "CFuzzer", path: "fuzz/CFuzzer"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzer"], path: "fuzz/FuzzSupport"),
    ]
    let fuzzTargets: [(product: String, target: String, dependencies: [Target.Dependency])] = [
        ("fuzz-encrypted-object", "FuzzEncryptedObject", ["SessionCrypto", "SystemSupport"]),
        ("fuzz-archive", "FuzzArchive", ["SyncEngine", "SessionArchive", "SessionCrypto", "SystemSupport"]),
        ("fuzz-manifest", "FuzzManifest", ["SyncEngine"]),
        ("fuzz-head", "FuzzHead", ["SyncEngine"]),
        ("fuzz-s3-xml", "FuzzS3XML", ["S3Client"]),
    ]
    for fuzz in fuzzTargets {
        package.products.append(.executable(name: fuzz.product, targets: [fuzz.target]))
        package.targets.append(
            .executableTarget(name: fuzz.target, dependencies: fuzz.dependencies + ["FuzzSupport"], path: "fuzz/\(fuzz.target)"))
    }
}
