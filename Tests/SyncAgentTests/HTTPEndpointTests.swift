import NIOHTTP1
import Testing
import TestSupport

@testable import SyncAgent

@Suite("HTTP endpoint: connection limits")
struct HTTPEndpointTests {
    /// Answers every request with `body`, `delay` after it came in.
    struct SlowRoutes: EndpointRoutes {
        let delay: Duration
        let body: [UInt8]

        func respond(to method: HTTPMethod, path: String) async -> EndpointResponse {
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
        let serving = Task { try await endpoint.serve(routes) }
        defer { serving.cancel() }
        let port = try #require(endpoint.boundAddress.split(separator: ":").last.flatMap { Int($0) })

        let connection = try LoopbackConnection(port: port)
        connection.send("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        // Lifetime and grace end 7 s after the endpoint takes the connection; the wait is longer,
        // as the endpoint's tasks share this process's two cooperative threads with every other
        // test, and a busy suite was seen to hold them for more than 15 s.
        let received = try #require(
            await connection.receiveUntilClosed(timeout: .seconds(60)), "the connection stayed open past its lifetime")
        let response = String(decoding: received, as: UTF8.self)
        #expect(response.hasPrefix("HTTP/1.1 200 OK"))
        #expect(response.hasSuffix("\r\n\r\n" + String(repeating: "x", count: body.count)), "\(received.count) bytes received")
    }
}
