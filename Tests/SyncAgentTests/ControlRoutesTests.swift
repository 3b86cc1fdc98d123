import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Testing
import SystemSupport
import TestSupport

@testable import SyncAgent
@testable import SyncEngine

/// The worker's control routes against a stub `SessionControl`: what each answers, and that a
/// refused request never reaches the engine.
@Suite("Control routes")
struct ControlRoutesTests {
    /// Records every call; answers with `failure` when one is set.
    actor RecordingControl: SessionControl {
        private(set) var calls: [String] = []
        var failure: SessionControlError?

        /// How long a flush takes.
        var delay = Duration.zero

        func fail(with failure: SessionControlError?) { self.failure = failure }
        func take(_ delay: Duration) { self.delay = delay }

        private func answer(_ call: String, _ session: SessionID) async throws(SessionControlError) -> CommittedSnapshot {
            calls.append(call)
            try? await Task.sleep(for: delay)
            if let failure { throw failure }
            return CommittedSnapshot(sessionId: session.description, snapshot: "7.1", committedAt: Date(timeIntervalSince1970: 1_800_000_000))
        }

        func flush(_ session: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot {
            try await answer("flush \(session) \(timeout)", session)
        }

        func release(_ session: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot {
            try await answer("release \(session) \(timeout)", session)
        }

        func releaseAll(timeout: Duration) -> ReleaseReport {
            calls.append("releaseAll \(timeout)")
            var report = ReleaseReport()
            report.preservedSessions = [CommittedSnapshot(sessionId: "a", snapshot: "2.1", committedAt: nil)]
            return report
        }

        func acquire(_ session: SessionID, options: AcquireOptions) throws(SessionControlError) -> RestoreReport {
            calls.append("acquire \(session) \(options.waitRelease) \(options.takeOver)")
            if let failure { throw failure }
            var report = RestoreReport()
            report.record(RestoreOutcome(session: session, status: .restored, snapshot: nil, files: 3, bytes: 120))
            return report
        }

        func logout(_ session: SessionID, timeout: Duration) async throws(SessionControlError) -> CommittedSnapshot {
            try await answer("logout \(session) \(timeout)", session)
        }
    }

    /// The control routes alone; anything else is 404, as the read routes answer it.
    struct ControlOnly: EndpointRoutes {
        let routes: ControlRoutes
        func respond(to request: EndpointRequest) async -> EndpointResponse {
            await routes.respond(to: request) ?? .text(.notFound, "no route")
        }
        func allowance(for request: EndpointRequest) -> TimeAmount { routes.allowance(for: request) }
    }

    static let token = "0123456789abcdef0123456789abcdef"

    /// An agent's endpoint on TCP (with `token`, or none) and on a control socket, serving the
    /// stub, for the time `body` runs.
    static func withEndpoints(
        token: String? = nil, limits: HTTPEndpoint.Limits = HTTPEndpoint.Limits(), _ body: (_ control: RecordingControl, _ tcp: EndpointClient, _ socket: EndpointClient) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        let control = RecordingControl()
        var controlRoutes = ControlRoutes(
            control: control, token: token.map { ControlToken(bytes: Array($0.utf8)) },
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        // The recording engine on a thread of its own too: on Swift's pool, a full run's other tests
        // held its calls past the requests' lifetime (CI: "closed the connection before answering").
        controlRoutes.engineExecutor = try ThreadExecutor(label: "control-engine")
        let routes = ControlOnly(routes: controlRoutes)
        let tcp = try await HTTPEndpoint.bind(try ListenAddress(parsing: "127.0.0.1:0"))
        let socket = try await HTTPEndpoint.bind(ControlSocket(path: directory.file("control.sock"), access: .owner), limits: limits)
        // Started on a thread of its own: the serving task's first steps would otherwise wait for the
        // cooperative pool, which other tests of a full run can hold for longer than a test waits.
        let serving = Task(executorPreference: try ThreadExecutor(label: "control-endpoint")) {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await tcp.serve(routes) }
                group.addTask { try await socket.serve(routes) }
            }
        }
        defer { serving.cancel() }
        var tcpClient = EndpointClient(baseURL: "http://\(tcp.boundAddress)")
        tcpClient.timeout = .seconds(150)
        var socketClient = EndpointClient(.socket(socket.boundAddress))
        socketClient.timeout = .seconds(150)
        try await body(control, tcpClient, socketClient)
    }

    struct Answer {
        let status: HTTPResponseStatus
        let json: [String: Any]

        init(_ answer: (status: HTTPResponseStatus, body: [UInt8])) throws {
            status = answer.status
            json = try JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any] ?? [:]
        }

        var reason: String? { json["reason"] as? String }
    }

