import Foundation
@testable import S3Client
import TestSupport
import Testing

/// The loop that runs a client's transfers owns curl handles: none is lost, whether a request is
/// refused by curl, finishes, or is cut off by `shutdown`. An easy handle is freed with its
/// `CurlEasyHandle`, which the loop and the transfers hold: once the loop is shut down and let
/// go, it is gone, its thread ended and its multi handle freed, when nothing holds a handle.
@Suite("curl multi loop: handle ownership")
struct CurlMultiLoopTests {
    private func get(_ url: String) -> CurlRequest {
        CurlRequest(
            method: "GET", url: url, headers: [], body: .empty, destination: .memory, requestedRange: nil,
            digestsWholeObjectBody: false, timeouts: S3Configuration.Timeouts(), tls: S3Configuration.TLS())
    }

    /// Shuts the loop down, lets go of it, and waits for it to be gone: its thread holds it
    /// until it has stopped.
    private func shutDownAndWaitUntilGone(_ loop: inout CurlMultiLoop?) async throws {
        weak var stopped = loop
        loop?.shutdown()
        loop = nil
        try await waitUntil(timeout: .seconds(10), "the curl loop was never freed") { stopped == nil }
    }

    /// curl refuses a URL over 8 MB when it is set (a key that long would make one): the handle
    /// goes back to the loop, which still runs the next request.
    @Test func aRequestCurlRefusesGivesItsHandleBack() async throws {
        var loop: CurlMultiLoop? = CurlMultiLoop(maxConnectionsPerHost: 2)
        let url = "http://127.0.0.1:1/" + String(repeating: "k", count: 9 << 20)
        for _ in 0..<5 {
            let error = await #expect(throws: TransportError.self) { try await loop!.perform(get(url)) }
            #expect(error?.code == 43, "\(String(describing: error))")  // CURLE_BAD_FUNCTION_ARGUMENT
        }
        try await shutDownAndWaitUntilGone(&loop)
    }

    /// Requests held up by the server when the client shuts down fail at once with a shut-down
    /// error, and every handle is freed, those in flight included; shutting down twice, or at
    /// any moment of the requests' lives (queued, connecting, waiting), changes nothing of that.
    /// (A request that waited for its answer would get it, 60 s later, instead of the shut-down
    /// error: the time limit only bounds such a failing run.)
    @Test(.needsTestServers, .timeLimit(.minutes(5))) func shutdownWhileRequestsAreInFlightFailsThemAndFreesEveryHandle() async throws {
        let proxy = try FaultProxy(upstream: try TestS3Server.seaweedFS.endpoint)
        proxy.inject(.delayResponse(.seconds(60)))
        for round in 0..<30 {
            var loop: CurlMultiLoop? = CurlMultiLoop(maxConnectionsPerHost: 3)
            try await withThrowingTaskGroup(of: Void.self) { requests in
                for index in 0..<6 {
                    requests.addTask { [loop = loop!, request = get("\(proxy.endpoint)/bucket/key-\(index)")] in
                        let error = await #expect(throws: TransportError.self) { try await loop.perform(request) }
                        #expect(error?.code == -1, "\(String(describing: error))")
                    }
                }
                try await Task.sleep(for: .milliseconds(round % 10 * 10))
                loop!.shutdown()
                loop!.shutdown()
                try await requests.waitForAll()
            }
            let error = await #expect(throws: TransportError.self) { try await loop!.perform(get(proxy.endpoint)) }
            #expect(error?.code == -1)
            try await shutDownAndWaitUntilGone(&loop)
        }
    }
}
