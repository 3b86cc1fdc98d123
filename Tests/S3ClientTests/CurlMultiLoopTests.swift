import Foundation
@testable import S3Client
import TestSupport
import Testing

/// The loop that runs a client's transfers owns curl handles: none is lost, whether a request is
/// refused by curl, finishes, or is cut off by `shutdown`.
@Suite("curl multi loop: handle ownership")
struct CurlMultiLoopTests {
    private func get(_ url: String) -> CurlRequest {
        CurlRequest(
            method: "GET", url: url, headers: [], body: .empty, destination: .memory, requestedRange: nil,
            digestsWholeObjectBody: false, timeouts: S3Configuration.Timeouts(), tls: S3Configuration.TLS())
    }

    /// Waits for the loop thread to have freed every handle after `shutdown`.
    private func waitUntilEveryHandleIsFreed(_ loop: CurlMultiLoop) async throws {
        try await waitUntil(timeout: .seconds(10), "\(loop.ownedHandles) curl handles never freed") { loop.ownedHandles == 0 }
    }

    /// curl refuses a URL over 8 MB when it is set (a key that long would make one): the handle
    /// goes back to the loop, and the next request reuses it.
    @Test func aRequestCurlRefusesGivesItsHandleBack() async throws {
        let loop = CurlMultiLoop(maxConnectionsPerHost: 2)
        let url = "http://127.0.0.1:1/" + String(repeating: "k", count: 9 << 20)
        for _ in 0..<5 {
            let error = await #expect(throws: TransportError.self) { try await loop.perform(get(url)) }
            #expect(error?.code == 43, "\(String(describing: error))")  // CURLE_BAD_FUNCTION_ARGUMENT
        }
        #expect(loop.ownedHandles == 1)
        loop.shutdown()
        try await waitUntilEveryHandleIsFreed(loop)
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
            let loop = CurlMultiLoop(maxConnectionsPerHost: 3)
            try await withThrowingTaskGroup(of: Void.self) { requests in
                for index in 0..<6 {
                    requests.addTask { [request = get("\(proxy.endpoint)/bucket/key-\(index)")] in
                        let error = await #expect(throws: TransportError.self) { try await loop.perform(request) }
                        #expect(error?.code == -1, "\(String(describing: error))")
                    }
                }
                try await Task.sleep(for: .milliseconds(round % 10 * 10))
                loop.shutdown()
                loop.shutdown()
                try await requests.waitForAll()
            }
            try await waitUntilEveryHandleIsFreed(loop)
            let error = await #expect(throws: TransportError.self) { try await loop.perform(get(proxy.endpoint)) }
            #expect(error?.code == -1)
        }
    }
}
