import CCurl
import Foundation
import Glibc
import Synchronization

// All of libcurl's unsafe surface lives in this file: handle ownership, the typed
// setopt shims and the C callbacks, bridged to Swift objects through Unmanaged.

private let curlGlobalInit: Void = {
    _ = curl_global_init(Int(CURL_GLOBAL_ALL))
}()

/// Owns one `curl_slist` of request headers for the lifetime of a transfer.
final class CurlHeaderList {
    private(set) var pointer: UnsafeMutablePointer<curl_slist>?

    init(_ headers: [(name: String, value: String)]) {
        for (name, value) in headers {
            // "Name;" is curl's spelling for a header with an empty value.
            let line = value.isEmpty ? "\(name);" : "\(name): \(value)"
            pointer = curl_slist_append(pointer, line)
        }
    }

    deinit {
        curl_slist_free_all(pointer)
    }
}

/// What a transfer sends: nothing, bytes in memory, or a region of an open file read with
/// pread so that parts of one file can be uploaded concurrently.
enum RequestBody: Sendable {
    case empty
    case bytes([UInt8])
    case file(fileDescriptor: Int32, offset: Int64, length: Int64)

    var length: Int64 {
        switch self {
        case .empty: 0
        case .bytes(let bytes): Int64(bytes.count)
        case .file(_, _, let length): length
        }
    }
}

/// Where a successful response body goes. Error bodies always go to memory, so the S3
/// error document can be parsed whatever the destination.
enum ResponseDestination: Sendable {
    case memory
    /// Appended to this descriptor; the caller truncates before a retry.
    case file(fileDescriptor: Int32)
}

struct CurlRequest: Sendable {
    var method: String
    var url: String
    var headers: [(name: String, value: String)]
    var body: RequestBody
    var destination: ResponseDestination
    /// The byte range asked for, so that a server ignoring `Range` (answering 200 with the
    /// whole object, as rclone does) can be detected and the range cut out here.
    var requestedRange: ClosedRange<Int64>?
    var timeouts: S3Configuration.Timeouts
    var tls: S3Configuration.TLS
}

struct CurlResponse: Sendable {
    var status: Int
    var headers: [(name: String, value: String)]
    /// The body when it went to memory (always so for error statuses).
    var body: [UInt8]
    /// Bytes delivered to the destination, after any range cut.
    var bodyLength: Int64
    /// MD5 of the delivered body, for checking against a single-part ETag.
    var bodyMD5: [UInt8]
    /// True when a range was requested and the server answered with the whole object, so
    /// the range was cut out here.
    var rangeIgnoredByServer: Bool

    func header(_ name: String) -> String? {
        headers.last { $0.name.caseInsensitiveCompare(name) }?.value
    }
}

private extension String {
    func caseInsensitiveCompare(_ other: String) -> Bool {
        lowercased() == other.lowercased()
    }
}

