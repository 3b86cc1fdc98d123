import Foundation
import NIOHTTP1
import Testing
import SystemSupport
import TestSupport

@testable import SyncAgent

/// The endpoint stopping while clients connect and ask: every connection gets its whole answer or
/// a closed connection, and the process goes on (a connection NIO accepted but `serve` had not
/// taken yet used to trap in NIO: "Deinited NIOAsyncWriter without calling finish()").
@Suite("HTTP endpoint: stopping")
struct EndpointStopTests {
    /// Answers every request with `body`, `delay` after it came in.
    struct Routes: EndpointRoutes {
        var delay: Duration = .zero
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 4096)

        func respond(to request: EndpointRequest) async -> EndpointResponse {
            if delay > .zero { try? await Task.sleep(for: delay) }
            return EndpointResponse(status: .ok, contentType: "text/plain", body: body)
        }
    }

    static let request = "GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"

    /// Nothing (closed unanswered) or one whole response.
    static func isWholeAnswerOrNothing(_ received: [UInt8], body: [UInt8]) -> Bool {
        received.isEmpty || (received.starts(with: Array("HTTP/1.1 200 OK".utf8)) && received.suffix(body.count + 4) == [13, 10, 13, 10] + body)
    }

    static func serve(_ endpoint: HTTPEndpoint, _ routes: Routes) -> Task<Void, any Error> {
        // Started on a thread of its own: the serving task's first steps would otherwise wait for the
        // cooperative pool, which other tests of a full run can hold for longer than a test waits.
        Task(executorPreference: try! ThreadExecutor(label: "endpoint-\(endpoint.transport)")) { try await endpoint.serve(routes) }
    }

    @Test func stoppingWhileClientsConnectClosesEveryConnectionCleanly() async throws {
        let routes = Routes()
        var answered = 0
        for round in 0..<20 {
            let directory = try TemporaryDirectory()
            let tcp = try await HTTPEndpoint.bind(try ListenAddress(parsing: "127.0.0.1:0"))
            let socket = try await HTTPEndpoint.bind(ControlSocket(path: directory.file("control.sock"), access: .owner))
            let servingTCP = Self.serve(tcp, routes)
            let servingSocket = Self.serve(socket, routes)
            let port = try #require(tcp.boundAddress.split(separator: ":").last.flatMap { Int($0) })

            // More than the endpoint takes at once, sent as fast as the kernel accepts them, and
            // the endpoint stops while they arrive: some are answered, some accepted by NIO but
            // not yet taken by `serve`, some still in the kernel's backlog.
            var answers: [Task<[UInt8]?, Never>] = []
            for index in 0..<40 {
                if index == 20 {
                    // In the first round the first request is answered before the stop, so the
                    // answer path is exercised however loaded the machine is.
                    if round == 0, let first = answers.first { _ = await first.value }
                    // As the agent stops (graceful shutdown), or cancelled (the service group failed).
                    if round.isMultiple(of: 2) {
                        tcp.stop()
                        socket.stop()
                    } else {
                        servingTCP.cancel()
                        servingSocket.cancel()
                    }
                }
                if let connection = try? LoopbackConnection(port: port) {
                    connection.send(Self.request)
                    answers.append(Task { await connection.receiveUntilClosed() })
                }
                if let connection = UnixConnection(path: socket.boundAddress) {
                    connection.send(Self.request)
                    answers.append(Task { await connection.receiveUntilClosed() })
                }
            }
            try await servingTCP.value
            try await servingSocket.value
            for answer in answers {
                let received = try #require(await answer.value, "round \(round): a connection stayed open after the endpoint stopped")
                #expect(Self.isWholeAnswerOrNothing(received, body: routes.body), "round \(round): \(String(decoding: received, as: UTF8.self))")
                if !received.isEmpty { answered += 1 }
            }
            #expect(!FileManager.default.fileExists(atPath: socket.boundAddress), "round \(round)")
        }
        #expect(answered > 0, "no request was answered before the endpoint stopped")
    }

    /// A response being made when the endpoint stops is finished and sent whole; the endpoint
    /// stops taking connections at once.
    @Test func aResponseUnderWayWhenTheEndpointStopsIsSentWhole() async throws {
        let routes = Routes(delay: .seconds(2))
        let endpoint = try await HTTPEndpoint.bind(try ListenAddress(parsing: "127.0.0.1:0"))
        let serving = Self.serve(endpoint, routes)
        let port = try #require(endpoint.boundAddress.split(separator: ":").last.flatMap { Int($0) })
        let connection = try LoopbackConnection(port: port)
        connection.send(Self.request)
        let answer = Task { await connection.receiveUntilClosed() }
        try await Task.sleep(for: .milliseconds(500))
        endpoint.stop()
        let received = try #require(await answer.value, "the connection stayed open")
        #expect(received.starts(with: Array("HTTP/1.1 200 OK".utf8)), "\(String(decoding: received, as: UTF8.self))")
        #expect(Self.isWholeAnswerOrNothing(received, body: routes.body), "\(received.count) bytes received")
        try await serving.value
        #expect(!isListening(port))
    }
}

