import Foundation
import Testing

/// The S3 servers (SeaweedFS, rclone) and the tools (`weed`, the AWS CLI) that `scripts/test`
/// starts and describes in the environment. A plain `swift test` has none of them: the tests
/// that need them skip. `scripts/test` sets SYNC_AGENT_TEST_SERVERS=required, and there a
/// missing server fails those tests instead of skipping them.
public enum TestServers {
    static let variables = [
        "SYNC_AGENT_TEST_SEAWEEDFS_ENDPOINT", "SYNC_AGENT_TEST_RCLONE_ENDPOINT", "SYNC_AGENT_TEST_TOOLS",
    ]

    public static var available: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["SYNC_AGENT_TEST_SERVERS"] == "required" || variables.allSatisfy { environment[$0] != nil }
    }
}

extension Trait where Self == ConditionTrait {
    /// For a suite or test that needs what `scripts/test` starts.
    public static var needsTestServers: Self {
        .enabled(if: TestServers.available, "needs SeaweedFS/rclone: run scripts/test")
    }
}
