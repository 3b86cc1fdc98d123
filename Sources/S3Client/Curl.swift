import CCurl
import Dispatch
import FoundationEssentials
import Glibc
import Synchronization
import SystemSupport

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
    /// Written with pwrite from `offset` on, so that parts of one object can be downloaded
    /// into one file concurrently and a retried part rewrites only its own region.
    case file(fileDescriptor: Int32, offset: Int64)
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
    /// Compute the MD5 of a successful body when it is the whole object and its ETag is a
    /// plain MD5, so that it can be checked; hashing bodies nothing is checked against
    /// would cost a core for large downloads.
    var digestsWholeObjectBody: Bool
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
    /// MD5 of the delivered body when `digestsWholeObjectBody` asked for it and the body is
    /// the whole object with a plain-MD5 ETag.
    var bodyMD5: [UInt8]?
    /// True when a range was requested and the server answered with the whole object, so
    /// the range was cut out here.
    var rangeIgnoredByServer: Bool

    func header(_ name: String) -> String? {
        headers.last { $0.name.caseInsensitiveCompare(name) }?.value
    }
}

/// A `Content-Range: bytes first-last/size` header; the size may be `*` (unknown).
struct ContentRange: Equatable {
    var first: Int64
    var last: Int64
    var objectSize: Int64?

    init(first: Int64, last: Int64, objectSize: Int64?) {
        self.first = first
        self.last = last
        self.objectSize = objectSize
    }