    @Test func theSocketReachesEveryRouteWithItsParameters() async throws {
        try await Self.withEndpoints { control, _, socket in
            let flush = try Answer(await socket.send(.POST, "/sessions/alice/flush"))
            #expect(flush.status == .ok)
            #expect(flush.json["sessionId"] as? String == "alice")
            #expect(flush.json["snapshot"] as? String == "7.1")
            #expect(flush.json["committedAt"] as? String == "2027-01-15T08:00:00Z")
            #expect(try Answer(await socket.send(.POST, "/sessions/alice/release?timeout=5s")).status == .ok)
            #expect(try Answer(await socket.send(.POST, "/sessions/alice/logout", body: Array(#"{"timeout": 1500}"#.utf8))).status == .ok)
            let acquire = try Answer(await socket.send(.POST, "/sessions/bob%40x/acquire?waitRelease=0&takeOver=true"))
            #expect(acquire.status == .ok)
            let recovered = try #require(acquire.json["recoveredSessions"] as? [[String: Any]])
            #expect(recovered.count == 1 && recovered.first?["sessionId"] as? String == "bob@x")
            _ = try await socket.send(.POST, "/sessions/carol/acquire", body: Array(#"{"waitRelease": "2s"}"#.utf8))
            let all = try Answer(await socket.send(.POST, "/sessions/release"))
            #expect(all.status == .ok)
            #expect((all.json["preservedSessions"] as? [[String: Any]])?.first?["snapshot"] as? String == "2.1")
            #expect(await control.calls == [
                "flush alice 30.0 seconds", "release alice 5.0 seconds", "logout alice 1.5 seconds",
                "acquire bob@x 0.0 seconds true", "acquire carol 2.0 seconds false", "releaseAll 30.0 seconds",
            ])
        }
    }

    /// A control call waits on purpose (for the store, for a holder): its connection outlives
    /// the lifetime of a read route's by the call's own bound, and the answer arrives.
    @Test func aCallLongerThanAConnectionsLifetimeIsAnsweredWithinItsTimeout() async throws {
        var limits = HTTPEndpoint.Limits()
        limits.connectionLifetime = .seconds(5)
        limits.responseGrace = .seconds(5)
        try await Self.withEndpoints(limits: limits) { control, _, socket in
            await control.take(.seconds(15))
            // The call's own bound starts when the route has the request. A loaded suite can hold
            // this process's threads past the lifetime before that, and the connection is then
            // rightly closed as a read route's would be: such an attempt reached no route, and
            // is made again (each time on a fresh connection).
            for attempt in 1...3 {
                do {
                    let answer = try Answer(await socket.send(.POST, "/sessions/alice/flush?timeout=120s"))
                    #expect(answer.status == .ok)
                    #expect(await control.calls == ["flush alice 120.0 seconds"])
                    return
                } catch {
                    guard await control.calls.isEmpty, attempt < 3 else { throw error }
                }
            }
        }
    }

    /// A name that is not UTF-8 is addressed as it prints: "~" and its bytes' hex.
    @Test func aNameThatIsNotUTF8IsAddressedByItsHexSpelling() async throws {
        try await Self.withEndpoints { control, _, socket in
            let answer = try Answer(await socket.send(.POST, "/sessions/~ff61/flush"))
            #expect(answer.status == .ok)
            #expect(answer.json["sessionId"] as? String == "~ff61")
            let refused = try Answer(await socket.send(.POST, "/sessions/%FFa/flush"))
            #expect(refused.status == .badRequest && refused.reason == "invalid_session_id")
            #expect(await control.calls == ["flush ~ff61 30.0 seconds"])
        }
    }

    @Test func tcpWithoutATokenAnswers403AndNeverCallsTheEngine() async throws {
        try await Self.withEndpoints { control, tcp, _ in
            for action in ["flush", "release", "acquire", "logout"] {
                let answer = try Answer(await tcp.send(.POST, "/sessions/alice/\(action)"))
                #expect(answer.status == .forbidden && answer.reason == "control_off", "\(action)")
            }
            #expect(try Answer(await tcp.send(.POST, "/sessions/release")).status == .forbidden)
            #expect(await control.calls.isEmpty)
        }
    }

    @Test func tcpTakesTheTokenAndNothingElse() async throws {
        try await Self.withEndpoints(token: Self.token) { control, tcp, _ in
            let missing = try await tcp.send(.POST, "/sessions/alice/flush")
            #expect(missing.status == .unauthorized)
            for wrong in ["x", String(Self.token.dropLast()), Self.token + "0", Self.token.uppercased()] {
                var client = tcp
                client.token = wrong
                #expect(try Answer(await client.send(.POST, "/sessions/alice/flush")).reason == "unauthorized")
            }
            #expect(await control.calls.isEmpty)
            var client = tcp
            client.token = Self.token
            #expect(try Answer(await client.send(.POST, "/sessions/alice/flush")).status == .ok)
            #expect(await control.calls == ["flush alice 30.0 seconds"])
        }
    }