/// The real agent stopping (SIGTERM) while a worker calls it on the control socket and a scraper
/// on TCP: each call gets its whole answer or a closed connection, and the agent ends as always,
/// with its shutdown report and exit code.
@Suite("watch: stopping while called")
struct StoppingWhileCalledTests {
    /// One request on a connection of its own, as the worker and the scraper send them.
    enum Call: CaseIterable {
        case sessions, metrics, flush, release

        var request: String {
            switch self {
            case .sessions: "GET /sessions HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
            case .metrics: "GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
            case .flush: "POST /sessions/small/flush HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            case .release: "POST /sessions/small/release HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
        }

        /// The control routes are on the socket; the read routes on both, asked on TCP here.
        var onSocket: Bool { self == .flush || self == .release }
    }

    /// Nothing (the connection closed unanswered) or a response whose body is as long as its
    /// Content-Length says.
    static func isWholeResponseOrNothing(_ received: [UInt8]) -> Bool {
        guard !received.isEmpty else { return true }
        let text = String(decoding: received, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 "), let end = text.range(of: "\r\n\r\n") else { return false }
        let length = text[..<end.lowerBound].split(separator: "\r\n")
            .first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
        return length == text.utf8.count - text[..<end.upperBound].utf8.count
    }

    /// Sends `call` over and over, each on a new connection, until the agent no longer accepts
    /// one; returns what each connection received (nil: it stayed open 15 s).
    static func callRepeatedly(_ call: Call, port: Int, socket: String, agent: RunningAgent) async -> [(call: Call, sent: ContinuousClock.Instant, received: [UInt8]?)] {
        var received: [(call: Call, sent: ContinuousClock.Instant, received: [UInt8]?)] = []
        while agent.process.exitStatus == nil {
            if call.onSocket {
                guard let connection = UnixConnection(path: socket) else { break }
                connection.send(call.request)
                let sent = ContinuousClock.now
                received.append((call, sent, await connection.receiveUntilClosed()))
            } else {
                guard let connection = try? LoopbackConnection(port: port) else { break }
                connection.send(call.request)
                let sent = ContinuousClock.now
                received.append((call, sent, await connection.receiveUntilClosed()))
            }
        }
        return received
    }

    @Test func sigtermWhileTheWorkerCallsEndsWithTheShutdownReport() async throws {
        for round in 0..<20 {
            let workspace = try Workspace(sessions: ["small"])
            let runner = SyncAgentRunner.local(store: workspace.directory.file("store"), logDirectory: workspace.logs)
            let socket = workspace.directory.file("control.sock")
            let agent = try runner.watch(workspace.sessions, ["--control-socket", socket])
            try await agent.waitUntilWatching(uploadedAtStart: 1)
            let endpoint = try await agent.endpoint()
            let port = try #require(endpoint.split(separator: ":").last.flatMap { Int($0) })

            let start = ContinuousClock.now
            let callers = (0..<3).flatMap { _ in Call.allCases }.map { call in
                Task { await Self.callRepeatedly(call, port: port, socket: socket, agent: agent) }
            }
            // Calls under way, some of them answered, when the agent is told to stop.
            try await Task.sleep(for: .milliseconds(Int.random(in: 100...600)))
            let termination = try await agent.terminate()
            var answered = 0
            for caller in callers {
                for (call, sent, received) in await caller.value {
                    let bytes = try #require(received, "round \(round): a connection stayed open (\(call), sent \(sent - start) after the first)\n\(agent.log)")
                    #expect(Self.isWholeResponseOrNothing(bytes), "round \(round): \(String(decoding: bytes, as: UTF8.self))")
                    if !bytes.isEmpty { answered += 1 }
                }
            }
            #expect(termination == .exited(0), "round \(round)\n\(agent.log)")
            #expect(agent.logLines.last?.contains("stopped; every change uploaded") == true, "round \(round)\n\(agent.log)")
            #expect(answered > 0, "round \(round): no call was answered")
        }
    }
}