    init?(parsing text: String) {
        let trimmed = text.trimmingWhitespace()
        guard trimmed.lowercased().hasPrefix("bytes ") else { return nil }
        let spec = trimmed.dropFirst("bytes ".count).split(separator: "/", omittingEmptySubsequences: false)
        guard spec.count == 2 else { return nil }
        let bounds = spec[0].split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count == 2, let first = Int64(bounds[0]), let last = Int64(bounds[1]), first <= last else {
            return nil
        }
        let size = Int64(spec[1])
        guard spec[1] == "*" || size.map({ $0 > last }) == true else { return nil }
        self.init(first: first, last: last, objectSize: size)
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
    /// The blank line that ends the header block arrived. libcurl reports success for a
    /// response whose connection closed inside its headers, once a Content-Length was among them.
    var headersEnded = false
    var memoryBody: [UInt8] = []
    var deliveredLength: Int64 = 0
    var receivedLength: Int64 = 0
    var rangeIgnored = false
    /// The server ignored the range and sent past its end: the transfer was stopped there.
    var stoppedPastRange = false
    var bodyDigest: StreamingDigest?
    var writeError: (any Error)?
    /// File-bound body bytes not yet written: curl hands the body over in pieces of at most
    /// 16 KiB (CURL_MAX_WRITE_SIZE), and one pwrite per piece costs more system time than
    /// the copy itself.
    private var pendingFileBytes: [UInt8] = []
    private var pendingFileOffset: Int64 = 0
    private static let fileWriteSize = 1 << 20

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

    var bodyGoesToFile: (descriptor: Int32, offset: Int64)? {
        guard (200..<300).contains(status), case .file(let descriptor, let offset) = request.destination else {
            return nil
        }
        return (descriptor, offset)
    }

    func headerLine(_ line: String) {
        let trimmed = line.trimmingWhitespace()
        if trimmed.hasPrefix("HTTP/") {
            // A new status line (after 100 Continue or a redirect) starts a new header block.
            let parts = trimmed.split(separator: " ", maxSplits: 2)
            status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            headers = []
            headersEnded = false
            rangeIgnored = false
        } else if trimmed.isEmpty {
            headersEnded = true
            // End of the header block. A 200 to a range request carries only the range when
            // it has Content-Range (rclone); without it, it is the whole object.
            let contentRange = headers.last { $0.name.lowercased() == "content-range" }?.value
            rangeIgnored = request.requestedRange != nil && status == 200 && contentRange == nil
            bodyDigest = nil
            if request.digestsWholeObjectBody, (200..<300).contains(status), deliversWholeObject(contentRange),
                let etag = headers.last(where: { $0.name.lowercased() == "etag" })?.value, isPlainMD5ETag(etag)
            {
                bodyDigest = StreamingDigest(.md5)
            }
        } else if let colon = trimmed.firstIndex(of: ":") {
            let name = String(trimmed[..<colon])
            let value = String(String(trimmed[trimmed.index(after: colon)...]).trimmingWhitespace())
            headers.append((name, value))
        }
    }

    /// Whether the body this response delivers (after any range cut) is the whole object.
    private func deliversWholeObject(_ contentRange: String?) -> Bool {
        if let contentRange {
            guard let range = ContentRange(parsing: contentRange), let size = range.objectSize else { return false }
            return range.first == 0 && range.last + 1 == size
        }
        guard let requested = request.requestedRange else { return true }
        // A server ignoring the range sends the whole object; it is delivered whole when
        // the requested range covers it.
        let length = headers.last { $0.name.lowercased() == "content-length" }.flatMap { Int64($0.value) }
        return requested.lowerBound == 0 && length.map { $0 <= requested.upperBound + 1 } == true
    }

    /// False once a server that ignores the range has sent everything of it: the rest of its
    /// answer (an object of any size) is not read.
    func receive(_ chunk: UnsafeRawBufferPointer) throws -> Bool {
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
        if rangeIgnored, let range = request.requestedRange, receivedLength > range.upperBound + 1 {
            stoppedPastRange = true
        }
        guard !slice.isEmpty else { return !stoppedPastRange }
        if let (descriptor, offset) = bodyGoesToFile {
            if pendingFileBytes.isEmpty {
                pendingFileOffset = offset + deliveredLength
                pendingFileBytes.reserveCapacity(Self.fileWriteSize)
            }
            pendingFileBytes.append(contentsOf: slice)
            if pendingFileBytes.count >= Self.fileWriteSize { try flushFileBytes(to: descriptor) }
        } else {
            memoryBody.append(contentsOf: slice)
        }
        bodyDigest?.update(slice)
        deliveredLength += Int64(slice.count)
        return !stoppedPastRange
    }

    /// Writes what `receive` held back; called once more when the transfer ends.
    func flushFileBytes(to descriptor: Int32) throws {
        guard !pendingFileBytes.isEmpty else { return }
        try pendingFileBytes.withUnsafeBytes { try FileDescriptorWriter.writeAll(descriptor, $0, at: pendingFileOffset) }
        pendingFileOffset += Int64(pendingFileBytes.count)
        pendingFileBytes.removeAll(keepingCapacity: true)
    }

    /// Writes the rest of a file-bound body; a failure becomes the transfer's write error.
    func finishFileBody() {
        guard writeError == nil, let (descriptor, _) = bodyGoesToFile else { return }
        do { try flushFileBytes(to: descriptor) } catch { writeError = error }
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
            bodyMD5: bodyDigest?.finalize(), rangeIgnoredByServer: rangeIgnored)
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
    static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        var remaining = bytes
        var position = offset
        while !remaining.isEmpty {
            let written = pwrite(descriptor, remaining.baseAddress, remaining.count, off_t(position))
            if written < 0 {
                if errno == EINTR { continue }
                throw SystemErrorDescription("write response body", errno: errno)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
            position += Int64(written)
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
        // Anything but `length` makes curl abort with CURLE_WRITE_ERROR.
        return try transfer.receive(UnsafeRawBufferPointer(start: buffer, count: length)) ? length : 0
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
    /// What other threads share with the loop thread. The multi handle lives until the loop
    /// has seen `stopping` here, so whoever wakes the loop does it under this lock and only
    /// while `stopping` is false: it cannot touch the multi handle after it is freed.
    private struct Inbox {
        var submitted: [CurlTransfer] = []
        var idleHandles: [UnsafeMutableRawPointer] = []
        var stopping = false
        /// Easy handles made and not freed yet: running, idle or being configured.
        var ownedHandles = 0
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
        // A serial queue of its own targets an overcommitting global queue, so the blocking loop
        // gets a thread to itself and never takes one from Swift's task pool.
        DispatchQueue(label: "sync-agent.curl").async { [self] in
            run()
        }
    }

    private static let shutDown = TransportError(code: -1, message: "the S3 client was shut down")

    /// Asks the loop thread to finish; it fails the running transfers, then frees every easy
    /// handle and the multi handle. Calling it again does nothing.
    func shutdown() {
        inbox.withLock { inbox in
            guard !inbox.stopping else { return }
            inbox.stopping = true
            curl_multi_wakeup(multi)
        }
    }

    /// Easy handles made and not freed yet; none once the loop has stopped.
    var ownedHandles: Int { inbox.withLock { $0.ownedHandles } }

    func perform(_ request: CurlRequest) async throws -> CurlResponse {
        let transfer = CurlTransfer(handle: try takeHandle(), request: request)
        do {
            try configure(transfer)
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
    private func takeHandle() throws(TransportError) -> UnsafeMutableRawPointer {
        try inbox.withLock { inbox throws(TransportError) in
            guard !inbox.stopping else { throw Self.shutDown }
            if let handle = inbox.idleHandles.popLast() { return handle }
            guard let handle = curl_easy_init() else {
                throw TransportError(code: Int32(CURLE_OUT_OF_MEMORY.rawValue), message: "cannot make a curl handle")
            }
            inbox.ownedHandles += 1
            return handle
        }
    }

    /// Keeps a handle no transfer runs on for the next one (it keeps its association with the
    /// connection cache, so reusing it saves setting that up again), or frees it once the loop is
    /// stopping: the loop frees the idle handles only once, when it stops.
    private func releaseHandle(of transfer: CurlTransfer) {
        let kept = inbox.withLock { inbox in
            if inbox.stopping {
                inbox.ownedHandles -= 1
                return false
            }
            inbox.idleHandles.append(transfer.handle)
            return true
        }
        if !kept { curl_easy_cleanup(transfer.handle) }
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
            var status = 0
            _ = sa_curl_easy_getinfo_long(transfer.handle, CURLINFO_RESPONSE_CODE, &status)
            transfer.status = status
            result = .success(transfer.response())
        }
        releaseHandle(of: transfer)
        transfer.continuation?.resume(with: result)
        transfer.continuation = nil
    }

    /// Fails the running transfers and frees every handle. `stopping` was seen under the lock,
    /// so no other thread touches the multi handle any more, and none adds an idle handle.
    private func stop() {
        for (handle, transfer) in running {
            curl_multi_remove_handle(multi, handle)
            curl_easy_cleanup(handle)
            transfer.continuation?.resume(throwing: Self.shutDown)
            transfer.continuation = nil
        }
        let idle = inbox.withLock { inbox in
            defer {
                inbox.ownedHandles -= running.count + inbox.idleHandles.count
                inbox.idleHandles = []
            }
            return inbox.idleHandles
        }
        running = [:]
        for handle in idle { curl_easy_cleanup(handle) }
        curl_multi_cleanup(multi)
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
