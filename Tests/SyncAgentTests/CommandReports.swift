import Foundation
import TestSupport
import Testing

typealias CommandRun = (termination: Termination, standardOutput: String, standardError: String)

/// A command's `--json` report as an object.
func jsonObject(_ result: CommandRun) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))
    return try #require(object as? [String: Any], "\(result.standardOutput) \(result.standardError)")
}

/// `restore --json` into `target`: the run and each session's status ("failed: <reason>" for failures).
func restoreStatuses(_ runner: SyncAgentRunner, into target: String, _ arguments: [String], standardInput: String = "/dev/null")
    async throws -> (CommandRun, statuses: [String: String])
{
    let result = try await runner.run("restore", ["--sessions-dir", target, "--json"] + arguments, standardInput: standardInput)
    let report = try jsonObject(result)
    var statuses: [String: String] = [:]
    for entry in report["recoveredSessions"] as? [[String: Any]] ?? [] {
        statuses[entry["sessionId"] as! String] = entry["status"] as? String
    }
    for entry in report["failedSessions"] as? [[String: Any]] ?? [] {
        statuses[entry["sessionId"] as! String] = "failed: " + (entry["reason"] as! String)
    }
    return (result, statuses)
}
