import SessionCrypto
import Foundation
import Logging
import SyncEngine
import TestSupport
import Testing

/// The multi-session restore as `restore` and a worker acquiring sessions use it, on the
/// filesystem store: which sessions it brings back, what it reports, and that a restore point
/// some session lacks stops it before any directory changes.
@Suite("Sessions restore")
struct SessionsRestoreTests {
    let workspace: TemporaryDirectory
    let sources: RestoreSources
    let alive = SessionID("alive")!
    let loggedOut = SessionID("logged-out")!
    let unknown = SessionID("unknown")!

    /// `alive` with one snapshot, `logged-out` tombstoned after one.
    init() async throws {
        workspace = try TemporaryDirectory()
        let store = SessionStore(store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
        sources = RestoreSources(primary: store, mirror: nil)
        try FileManager.default.createDirectory(atPath: workspace.file("sessions"), withIntermediateDirectories: true)
        for session in [alive, loggedOut] {
            let directory = workspace.file("sessions/\(session.rawValue)")
            try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory)
            let replicator = SessionReplicator(
                session: session, directory: directory, sessionStore: store, owner: "test",
                conditionalWrites: true, policy: CompactionPolicy(), logger: Logger(label: "test"))
            _ = try await replicator.sync()
            if session == loggedOut { try await replicator.tombstone() }
        }
    }

    func restore(_ request: RestoreRequest, into root: String) async throws -> RestoreResult {
        let restore = SessionsRestore(sources: sources, root: root, request: request)
        return try await restore.run(try await restore.plan()) { _ in }
    }

    @Test func allLeavesOutWhatTheStoreCannotBringBack() async throws {
        let root = workspace.file("all")
        let result = try await restore(RestoreRequest(sessions: .all), into: root)
        #expect(result.report.recoveredSessions.map(\.sessionId) == ["alive"])
        #expect(result.report.recoveredSessions.map(\.status) == ["restored"])
        #expect(result.report.failedSessions.isEmpty)
        #expect(result.leftOut.map(\.session) == [loggedOut])
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).filter { !$0.hasPrefix(".") } == ["alive"])
    }

    @Test func namedSessionsTheStoreCannotBringBackFail() async throws {
        let result = try await restore(RestoreRequest(sessions: .named([alive, loggedOut, unknown])), into: workspace.file("named"))
        #expect(result.report.recoveredSessions.map(\.sessionId) == ["alive"])
        #expect(result.report.failedSessions.map(\.reason) == ["logged_out", "not_found"])
        #expect(result.leftOut.isEmpty)
    }

    @Test func aPointSomeSessionLacksStopsThePlanBeforeAnythingIsWritten() async throws {
        let root = workspace.file("too-early")
        let restore = SessionsRestore(
            sources: sources, root: root, request: RestoreRequest(sessions: .named([alive]), point: .time(Date(timeIntervalSince1970: 0))))
        await #expect(throws: RestoreRequestError.self) { try await restore.plan() }
        #expect(!FileManager.default.fileExists(atPath: root))
    }

    @Test func aDryRunWritesNothing() async throws {
        let root = workspace.file("dry")
        let result = try await restore(RestoreRequest(sessions: .all, dryRun: true), into: root)
        #expect(result.report.recoveredSessions.map(\.status) == ["would_restore"])
        #expect(!FileManager.default.fileExists(atPath: root))
    }
}
