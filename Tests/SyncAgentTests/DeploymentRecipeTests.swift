import Foundation
import TestSupport
import Testing

/// The recipes under deploy/ use only flags the CLI (and `weed`, for the SeaweedFS cluster) has,
/// their YAML and JSON parse and their systemd units verify (deploy/check-recipes; Docker and a
/// cluster are not available to the tests).
@Test(.needsTestServers) func theDeploymentRecipesMatchTheCLI() async throws {
    let tools = try #require(ProcessInfo.processInfo.environment["SYNC_AGENT_TEST_TOOLS"])
    let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    let output = try await runProgram(
        "\(tools)/python", ["\(repository)/deploy/check-recipes", try SyncAgentRunner.binaryPath, "\(tools)/weed"])
    #expect(!output.contains("problem:"), "\(output)")
}