/// One transfer's state while libcurl runs it on the loop thread. Every field is touched
/// only from that thread once the transfer is submitted.
private final class CurlTransfer: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    let request: CurlRequest
    let headerList: CurlHeaderList
    var continuation: CheckedContinuation<CurlResponse, any Error>?
    /// curl writes its detailed message here; it must stay put for the whole transfer.
    let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)

    var uploadOffset: Int64 = 0
    var uploadError: (any Error)?

    var status = 0
    var headers: [(name: String, value: String)] = []
    var memoryBody: [UInt8] = []
    var deliveredLength: Int64 = 0
    var receivedLength: Int64 = 0
    var rangeIgnored = false
    var bodyDigest = StreamingDigest(.md5)
    var writeError: (any Error)?

    init(handle: UnsafeMutableRawPointer, request: CurlRequest) {
        self.handle = handle
        self.request = request
        // An empty Expect header stops curl from waiting a round trip for 100-continue.
        self.headerList = CurlHeaderList(request.headers + [("Expect", "")])
        errorBuffer.initialize(to: 0)
    }

    deinit {
        errorBuffer.deallocate()
    }

    var bodyGoesToFile: Int32? {
        guard (200..<300).contains(status), case .file(let descriptor) = request.destination else { return nil }
        return descriptor
    }

    func headerLine(_ line: String) {
        let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix("HTTP/") {
            // A new status line (after 100 Continue or a redirect) starts a new header block.
            let parts = trimmed.split(separator: " ", maxSplits: 2)
            status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            headers = []
            rangeIgnored = false
        } else if trimmed.isEmpty {
            // End of the header block. A 200 to a range request carries only the range when
            // it has Content-Range (rclone); without it, it is the whole object.
            rangeIgnored = request.requestedRange != nil && status == 200 && !headers.contains {
                $0.name.lowercased() == "content-range"
            }
        } else if let colon = trimmed.firstIndex(of: ":") {
            let name = String(trimmed[..<colon])
            let value = trimmed[trimmed.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers.append((name, value))
        }
    }

    func receive(_ chunk: UnsafeRawBufferPointer) throws {
        var slice = chunk
        if rangeIgnored, let range = request.requestedRange {
            // Keep only the bytes of the whole object that fall inside the requested range.
            let chunkStart = receivedLength
            let chunkEnd = receivedLength + Int64(chunk.count)
            let keepStart = max(chunkStart, range.lowerBound)
            let keepEnd = min(chunkEnd, range.upperBound + 1)
            if keepStart >= keepEnd {
                slice = UnsafeRawBufferPointer(start: chunk.baseAddress, count: 0)
            } else {
                slice = UnsafeRawBufferPointer(
                    rebasing: chunk[Int(keepStart - chunkStart)..<Int(keepEnd - chunkStart)])
            }
        }
        receivedLength += Int64(chunk.count)
        guard !slice.isEmpty else { return }
        if let descriptor = bodyGoesToFile {
            try FileDescriptorWriter.writeAll(descriptor, slice)
        } else {
            memoryBody.append(contentsOf: slice)
        }
        if (200..<300).contains(status) { bodyDigest.update(slice) }
        deliveredLength += Int64(slice.count)
    }

    func fillUpload(_ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let remaining = request.body.length - uploadOffset
        let count = Int(min(Int64(buffer.count), remaining))
        guard count > 0 else { return 0 }
        switch request.body {
        case .empty:
            return 0
        case .bytes(let bytes):
            bytes.withUnsafeBytes { source in
                let start = Int(uploadOffset)
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[start..<start + count]))
            }
        case .file(let descriptor, let offset, _):
            let read = pread(descriptor, buffer.baseAddress, count, off_t(offset + uploadOffset))
            if read < 0 { throw SystemErrorDescription("read upload body", errno: errno) }
            if read == 0 { throw SystemErrorDescription("read upload body: file shrank while uploading", errno: 0) }
            uploadOffset += Int64(read)
            return read
        }
        uploadOffset += Int64(count)
        return count
    }

    func response() -> CurlResponse {
        CurlResponse(
            status: status, headers: headers, body: memoryBody, bodyLength: deliveredLength,
            bodyMD5: bodyDigest.finalize(), rangeIgnoredByServer: rangeIgnored)
    }
}

/// A read or write failure inside a curl callback, carried out of C as a Swift error.
struct SystemErrorDescription: Error, CustomStringConvertible {
    let operation: String
    let errno: Int32
    init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }
    var description: String {
        errno == 0 ? operation : "\(operation): \(String(cString: strerror(errno)))"
    }
}

