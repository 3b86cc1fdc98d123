import Foundation
import Glibc
import TestSupport
import Testing

@testable import SyncAgent

/// The control routes of the real binary: the socket and the token as `watch` sets them up, and
/// the commands that call them. What the engine does with a call is the engine's tests' (and
/// `PlannedMoveTests`'); these check who can reach it and how a refusal ends.
@Suite("watch: the control socket and token")
struct ControlIntegrationTests {
    /// A private token file, the agent's as an operator would make it.
    static func tokenFile(in workspace: Workspace, _ content: String, mode: mode_t = 0o600) throws -> String {
        let path = workspace.directory.file("control.token")
        try write(content + "\n", to: path)
        chmod(path, mode)
        try AgentUser.handOver(path)
        return path
    }

    /// The control commands take no store options: they talk to the agent only.
    static func commands(of runner: SyncAgentRunner) -> SyncAgentRunner {
        var commands = runner
        commands.storeArguments = []
        return commands
    }

    @Test func theSocketIsPrivateAnswersTheCommandsAndGoesAwayAtStop() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let socket = workspace.directory.file("control.sock")
        let agent = try runner.watch(workspace.sessions, ["--control-socket", socket])
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        var status = stat()
        #expect(lstat(socket, &status) == 0)
        #expect(status.st_mode & S_IFMT == S_IFSOCK)
        #expect(status.st_mode & 0o777 == 0o600)
        if AgentUser.isSeparate { #expect(status.st_uid == AgentUser.uid) }
        #expect(agent.log.contains("control_socket=\(socket)"), "\(agent.log)")
        #expect(agent.log.contains("control routes off on TCP"))

        // The read routes answer on the socket too.
        var client = EndpointClient(.socket(socket))
        client.timeout = .seconds(60)
        #expect(try await client.get("/healthz") == Array("ok\n".utf8))

        // Refused before anything is sent: not a session id.
        let badID = try await Self.commands(of: runner).run("flush", ["--control-socket", socket, ".hidden"])
        #expect(badID.termination == .exited(64), "\(badID.standardError)")
        // TCP without a token: off, exit 1, saying how to open them.
        let tcp = try await Self.commands(of: runner).run("release", ["--agent", try await agent.endpoint(), "--all"])
        #expect(tcp.termination == .exited(1))
        #expect(tcp.standardError.contains("off on TCP"), "\(tcp.standardError)")
        #expect(tcp.standardError.split(separator: "\n").count == 1, "one line: \(tcp.standardError)")

        let released = try await Self.commands(of: runner).run("release", ["--control-socket", socket, "--all"])
        #expect(released.termination == .exited(0), "\(released.standardError)\n\(agent.log)")
        let report = try JSONSerialization.jsonObject(with: Data(released.standardOutput.utf8)) as? [String: Any]
        #expect(report?["preservedSessions"] is [Any] && report?["failedSessions"] is [Any], "\(released.standardOutput)")

        #expect(try await agent.terminate() == .exited(0))
        #expect(lstat(socket, &status) != 0, "the socket outlived the agent")
    }

    @Test func theTokenOpensTheRoutesOnTCPAndAWrongOneDoesNot() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let token = try Self.tokenFile(in: workspace, "tok-\(randomHex(16))")
        let agent = try runner.watch(workspace.sessions, ["--control-token-file", token])
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        let endpoint = try await agent.endpoint()
        #expect(!agent.log.contains("control routes off on TCP"))

        let released = try await Self.commands(of: runner).run("release", ["--agent", endpoint, "--control-token-file", token, "--all"])
        #expect(released.termination == .exited(0), "\(released.standardError)")

        let other = workspace.directory.file("other.token")
        try write("tok-\(randomHex(16))\n", to: other)
        chmod(other, 0o600)
        try AgentUser.handOver(other)
        let wrong = try await Self.commands(of: runner).run("release", ["--agent", endpoint, "--control-token-file", other, "--all"])
        #expect(wrong.termination == .exited(1))
        #expect(wrong.standardError.contains("(unauthorized)"), "\(wrong.standardError)")
        let none = try await httpGet("\(endpoint)/sessions")
        #expect(none.status == 200, "the read routes need no token")

