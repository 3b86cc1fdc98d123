import Foundation
import Glibc
import NIOHTTP1
import TestSupport
import Testing

@testable import SyncAgent

/// Issue 14's planned-moves proof: two agents (A, B) on two session roots and one SeaweedFS
/// store, a writer rewriting files of the session being moved up to the moment of the move, and
/// the move a worker makes through the control socket: the writer stops, `release` on the
/// holder, `acquire` on the other, the writer goes on in the other's root. In the same run, the
/// naive move (no release: a restore right after the writer's last write) is counted.
@Suite("Planned moves through the control socket")
struct PlannedMoveTests {
    static let sessionNames = ["m1", "m2", "m3", "m4"]
    static let filesPerSession = 20
    static let plannedMoves = 100
    /// A naive move before every other planned one.
    static let naiveEvery = 2

    /// One agent of the two: its root, its control socket, the process.
    struct Side {
        let name: String
        let workspace: Workspace
        let socket: String
        let agent: RunningAgent
        var client: EndpointClient {
            var client = EndpointClient(.socket(socket))
            client.timeout = .seconds(120)
            return client
        }

        func directory(_ session: String) -> String { workspace.session(session) }
        func uploads(of session: String) -> Int { agent.uploads.filter { $0.session == session }.count }
    }

    /// The writer: rewrites files as Baileys does and remembers what each file last got.
    struct Writer {
        var expected: [String: [String: [UInt8]]] = [:]
        var random = SplitMix64(seed: 14)
        var written = 0

        /// A burst of 1 to 12 writes to `session` in `directory`, 0 to 20 ms apart; returns the
        /// instant of the last one's close.
        mutating func burst(_ session: String, in directory: String) async throws -> ContinuousClock.Instant {
            var last = ContinuousClock.now
            for index in 0..<Int.random(in: 1...12, using: &random) {
                // The pause goes before a write, never after the last: the move follows it at once.
                let pause = Int.random(in: 0...20, using: &random)
                if index > 0 && pause > 10 { try await Task.sleep(for: .milliseconds(pause - 10)) }
                let name = String(format: "f%02d", Int.random(in: 0..<PlannedMoveTests.filesPerSession, using: &random))
                let content = Array("\(session) write \(written) \(randomHex(Int.random(in: 4...200, using: &random)))".utf8)
                try write(bytes: content, to: "\(directory)/\(name)")
                last = .now
                expected[session, default: [:]][name] = content
                written += 1
            }
            return last
        }

        /// The writes of `session` that `directory` lacks (or holds otherwise).
        func missing(_ session: String, in directory: String) throws -> [String] {
            let tree = (try? directoryTree(directory)) ?? [:]
            return (expected[session] ?? [:]).filter { tree[$0.key] != $0.value }.map(\.key).sorted()
        }
    }

    static func startSide(_ name: String, sessions: [String], runner: SyncAgentRunner) async throws -> Side {
        let workspace = try Workspace(sessions: [])
        for session in sessions {
            try FileManager.default.createDirectory(atPath: workspace.session(session), withIntermediateDirectories: false)
            for index in 0..<filesPerSession {
                try write("\(session) initial \(index)", to: workspace.session(session) + String(format: "/f%02d", index))
            }
        }
        try AgentUser.handOver(workspace.sessions)
        let socket = workspace.directory.file("control.sock")
        let agent = try runner.watch(workspace.sessions, ["--agent-id", "agent-\(name)", "--control-socket", socket])
        try await agent.waitUntilWatching(uploadedAtStart: sessions.count)
        return Side(name: name, workspace: workspace, socket: socket, agent: agent)
    }

