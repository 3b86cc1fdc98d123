import NIOHTTP1
import Testing
import SystemSupport
import TestSupport

@testable import SyncAgent

@Suite("HTTP endpoint: connection limits")
struct HTTPEndpointTests {
    /// Answers every request with `body`, `delay` after it came in.
    struct SlowRoutes: EndpointRoutes {
        let delay: Duration
        let body: [UInt8]

        func respond(to request: EndpointRequest) async -> EndpointResponse {
            try? await Task.sleep(for: delay)
            return EndpointResponse(status: .ok, contentType: "text/plain", body: body)
        }
    }

    /// A keep-alive client (a Prometheus scraper) whose request is being answered when the
    /// connection's lifetime runs out gets the whole answer, then the connection closes.
    @Test func aResponseUnderWayWhenTheLifetimeRunsOutIsFinishedFirst() async throws {
        var limits = HTTPEndpoint.Limits()
        limits.connectionLifetime = .seconds(2)
        let endpoint = try await HTTPEndpoint.bind(try ListenAddress(parsing: "127.0.0.1:0"), limits: limits)
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: 256 * 1024)
        // The answer is still being made when the lifetime runs out (the request itself, sent
        // at once, is parsed well within it).
        let routes = SlowRoutes(delay: .milliseconds(2500), body: body)
        // The endpoint answers on a thread of its own (the lifetime is timed, and other tests may
        // hold the cooperative threads for seconds), and its serving task starts on one too.
        let serving = Task(executorPreference: try ThreadExecutor(label: "endpoint-under-test")) { try await endpoint.serve(routes) }
        defer { serving.cancel() }
        let port = try #require(endpoint.boundAddress.split(separator: ":").last.flatMap { Int($0) })

        let connection = try LoopbackConnection(port: port)
        connection.send("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        let received = try #require(await connection.receiveUntilClosed(), "the connection stayed open past its lifetime")
        let response = String(decoding: received, as: UTF8.self)
        #expect(response.hasPrefix("HTTP/1.1 200 OK"))
        #expect(response.hasSuffix("\r\n\r\n" + String(repeating: "x", count: body.count)), "\(received.count) bytes received")
    }
}