enum FileDescriptorWriter {
    static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) throws {
        var remaining = bytes
        while !remaining.isEmpty {
            let written = write(descriptor, remaining.baseAddress, remaining.count)
            if written < 0 {
                if errno == EINTR { continue }
                throw SystemErrorDescription("write response body", errno: errno)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }
}

private func transfer(from userdata: UnsafeMutableRawPointer?) -> CurlTransfer {
    Unmanaged<CurlTransfer>.fromOpaque(userdata!).takeUnretainedValue()
}

private let writeCallback: sa_curl_data_callback = { buffer, size, count, userdata in
    let transfer = transfer(from: userdata)
    let length = size * count
    do {
        try transfer.receive(UnsafeRawBufferPointer(start: buffer, count: length))
        return length
    } catch {
        transfer.writeError = error
        return 0  // anything but `length` makes curl abort with CURLE_WRITE_ERROR
    }
}

private let headerCallback: sa_curl_data_callback = { buffer, size, count, userdata in
    let length = size * count
    let bytes = UnsafeRawBufferPointer(start: buffer, count: length)
    transfer(from: userdata).headerLine(String(decoding: bytes, as: UTF8.self))
    return length
}

private let readCallback: sa_curl_data_callback = { buffer, size, count, userdata in
    let transfer = transfer(from: userdata)
    do {
        return try transfer.fillUpload(UnsafeMutableRawBufferPointer(start: buffer, count: size * count))
    } catch {
        transfer.uploadError = error
        return Int(CURL_READFUNC_ABORT)
    }
}

/// Runs every transfer of one client on a single thread with a curl multi handle, so
/// connections are kept alive and shared, and any number of requests run concurrently
/// without a thread each.
final class CurlMultiLoop: @unchecked Sendable {
    private struct Inbox {
        var submitted: [CurlTransfer] = []
        var idleHandles: [UnsafeMutableRawPointer] = []
        var stopping = false
    }

    private let multi: UnsafeMutableRawPointer
    private let inbox = Mutex(Inbox())
    private var running: [UnsafeMutableRawPointer: CurlTransfer] = [:]

    init(maxConnectionsPerHost: Int) {
        _ = curlGlobalInit
        multi = curl_multi_init()
        _ = sa_curl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxConnectionsPerHost)
        let thread = Thread { [self] in run() }
        thread.name = "sync-agent.curl"
        thread.start()
    }

    /// Asks the loop thread to finish; it frees the multi handle once the running
    /// transfers have been failed.
    func shutdown() {
        inbox.withLock { $0.stopping = true }
        curl_multi_wakeup(multi)
    }

    func perform(_ request: CurlRequest) async throws -> CurlResponse {
        let handle = inbox.withLock { $0.idleHandles.popLast() } ?? curl_easy_init()!
        let transfer = CurlTransfer(handle: handle, request: request)
        try configure(transfer)
        return try await withCheckedThrowingContinuation { continuation in
            transfer.continuation = continuation
            let accepted = inbox.withLock { inbox -> Bool in
                guard !inbox.stopping else { return false }
                inbox.submitted.append(transfer)
                return true
            }
            if accepted {
                curl_multi_wakeup(multi)
            } else {
                continuation.resume(throwing: TransportError(code: -1, message: "the S3 client was shut down"))
            }
        }
    }

    private func configure(_ transfer: CurlTransfer) throws {
        let handle = transfer.handle
        let request = transfer.request
        curl_easy_reset(handle)
        var failure: CURLcode = CURLE_OK
        func set(_ code: CURLcode) { if failure == CURLE_OK { failure = code } }

        set(sa_curl_easy_setopt_string(handle, CURLOPT_URL, request.url))
        set(sa_curl_easy_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
        set(sa_curl_easy_setopt_slist(handle, CURLOPT_HTTPHEADER, transfer.headerList.pointer))
        set(sa_curl_easy_setopt_pointer(handle, CURLOPT_ERRORBUFFER, transfer.errorBuffer))
        set(sa_curl_easy_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, request.timeouts.connect.milliseconds))
        // A stalled transfer fails after `idle` with less than 1 byte/s; large objects
        // are not cut off by a total timeout unless one is configured.
        set(sa_curl_easy_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1))
        set(sa_curl_easy_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, max(1, request.timeouts.idle.milliseconds / 1000)))
        if let total = request.timeouts.request {
            set(sa_curl_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, total.milliseconds))
        }
        set(sa_curl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, request.tls.verifyCertificates ? 1 : 0))
        set(sa_curl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, request.tls.verifyCertificates ? 2 : 0))
        if let bundle = request.tls.caBundlePath {
            set(sa_curl_easy_setopt_string(handle, CURLOPT_CAINFO, bundle))
        }
        set(sa_curl_easy_setopt_long(handle, CURLOPT_BUFFERSIZE, 256 * 1024))
        set(sa_curl_easy_setopt_long(handle, CURLOPT_UPLOAD_BUFFERSIZE, 512 * 1024))
        set(sa_curl_easy_setopt_long(handle, CURLOPT_TCP_NODELAY, 1))

        let userdata = Unmanaged.passUnretained(transfer).toOpaque()
        set(sa_curl_easy_setopt_data_callback(handle, CURLOPT_WRITEFUNCTION, writeCallback))
        set(sa_curl_easy_setopt_pointer(handle, CURLOPT_WRITEDATA, userdata))
        set(sa_curl_easy_setopt_data_callback(handle, CURLOPT_HEADERFUNCTION, headerCallback))
        set(sa_curl_easy_setopt_pointer(handle, CURLOPT_HEADERDATA, userdata))
        set(sa_curl_easy_setopt_data_callback(handle, CURLOPT_READFUNCTION, readCallback))
        set(sa_curl_easy_setopt_pointer(handle, CURLOPT_READDATA, userdata))

        switch request.method {
        case "GET":
            set(sa_curl_easy_setopt_long(handle, CURLOPT_HTTPGET, 1))
        case "HEAD":
            set(sa_curl_easy_setopt_long(handle, CURLOPT_NOBODY, 1))
        case "PUT":
            set(sa_curl_easy_setopt_long(handle, CURLOPT_UPLOAD, 1))
            set(sa_curl_easy_setopt_off_t(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(request.body.length)))
        case "POST":
            set(sa_curl_easy_setopt_long(handle, CURLOPT_POST, 1))
            set(sa_curl_easy_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.length)))
        default:
            set(sa_curl_easy_setopt_string(handle, CURLOPT_CUSTOMREQUEST, request.method))
        }
        if failure != CURLE_OK {
            throw TransportError(code: Int32(failure.rawValue), message: String(cString: curl_easy_strerror(failure)))
        }
    }

    private func run() {
        while true {
            let (submitted, stopping) = inbox.withLock { inbox in
                defer { inbox.submitted = [] }
                return (inbox.submitted, inbox.stopping)
            }
            for transfer in submitted {
                running[transfer.handle] = transfer
                curl_multi_add_handle(multi, transfer.handle)
            }
            if stopping {
                failAll(TransportError(code: -1, message: "the S3 client was shut down"))
                curl_multi_cleanup(multi)
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
        let result: Result<CurlResponse, any Error>
        if let error = transfer.writeError ?? transfer.uploadError {
            result = .failure(TransportError(code: Int32(code.rawValue), message: "\(error)"))
        } else if code != CURLE_OK {
            let detail = String(cString: transfer.errorBuffer)
            let message = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            result = .failure(TransportError(code: Int32(code.rawValue), message: message))
        } else {
            var status = 0
            _ = sa_curl_easy_getinfo_long(transfer.handle, CURLINFO_RESPONSE_CODE, &status)
            transfer.status = status
            result = .success(transfer.response())
        }
        // The handle keeps its connection-cache association with the multi handle, so
        // reusing it saves setting it up again.
        inbox.withLock { $0.idleHandles.append(transfer.handle) }
        transfer.continuation?.resume(with: result)
        transfer.continuation = nil
    }

    private func failAll(_ error: TransportError) {
        for (handle, transfer) in running {
            curl_multi_remove_handle(multi, handle)
            transfer.continuation?.resume(throwing: error)
            transfer.continuation = nil
        }
        running = [:]
        for handle in inbox.withLock({ $0.idleHandles }) { curl_easy_cleanup(handle) }
    }
}

/// A libcurl failure: the connection could not be made, broke, timed out, or TLS failed.
public struct TransportError: Error, CustomStringConvertible, Sendable {
    /// The CURLcode, or -1 for failures of the client itself.
    public let code: Int32
    public let message: String

    public var description: String { "transport error (curl \(code)): \(message)" }

    /// Failures that another attempt may not hit: the network, not the request.
    var isRetryable: Bool {
        switch CURLcode(UInt32(bitPattern: code)) {
        case CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR,
            CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE, CURLE_COULDNT_RESOLVE_HOST, CURLE_HTTP2,
            CURLE_HTTP2_STREAM:
            true
        default:
            false
        }
    }
}

extension Duration {
    var milliseconds: Int {
        let (seconds, attoseconds) = components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }
}