    @Test(.needsTestServers, .timeLimit(.minutes(20)))
    func plannedMovesLoseNoWriteAndTheReleaserCommitsNothingAfter() async throws {
        let bucket = try await TestS3Server.seaweedFS.freshBucket()
        let setup = try Workspace(sessions: [])
        let runner = try await setup.cloudRunner(on: bucket)
        var sides = [try await Self.startSide("a", sessions: Self.sessionNames, runner: runner)]
        sides.append(try await Self.startSide("b", sessions: [], runner: runner))
        var writer = Writer()
        for session in Self.sessionNames {
            for index in 0..<Self.filesPerSession {
                writer.expected[session, default: [:]][String(format: "f%02d", index)] = Array("\(session) initial \(index)".utf8)
            }
        }
        var holder = Dictionary(uniqueKeysWithValues: Self.sessionNames.map { ($0, 0) })
        // Uploads of a session by the side that released it, counted at the release.
        var uploadsAtRelease: [String: Int] = [:]
        var plannedLost = 0
        var naiveMoves = 0
        var naiveLost = 0
        var committedAfterRelease: [String] = []
        var largestGap = Duration.zero
        var gapsOver5ms = 0
        var random = SplitMix64(seed: 1414)
        let naive = try Workspace(sessions: [])
        let started = ContinuousClock.now

        for move in 0..<Self.plannedMoves {
            let session = Self.sessionNames.randomElement(using: &random)!
            let from = holder[session]!
            let to = 1 - from
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...150, using: &random)))

            if move % Self.naiveEvery == 0 {
                // The naive move: a restore right after the last write, with no release.
                _ = try await writer.burst(session, in: sides[from].directory(session))
                let restored = try await runner.run(
                    "restore", ["--sessions-dir", naive.sessions, "--no-acquire", "--agent-id", "naive", session])
                #expect(restored.termination == .exited(0), "\(restored.standardError)")
                naiveMoves += 1
                if try !writer.missing(session, in: naive.session(session)).isEmpty { naiveLost += 1 }
            }

            // The planned move.
            let lastWrite = try await writer.burst(session, in: sides[from].directory(session))
            let path = "/sessions/\(session)"
            let gap = ContinuousClock.now - lastWrite
            largestGap = max(largestGap, gap)
            if gap >= .milliseconds(5) { gapsOver5ms += 1 }
            let released = try await sides[from].client.send(.POST, path + "/release")
            #expect(released.status == .ok, "move \(move): release \(String(decoding: released.body, as: UTF8.self))")
            let key = "\(sides[from].name)/\(session)"
            uploadsAtRelease[key] = sides[from].uploads(of: session)

            let otherKey = "\(sides[to].name)/\(session)"
            if let count = uploadsAtRelease[otherKey], sides[to].uploads(of: session) != count {
                committedAfterRelease.append("\(otherKey) before move \(move)")
            }
            let acquired = try await sides[to].client.send(.POST, path + "/acquire?waitRelease=30s")
            #expect(acquired.status == .ok, "move \(move): acquire \(String(decoding: acquired.body, as: UTF8.self))")
            let missing = try writer.missing(session, in: sides[to].directory(session))
            if !missing.isEmpty {
                plannedLost += 1
                Issue.record("move \(move) of \(session) to \(sides[to].name) lost \(missing)")
            }
            uploadsAtRelease[otherKey] = nil
            holder[session] = to
        }
        // Give a releaser's late upload, if it made one, time to show in its log.
        try await Task.sleep(for: .seconds(2))
        for (key, count) in uploadsAtRelease {
            let parts = key.split(separator: "/").map(String.init)
            let side = sides.first { $0.name == parts[0] }!
            if side.uploads(of: parts[1]) != count { committedAfterRelease.append("\(key) at the end") }
        }
        for side in sides { #expect(try await side.agent.terminate() == .exited(0), "\(side.agent.log)") }

        print("""
            planned moves: \(Self.plannedMoves), moves that lost writes: \(plannedLost); \
            naive moves: \(naiveMoves), moves that lost writes: \(naiveLost); \
            \(writer.written) writes; largest gap from the last write to the release call: \(largestGap) \
            (\(gapsOver5ms) of 5 ms or more); \
            \(ContinuousClock.now - started) in all
            """)
        #expect(plannedLost == 0)
        #expect(committedAfterRelease.isEmpty, "\(committedAfterRelease)")
    }
}
