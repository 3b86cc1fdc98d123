import Foundation
import Glibc
import S3Client
import SystemSupport
import TestSupport
import Testing

/// `watch --listen`: the endpoint's routes against the real binary and real SeaweedFS, and
/// `status` reading them. Waits poll with generous bounds; nothing measures speed.
@Suite("watch: the HTTP endpoint and status")
struct EndpointIntegrationTests {
    @Test(.needsTestServers) func readinessFollowsTheStoreDownAndBackAndLogsStayJSON() async throws {
        let server = try await PrivateSeaweedFS()
        let workspace = try Workspace(sessions: ["small"])
        let runner = try await workspace.cloudRunner(on: try await server.freshBucket(), server: server)
        // The most verbose logs, so that the secret scan (at the agent's release) sees every line
        // the agent can write, S3 requests and retries included.
        let agent = try runner.watch(
            workspace.sessions, ["--store-probe-interval", "200ms", "--log-level", "trace", "--log-format", "json"])
        let endpoint = try await agent.endpoint()
        try await waitForReadiness(endpoint, 200)
        #expect(try await httpGet("\(endpoint)/healthz") == (200, "ok\n"))

        try await server.stop()
        let down = try await waitForReadiness(endpoint, 503)
        #expect(down.contains("the store does not answer"), "\(down)")
        #expect(try await httpGet("\(endpoint)/healthz").status == 200, "alive while the store is down")

        try await server.start()
        try await waitForReadiness(endpoint, 200)
        #expect(try await agent.terminate() == .exited(0))
        for line in agent.logLines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(["time", "level", "logger", "message"].allSatisfy { object?[$0] is String }, "\(line)")
        }
        #expect(agent.logLines.contains { $0.contains(#""message":"uploaded""#) && $0.contains(#""session":"small""#) })
    }

    @Test(.needsTestServers) func metricsParseAsPrometheusText() async throws {
        let workspace = try Workspace(sessions: ["small", "medium"])
        let runner = try await workspace.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching(uploadedAtStart: 2)
        try write(#"{"me":"\#(randomHex(8))"}"#, to: "\(workspace.session("small"))/creds.json")
        try await agent.waitForLog("] uploaded", count: 3)

        let (status, text) = try await httpGet("\(try await agent.endpoint())/metrics")
        #expect(status == 200)
        let families = try await prometheusFamilies(text, in: workspace)
        let expected: [String: String] = [
            "sync_agent_uploads": "counter", "sync_agent_uploaded_bytes": "counter",
            "sync_agent_replication_lag_seconds": "histogram", "sync_agent_pending_sessions": "gauge",
            "sync_agent_oldest_pending_change_age_seconds": "gauge", "sync_agent_last_upload_timestamp_seconds": "gauge",
            "sync_agent_watched_directories": "gauge", "sync_agent_rescans": "counter", "sync_agent_fenced_sessions": "gauge",
            "sync_agent_failing_sessions": "gauge", "sync_agent_skipped_files": "gauge",
            "sync_agent_refused_sessions": "gauge", "sync_agent_unwatched_directories": "gauge",
        ]
        for (name, type) in expected {
            #expect(families[name]?.type == type, "\(name) in:\n\(text)")
        }
        let uploads = try #require(families["sync_agent_uploads"]?.samples.first { $0.labels == ["mode": "cloud", "store": "s3"] })
        #expect(uploads.value == 3)
        #expect(families["sync_agent_replication_lag_seconds"]?.samples.contains { $0.name.hasSuffix("_count") && $0.value == 3 } == true)
        #expect((families["sync_agent_watched_directories"]?.samples.first?.value ?? 0) >= 2)
        #expect(families["sync_agent_rescans"]?.samples.first { $0.labels["reason"] == "started" }?.value == 1)
        let refusalReasons: [String] = (families["sync_agent_refused_sessions"]?.samples ?? []).compactMap { $0.labels["reason"] }
        #expect(refusalReasons.sorted() == ["symlink", "unreadable"])
        #expect(try await agent.terminate() == .exited(0))
    }

    /// As production runs it: not root, no capability. A socket option that only CAP_NET_ADMIN
    /// may set ended such an agent on its first request, a health probe.
    @Test func everyRouteAnswersAnAgentWithoutPrivileges() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        let status = try String(contentsOfFile: "/proc/\(agent.process.pid)/status", encoding: .utf8)
        let fields = Dictionary(status.split(separator: "\n").map { line in
            (String(line.prefix { $0 != ":" }), line.drop { $0 != ":" }.dropFirst().split(whereSeparator: \.isWhitespace).map(String.init))
        }) { first, _ in first }
        #expect(fields["CapEff"] == ["0000000000000000"], "\(status)")
        if AgentUser.isSeparate {
            #expect(fields["Uid"]?.allSatisfy { $0 == "\(AgentUser.uid)" } == true, "\(status)")
            #expect(fields["Groups"] == [], "\(status)")
        }

        let endpoint = try await agent.endpoint()
        for route in ["/healthz", "/readyz", "/metrics", "/sessions", "/healthz"] {
            let answer = try await httpGet(endpoint + route)
            #expect(answer.status == 200, "\(route): \(answer.body)\n\(agent.log)")
        }
        #expect(agent.process.isRunning, "\(agent.log)")
        #expect(try await agent.terminate() == .exited(0))
    }

    /// One agent sees both: a session a second agent claimed (fenced), and one whose uploads fail
    /// while the store is down (failing); `status` prints what `/sessions` says.
    @Test(.needsTestServers) func sessionsReportAFencedAndAFailingSession() async throws {
        let server = try await PrivateSeaweedFS()
        let workspace = try Workspace(sessions: ["small", "medium"])
        let runner = try await workspace.cloudRunner(on: try await server.freshBucket(), server: server)
        let first = try runner.watch(workspace.sessions, ["--agent-id", "agent-a"])
        try await first.waitUntilWatching(uploadedAtStart: 2)
        let endpoint = try await first.endpoint()

        // A second process, on a copy of "small" only, claims it (the same agent id: a process of
        // another agent would wait for an acquire); the first finds out at its next upload.
        let other = try Workspace(sessions: ["small"])
        let second = try runner.watch(other.sessions, ["--agent-id", "agent-a"])
        let secondEndpoint = try await second.endpoint()
        try await waitUntil("the second agent never claimed small") {
            try await sessionStatuses(secondEndpoint)["small"]?["state"] as? String == "synced"
        }
        try write(#"{"after":"claim","me":"\#(randomHex(8))"}"#, to: "\(workspace.session("small"))/creds.json")
        try await first.waitForLog("session claimed by another agent")
        #expect(try await second.terminate() == .exited(0))

        try await server.stop()
        try write(#"{"during":"outage","me":"\#(randomHex(8))"}"#, to: "\(workspace.session("medium"))/creds.json")
        try await first.waitForLog("upload failed; will retry")
        let report = try await sessionStatuses(endpoint)
        let small = try #require(report["small"])
        #expect(small["state"] as? String == "fenced")
        #expect(small["lastError"] as? String != nil, "\(small)")
        #expect(small["pendingChanges"] as? Int == 0)
        let medium = try #require(report["medium"])
        #expect(medium["state"] as? String == "failing")
        #expect((medium["consecutiveFailures"] as? Int ?? 0) >= 1)
        #expect((medium["lastError"] as? String)?.contains("unavailable") == true, "\(medium)")
        #expect(medium["pendingChanges"] as? Int == 1)
        #expect((medium["lagSeconds"] as? Double ?? 0) > 0)
        #expect(medium["lastSnapshot"] as? String == "1.1")

        let table = try await runner.run("status", ["--agent", endpoint])
        #expect(table.termination == .exited(0), "\(table.standardError)")
        let rows = Dictionary(uniqueKeysWithValues: table.standardOutput.split(separator: "\n").map {
            let columns = $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            return (columns[0], columns)
        })
        #expect(rows["small"]?[1] == "fenced")
        #expect(rows["medium"]?[1] == "failing")

        try await server.start()
        try await waitUntil("medium never got synced again") { try await sessionStatuses(endpoint)["medium"]?["state"] as? String == "synced" }
        _ = try await first.terminate()
    }

    @Test(.needsTestServers) func statusReadsTheStoreWhenNoAgentAnswers() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = try await workspace.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
        let backup = try await runner.run("backup", ["--sessions-dir", workspace.sessions])
        #expect(backup.termination == .exited(0), "\(backup.standardError)")
        let nobody = "http://127.0.0.1:\(try freePort())"
        let result = try await runner.run("status", ["--agent", nobody, "--json"])
        #expect(result.termination == .exited(0), "\(result.standardError)")
        let report = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        let rows = try #require(report?["sessions"] as? [[String: Any]])
        #expect(rows.count == 1)
        #expect(rows.first?["sessionId"] as? String == "small")
        #expect(rows.first?["state"] as? String == "stored")
        #expect(rows.first?["lastSnapshot"] as? String != nil)
        #expect((report?["source"] as? String)?.hasPrefix("s3://") == true)
        #expect(result.standardError.contains("no agent answered"))
    }

    @Test func aBadListenAddressOrAPortInUseStopsTheAgentWithOneLine() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let store = workspace.logs + "/never-created-store"
        let runner = SyncAgentRunner.local(store: store, logDirectory: workspace.logs)
        let occupied = try FaultyHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        let cases = [
            ("127.0.0.1:\(occupied.port)", "cannot listen on 127.0.0.1:\(occupied.port): address already in use"),
            ("127.0.0.1:99999", "expected HOST:PORT"),
            ("9797", "expected HOST:PORT"),
            ("no-such-host.invalid:9797", "cannot listen on no-such-host.invalid:9797"),
        ]
        for (address, expected) in cases {
            let agent = try runner.watch(workspace.sessions, ["--listen", address])
            let termination = try await agent.process.waitForExit(timeout: .seconds(60))
            #expect(termination != .exited(0), "\(address)")
            #expect(agent.logLines.count == 1, "\(address): \(agent.log)")
            #expect(agent.logLines.first?.contains(expected) == true, "\(address): \(agent.log)")
        }
        #expect(!FileManager.default.fileExists(atPath: store), "the agent touched the store before it could listen")
    }

    /// Clients that open connections and trickle a request, or send an oversized one, hold no
    /// upload up, and the endpoint answers again once their connections time out.
    @Test(.needsTestServers) func slowAndOversizedClientsStallNeitherUploadsNorTheEndpoint() async throws {
        let workspace = try Workspace(sessions: ["small"])
        let runner = try await workspace.cloudRunner(on: try await TestS3Server.seaweedFS.freshBucket())
        let agent = try runner.watch(workspace.sessions)
        try await agent.waitUntilWatching(uploadedAtStart: 1)
        let endpoint = try await agent.endpoint()
        let port = Int(endpoint.split(separator: ":").last!)!

        // More than the connection limit, each stuck in the middle of its headers.
        let stalled = try (0..<48).map { _ in try LoopbackConnection(port: port) }
        for connection in stalled { connection.send("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ") }
        let oversized = try LoopbackConnection(port: port)
        oversized.send("GET /sessions HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 64 * 1024) + "\r\n\r\n")

        try write(#"{"me":"\#(randomHex(8))"}"#, to: "\(workspace.session("small"))/creds.json")
        try await agent.waitForLog("] uploaded", count: 2, timeout: .seconds(30))
        try await waitUntil(timeout: .seconds(30), "the endpoint never answered again") {
            (try? await httpGet("\(endpoint)/healthz"))?.status == 200
        }
        #expect(await oversized.isClosedByPeer(), "the oversized request's connection stayed open")
        #expect(try await agent.terminate() == .exited(0))
    }
}

// MARK: - Helpers

/// Polls /readyz until it answers `status`; returns the body.
@discardableResult
private func waitForReadiness(_ endpoint: String, _ status: Int) async throws -> String {
    var last = ""
    try await waitUntil(timeout: .seconds(90), every: .milliseconds(100), "/readyz never answered \(status); last: \(last)") {
        guard let answer = try? await httpGet("\(endpoint)/readyz") else { return false }
        last = "\(answer.status) \(answer.body)"
        return answer.status == status
    }
    return last
}

private struct MetricFamily {
    struct Sample { var name: String; var labels: [String: String]; var value: Double }
    var type: String
    var samples: [Sample]
}

/// Parses the text with the reference parser, prometheus_client's (from the test venv).
private func prometheusFamilies(_ text: String, in workspace: Workspace) async throws -> [String: MetricFamily] {
    let tools = try #require(ProcessInfo.processInfo.environment["SYNC_AGENT_TEST_TOOLS"])
    let path = workspace.logs + "/metrics-\(randomHex(4)).txt"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    let script = """
        import json, sys
        from prometheus_client.parser import text_string_to_metric_families
        families = {f.name: {"type": f.type, "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
                    for f in text_string_to_metric_families(open(sys.argv[1]).read())}
        print(json.dumps(families))
        """
    let output = try await runProgram("\(tools)/python", ["-c", script, path])
    let parsed = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: [String: Any]])
    return parsed.mapValues { family in
        MetricFamily(
            type: family["type"] as? String ?? "",
            samples: (family["samples"] as? [[String: Any]] ?? []).map {
                MetricFamily.Sample(
                    name: $0["name"] as? String ?? "", labels: $0["labels"] as? [String: String] ?? [:],
                    value: ($0["value"] as? NSNumber)?.doubleValue ?? .nan)
            })
    }
}

/// The scan every agent run gets (see `RunningAgent.deinit`) finds what it must.
@Test func theSecretScanFindsKeysAndRequestSignatures() {
    let secrets = SecretScan.Secrets(values: ["c2VjcmV0LWtleS1ieXRlcw=="], keyFile: nil)
    #expect(SecretScan.leaks(in: "uploaded session=a bytes=12", secrets: secrets).isEmpty)
    #expect(!SecretScan.leaks(in: "key=c2VjcmV0LWtleS1ieXRlcw== oops", secrets: secrets).isEmpty)
    #expect(!SecretScan.leaks(in: "authorization: AWS4-HMAC-SHA256 Credential=AK/2024", secrets: secrets).isEmpty)
    #expect(!SecretScan.leaks(in: "GET /b/k?X-Amz-Signature=abc", secrets: secrets).isEmpty)
}