    /// Every refusal of bad input: its status and reason, and no call to the engine.
    @Test(arguments: [
        (HTTPMethod.GET, "/sessions/alice/flush", "", HTTPResponseStatus.methodNotAllowed, "method_not_allowed"),
        (.PUT, "/sessions/release", "", .methodNotAllowed, "method_not_allowed"),
        (.POST, "/sessions/.hidden/flush", "", .badRequest, "invalid_session_id"),
        (.POST, "/sessions/a%2Fb/release", "", .badRequest, "invalid_session_id"),
        (.POST, "/sessions/a%00b/release", "", .badRequest, "invalid_session_id"),
        (.POST, "/sessions/a%zz/flush", "", .badRequest, "invalid_session_id"),
        (.POST, "/sessions/~FF/flush", "", .badRequest, "invalid_session_id"),
        (.POST, "/sessions/\(String(repeating: "a", count: 256))/flush", "", .badRequest, "invalid_session_id"),
        (.POST, "/sessions/alice/acquire?waitRelease=forever", "", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/acquire?waitRelease=-1s", "", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/acquire?waitRelease=11m", "", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/acquire?takeOver=maybe", "", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/flush?timeout=0", "", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/flush?takeOver=true", "", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/flush", "{\"timeout\": [1]}", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/flush", "not json", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/flush?timeout=1s", "{\"timeout\": 1000}", .badRequest, "bad_parameter"),
        (.POST, "/sessions/alice/flush", String(repeating: " ", count: 1000) + String(repeating: "x", count: 1100), .payloadTooLarge, "body_too_large"),
    ])
    func badInputIsRefusedBeforeTheEngine(
        method: HTTPMethod, path: String, body: String, status: HTTPResponseStatus, reason: String
    ) async throws {
        try await Self.withEndpoints { control, _, socket in
            let answer = try Answer(await socket.send(method, path, body: Array(body.utf8)))
            #expect(answer.status == status)
            #expect(answer.reason == reason)
            if status == .methodNotAllowed { #expect(answer.json["error"] as? String != nil) }
            #expect(await control.calls.isEmpty)
        }
    }

    @Test func aWrongMethodNamesTheAllowedOne() async throws {
        try await Self.withEndpoints { _, _, socket in
            let connection = try #require(UnixConnection(path: socket.socketPath))
            connection.send("DELETE /sessions/alice/logout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            let response = String(decoding: try #require(await connection.receiveUntilClosed()), as: UTF8.self)
            #expect(response.hasPrefix("HTTP/1.1 405"))
            #expect(response.lowercased().contains("\r\nallow: post\r\n"))
        }
    }

    @Test func otherPathsAreNotControlRoutes() {
        for path in ["/sessions", "/sessions/", "/sessions/alice", "/sessions/alice/flush/x", "/sessions//flush", "/sessions/alice/releaseAll", "/healthz"] {
            #expect(ControlRoutes.route(path) == nil, "\(path)")
        }
        #expect(ControlRoutes.route("/sessions/release")?.action == .releaseAll)
        #expect(ControlRoutes.route("/sessions/release/release")?.action == .release)
    }

    /// The engine's refusals, each with its status and its reason word.
    @Test(arguments: [
        (SessionControlError.Reason.unknownSession, HTTPResponseStatus.notFound),
        (.notCommitted, .gatewayTimeout), (.fenced, .conflict), (.heldElsewhere, .conflict), (.released, .conflict),
        (.restoreFailed, .internalServerError),
    ])
    func theEnginesRefusalsKeepTheirReason(reason: SessionControlError.Reason, status: HTTPResponseStatus) async throws {
        try await Self.withEndpoints { control, _, socket in
            await control.fail(with: SessionControlError(reason, "because \(reason.rawValue)"))
            for action in ["flush", "release", "acquire", "logout"] {
                let answer = try Answer(await socket.send(.POST, "/sessions/alice/\(action)"))
                #expect(answer.status == status, "\(action)")
                #expect(answer.reason == reason.rawValue)
                #expect(answer.json["error"] as? String == "because \(reason.rawValue)")
            }
        }
    }
}

extension EndpointClient {
    var socketPath: String {
        guard case .socket(let path) = target else { return "" }
        return path
    }
}

/// A raw connection to a Unix socket, for requests the client would not send.
final class UnixConnection: Sendable {
    private let descriptor: Int32

    init?(path: String) {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return nil }
        guard ControlSocketTests.connect(descriptor, path) else {
            close(descriptor)
            return nil
        }
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    func send(_ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Everything until the peer closes, read on a thread of its own; nil after 15 s.
    func receiveUntilClosed() async -> [UInt8]? {
        await withCheckedContinuation { continuation in
            Thread {
                var timeout = timeval(tv_sec: 15, tv_usec: 0)
                setsockopt(self.descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = buffer.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, $0.count, 0) }
                    if count == 0 { return continuation.resume(returning: received) }
                    if count < 0 { return continuation.resume(returning: errno == ECONNRESET ? received : nil) }
                    received += buffer[0..<count]
                }
            }.start()
        }
    }
}
