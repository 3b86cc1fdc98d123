import CCurl
import Glibc
import SystemSupport

/// One transfer's state while libcurl runs it on the loop thread. Every field is touched
/// only from that thread once the transfer is submitted.
final class CurlTransfer: @unchecked Sendable {
    let handle: CurlEasyHandle
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

    init(handle: CurlEasyHandle, request: CurlRequest) {
        self.handle = handle
        self.request = request
        // An empty Expect header stops curl from waiting a round trip for 100-continue.
        self.headerList = CurlHeaderList(request.headers + [("Expect", "")])
        errorBuffer.initialize(to: 0)
    }

    deinit {
        errorBuffer.deallocate()
    }

    var bodyGoesToFile: (descriptor: FileDescriptor, offset: Int64)? {
        guard (200..<300).contains(status), case .file(let descriptor, let offset) = request.destination else {
            return nil
        }
        return (descriptor, offset)
    }

    /// One line of the response's head as curl hands it over, its CRLF included. Read as
    /// bytes: trimming a String by `Character.isWhitespace` cost about 14,000 instructions a
    /// line (callgrind), ten lines a response, two responses an upload. HTTP's whitespace
    /// around a line and a value is ASCII (RFC 9110's OWS and the CRLF).
    func headerLine(_ raw: UnsafeRawBufferPointer) {
        let trimmed = Self.trimmingHTTPWhitespace(raw[...])
        if trimmed.starts(with: "HTTP/".utf8) {
            // A new status line (after 100 Continue or a redirect) starts a new header block:
            // "HTTP/1.1 200 OK", the code the second word.
            let parts = trimmed.split(separator: UInt8(ascii: " "), maxSplits: 2)
            status = parts.count > 1 ? Int(String(decoding: parts[1], as: UTF8.self)) ?? 0 : 0
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
        } else if let colon = trimmed.firstIndex(of: UInt8(ascii: ":")) {
            let name = String(decoding: trimmed[..<colon], as: UTF8.self)
            let value = String(decoding: Self.trimmingHTTPWhitespace(trimmed[(colon + 1)...]), as: UTF8.self)
            headers.append((name, value))
        }
    }

    private static func trimmingHTTPWhitespace(_ bytes: Slice<UnsafeRawBufferPointer>) -> Slice<UnsafeRawBufferPointer> {
        func isWhitespace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0d || byte == 0x0a }
        var bytes = bytes
        while let first = bytes.first, isWhitespace(first) { bytes = bytes.dropFirst() }
        while let last = bytes.last, isWhitespace(last) { bytes = bytes.dropLast() }
        return bytes
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
    func flushFileBytes(to descriptor: FileDescriptor) throws {
        guard !pendingFileBytes.isEmpty else { return }
        try pendingFileBytes.withUnsafeBytes { try descriptor.writeAll($0, at: pendingFileOffset) }
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
            let read = try descriptor.readFully(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<count]), at: offset + uploadOffset)
            if read < count { throw S3ClientError.io("read upload body: file shrank while uploading") }
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