        #expect(try await agent.terminate() == .exited(0))
        let secret = try String(contentsOfFile: token, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!agent.log.contains(secret), "the token is in the agent's log")
    }

    /// Each stops the agent before it touches a session or the store, with one line naming why.
    @Test(arguments: ["a file where the socket goes", "a token file others can read", "a token file that is a symlink"])
    func aBadSocketPathOrTokenFileStopsTheAgentAtStart(problem: String) async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = workspace.directory.file("store")
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let options: [String]
        let expected: String
        switch problem {
        case "a file where the socket goes":
            let path = workspace.directory.file("control.sock")
            try write("not a socket", to: path)
            options = ["--control-socket", path]
            expected = "is not a socket"
        case "a token file others can read":
            options = ["--control-token-file", try Self.tokenFile(in: workspace, "tok-\(randomHex(16))", mode: 0o644)]
            expected = "readable by others"
        default:
            let target = try Self.tokenFile(in: workspace, "tok-\(randomHex(16))")
            let link = workspace.directory.file("token.link")
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
            options = ["--control-token-file", link]
            expected = "symbolic link"
        }
        let agent = try runner.watch(workspace.sessions, options)
        #expect(try await agent.process.waitForExit(timeout: .seconds(60)) == .exited(1))
        #expect(agent.log.contains(expected), "\(agent.log)")
        #expect(!FileManager.default.fileExists(atPath: store), "the agent made its store")
        if problem == "a file where the socket goes" {
            #expect(try String(contentsOfFile: workspace.directory.file("control.sock"), encoding: .utf8) == "not a socket")
        }
    }

    /// The commands against the real engine: what each answers and exits with, a refused
    /// request changing nothing, and a release that holds.
    @Test func theCommandsDriveTheEngineAndARefusedRequestChangesNothing() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let socket = workspace.directory.file("control.sock")
        let agent = try runner.watch(workspace.sessions, ["--control-socket", socket, "--agent-id", "worker-1"])
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        let commands = Self.commands(of: runner)
        func call(_ arguments: String...) async throws -> (code: Termination, json: [String: Any]?, error: String) {
            let result = try await commands.run(arguments[0], Array(arguments.dropFirst()) + ["--control-socket", socket])
            let json = try? JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
            return (result.termination, json, result.standardError)
        }

        let flushed = try await call("flush", "small")
        #expect(flushed.code == .exited(0), "\(flushed.error)")
        #expect(flushed.json?["sessionId"] as? String == "small")
        let snapshot = try #require(flushed.json?["snapshot"] as? String)
        #expect(flushed.json?["committedAt"] is String)

        // Refused: nothing reaches the engine, nothing changes in the store or the directory.
        // The agent's lease (agents/) is renewed on its own clock meanwhile, and its state cache
        // (.state/) written after the flush's commit: the sessions' objects are compared.
        func sessionObjects() throws -> [String: [UInt8]] {
            try directoryTree(workspace.directory.file("store")).filter { !$0.key.hasPrefix("agents/") && !$0.key.hasPrefix(".state/") }
        }
        let storeBefore = try sessionObjects()
        let sessionBefore = try directoryTree(workspace.session("small"))
        #expect(try await call("flush", "nosuch").code == .exited(9))
        #expect(try await call("flush", ".hidden").code == .exited(64))
        #expect(try await call("acquire", "small", "--wait-release", "11m").code == .exited(64))
        var client = EndpointClient(.socket(socket))
        client.timeout = .seconds(60)
        #expect(try await client.send(.POST, "/sessions/small/release?timeout=forever").status == .badRequest)
        #expect(try await client.send(.GET, "/sessions/small/logout").status == .methodNotAllowed)
        #expect(try await client.send(.POST, "/sessions/small/logout", body: Array(repeating: UInt8(ascii: "x"), count: 4096)).status == .payloadTooLarge)
        #expect(try await client.send(.POST, "/sessions/sm%zzall/logout").status == .badRequest)
        #expect(try sessionObjects() == storeBefore)
        #expect(try directoryTree(workspace.session("small")) == sessionBefore)

        let released = try await call("release", "small")
        #expect(released.code == .exited(0), "\(released.error)")
        #expect(released.json?["snapshot"] as? String == snapshot)
        #expect(try await call("release", "small").json?["snapshot"] as? String == snapshot, "a second release answers the same")
        let afterRelease = try await call("flush", "small")
        #expect(afterRelease.code == .exited(8), "\(afterRelease.error)")
        #expect(afterRelease.error.contains("(released)"))

        let acquired = try await call("acquire", "small", "--wait-release", "0")
        #expect(acquired.code == .exited(0), "\(acquired.error)")
        let entry = (acquired.json?["recoveredSessions"] as? [[String: Any]])?.first
        #expect(entry?["sessionId"] as? String == "small", "\(acquired.json ?? [:])")

        let loggedOut = try await call("logout", "small")
        #expect(loggedOut.code == .exited(0), "\(loggedOut.error)")
        #expect(!FileManager.default.fileExists(atPath: workspace.session("small")))
        #expect(try await agent.terminate() == .exited(0), "\(agent.log)")
    }
}
