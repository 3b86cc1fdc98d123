import CCurl
import SystemSupport
import Synchronization

private let curlGlobalInit: Void = {
    _ = curl_global_init(Int(CURL_GLOBAL_ALL))
}()

/// Runs every transfer of one client on a single thread with a curl multi handle, so
/// connections are kept alive and shared, and any number of requests run concurrently
/// without a thread each.
final class CurlMultiLoop: @unchecked Sendable {
    /// What other threads share with the loop thread. The multi handle lives until the loop
    /// has seen `stopping` here, so whoever wakes the loop does it under this lock and only
    /// while `stopping` is false: it cannot touch the multi handle after it is freed.
    private struct Inbox {
        var submitted: [CurlTransfer] = []
        var idleHandles: [CurlEasyHandle] = []
        var stopping = false
    }

    private let multi: UnsafeMutableRawPointer
    private let inbox = Mutex(Inbox())
    private var running: [UnsafeMutableRawPointer: CurlTransfer] = [:]

    init(maxConnectionsPerHost: Int) {
        _ = curlGlobalInit
        multi = curl_multi_init()
        _ = sa_curl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxConnectionsPerHost)
        // The cache would otherwise shrink with the number of transfers in flight and close
        // connections that the next burst of requests has to open again.
        _ = sa_curl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, maxConnectionsPerHost)
        // A thread to itself: the loop blocks in curl_multi_poll, never on Swift's task pool. A
        // process that cannot start one thread cannot do any of its work.
        do {
            try startLoopThread(named: "sync-agent-curl") { [self] in run() }
        } catch {
            fatalError("\(error)")
        }
    }

    private static let shutDown = TransportError(code: -1, message: "the S3 client was shut down")

    /// Asks the loop thread to finish; it fails the running transfers, then lets go of every
    /// easy handle and frees the multi handle. Calling it again does nothing.
    func shutdown() {
        inbox.withLock { inbox in
            guard !inbox.stopping else { return }
            inbox.stopping = true
            curl_multi_wakeup(multi)
        }
    }

    func perform(_ request: CurlRequest) async throws -> CurlResponse {
        let transfer = CurlTransfer(handle: try takeHandle(), request: request)
        do {
            try transfer.handle.configure(for: transfer)
        } catch {
            releaseHandle(of: transfer)
            throw error
        }
        return try await withCheckedThrowingContinuation { continuation in
            transfer.continuation = continuation
            let accepted = inbox.withLock { inbox -> Bool in
                guard !inbox.stopping else { return false }
                inbox.submitted.append(transfer)
                curl_multi_wakeup(multi)
                return true
            }
            if !accepted {
                releaseHandle(of: transfer)
                continuation.resume(throwing: Self.shutDown)
            }
        }
    }

    /// An idle handle, or a new one.
    private func takeHandle() throws(TransportError) -> CurlEasyHandle {
        try inbox.withLock { inbox throws(TransportError) in
            guard !inbox.stopping else { throw Self.shutDown }
            if let handle = inbox.idleHandles.popLast() { return handle }
            return try CurlEasyHandle()
        }
    }

    /// Keeps a handle no transfer runs on for the next one (it keeps its association with the
    /// connection cache, so reusing it saves setting that up again), unless the loop is stopping:
    /// the loop lets go of the idle handles only once, when it stops.
    private func releaseHandle(of transfer: CurlTransfer) {
        inbox.withLock { inbox in
            if !inbox.stopping { inbox.idleHandles.append(transfer.handle) }
        }
    }

    private func run() {
        while true {
            let (submitted, stopping) = inbox.withLock { inbox in
                defer { inbox.submitted = [] }
                return (inbox.submitted, inbox.stopping)
            }
            for transfer in submitted {
                running[transfer.handle.pointer] = transfer
                curl_multi_add_handle(multi, transfer.handle.pointer)
            }
            if stopping {
                stop()
                return
            }
            var stillRunning: Int32 = 0
            curl_multi_perform(multi, &stillRunning)
            collectFinished()
            curl_multi_poll(multi, nil, 0, 1000, nil)
        }
    }

    private func collectFinished() {
        var queued: Int32 = 0
        while let message = curl_multi_info_read(multi, &queued) {
            guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle,
                let transfer = running.removeValue(forKey: handle)
            else { continue }
            let code = message.pointee.data.result
            curl_multi_remove_handle(multi, handle)
            finish(transfer, code: code)
        }
    }

    private func finish(_ transfer: CurlTransfer, code: CURLcode) {
        transfer.finishFileBody()
        let result: Result<CurlResponse, any Error>
        if let error = transfer.writeError ?? transfer.uploadError {
            result = .failure(TransportError(code: Int32(code.rawValue), message: "\(error)"))
        } else if code != CURLE_OK && !(code == CURLE_WRITE_ERROR && transfer.stoppedPastRange) {
            let detail = String(cString: transfer.errorBuffer)
            let message = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            result = .failure(TransportError(code: Int32(code.rawValue), message: message))
        } else if !transfer.headersEnded {
            // Taken as complete, such an answer lost its ETag: a PUT "succeeded" without one
            // (found by FaultInjectionTests). The request may or may not have taken effect.
            result = .failure(TransportError(
                code: Int32(CURLE_RECV_ERROR.rawValue), message: "the connection closed inside the response headers"))
        } else {
            transfer.status = transfer.handle.responseCode
            result = .success(transfer.response())
        }
        releaseHandle(of: transfer)
        transfer.continuation?.resume(with: result)
        transfer.continuation = nil
    }

    /// Fails the running transfers, lets go of every easy handle and frees the multi handle.
    /// `stopping` was seen under the lock, so no other thread touches the multi handle any more,
    /// and none adds an idle handle. An easy handle is freed with the last transfer holding it,
    /// which may come after the multi handle: it was taken out of it first.
    private func stop() {
        for (handle, transfer) in running {
            curl_multi_remove_handle(multi, handle)
            transfer.continuation?.resume(throwing: Self.shutDown)
            transfer.continuation = nil
        }
        running = [:]
        inbox.withLock { $0.idleHandles = [] }
        curl_multi_cleanup(multi)
    }
}
