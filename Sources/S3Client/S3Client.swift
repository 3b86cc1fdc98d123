import FoundationEssentials
import Glibc
import Logging
import SystemSupport

/// What a stored object looks like from HEAD, GET or a listing.
public struct ObjectInfo: Sendable, Equatable {
    public var key: String
    public var size: Int64
    /// Without the surrounding quotes.
    public var etag: String
    public var lastModified: Date?
}

public struct ObjectData: Sendable {
    public var info: ObjectInfo
    public var bytes: [UInt8]
}

/// Conditions on a write, for fencing: create only, or replace only a known version.
public enum WriteCondition: Sendable, Equatable {
    /// `If-None-Match: *`: fails with `.preconditionFailed` when the key exists.
    case ifAbsent
    /// `If-Match: etag`: fails with `.preconditionFailed` unless the current ETag matches.
    case ifMatch(etag: String)
}

/// Conditions on a read.
public enum ReadCondition: Sendable, Equatable {
    case ifMatch(etag: String)
    /// Fails with `.notModified` when the object still has this ETag.
    case ifNoneMatch(etag: String)
}

public struct ListPage: Sendable {
    public var objects: [ObjectInfo]
    public var commonPrefixes: [String]
    public var nextContinuationToken: String?
}

/// An S3 client over libcurl with our own SigV4 signing. One instance per bucket; safe to
/// share between tasks, and meant to be shared so its connections are reused.
public final class S3Client: Sendable {
    public let configuration: S3Configuration
    private let signer: SigV4Signer
    private let loop: CurlMultiLoop
    private let logger: Logger

    public init(configuration: S3Configuration, logger: Logger = Logger(label: "sync-agent.s3")) {
        self.configuration = configuration
        self.signer = SigV4Signer(credentials: configuration.credentials, region: configuration.region, service: "s3")
        self.loop = CurlMultiLoop(maxConnectionsPerHost: configuration.maxConnections)
        self.logger = logger
    }

    deinit {
        loop.shutdown()
    }

    // MARK: Buckets

    /// Creates the bucket; succeeds when this account already owns it.
    public func createBucket() async throws(S3ClientError) {
        var body: [UInt8] = []
        if configuration.region != "us-east-1" {
            body = Array("""
                <CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">\
                <LocationConstraint>\(xmlEscaped(configuration.region))</LocationConstraint>\
                </CreateBucketConfiguration>
                """.utf8)
        }
        do {
            _ = try await send(Request(method: "PUT", key: nil, body: .bytes(body)))
        } catch .service(let error) where error.code == "BucketAlreadyOwnedByYou" {
            return
        }
    }

    /// Checks that the bucket exists and the credentials may use it.
    public func headBucket() async throws(S3ClientError) {
        _ = try await send(Request(method: "HEAD", key: nil))
    }

    // MARK: Objects

    @discardableResult
    public func putObject(key: String, bytes: [UInt8], condition: WriteCondition? = nil) async throws(S3ClientError)
        -> String
    {
        var request = Request(method: "PUT", key: key, body: .bytes(bytes))
        request.payload = .hashing(bytes)
        request.headers.append(("Content-MD5", MD5.hash(bytes).base64))
        request.headers += condition?.headers ?? []
        let response = try await send(request)
        return response.etag
    }

    /// Uploads a file, streamed from disk; in parallel parts at or above the multipart threshold.
    @discardableResult
    public func putObject(key: String, fileAt path: String, condition: WriteCondition? = nil)
        async throws(S3ClientError) -> String
    {
        try await putObject(key: key, file: try OpenFile(path: path, flags: O_RDONLY), condition: condition)
    }

    /// Uploads the content of an open file, from offset 0 to its end, like `putObject(key:fileAt:)`:
    /// for a file without a name (an unlinked spool). The descriptor is duplicated (the parts of
    /// a multipart upload and the retries read it with pread, never moving its position); the
    /// caller keeps and closes its own.
    @discardableResult
    public func putObject(key: String, fileDescriptor: Int32, condition: WriteCondition? = nil)
        async throws(S3ClientError) -> String
    {
        try await putObject(key: key, file: try OpenFile(duplicating: fileDescriptor), condition: condition)
    }

    private func putObject(key: String, file: OpenFile, condition: WriteCondition?) async throws(S3ClientError) -> String {
        if file.size >= configuration.multipart.threshold {
            return try await multipartUpload(key: key, file: file, condition: condition)
        }
        var request = Request(method: "PUT", key: key, body: .file(fileDescriptor: file.descriptor, offset: 0, length: file.size))
        request.headers.append(("Content-MD5", try file.md5(offset: 0, length: file.size).base64))
        request.headers += condition?.headers ?? []
        return try await send(request).etag
    }

    /// Whether the server honours `If-None-Match: *` on PUT (rclone's S3 server does not):
    /// writes `key`, then writes it again on condition that it is absent, which must fail.
    public func probeConditionalWrites(key: String) async throws(S3ClientError) -> Bool {
        try await putObject(key: key, bytes: [])
        let honoured: Bool
        do {
            try await putObject(key: key, bytes: [], condition: .ifAbsent)
            honoured = false
        } catch .service(let error) where error.kind == .preconditionFailed {
            honoured = true
        }
        try await deleteObject(key: key)
        return honoured
    }

    public func getObject(key: String, range: ClosedRange<Int64>? = nil, condition: ReadCondition? = nil)
        async throws(S3ClientError) -> ObjectData
    {
        var request = Request(method: "GET", key: key, range: range)
        request.headers += condition?.headers ?? []
        let response = try await send(request)
        return ObjectData(info: try objectInfo(key: key, response), bytes: response.body)
    }

    /// Downloads to a file (created 0600, replaced if present), streamed to disk. A whole
    /// object larger than `multipart.partSize` comes down in ranged parts, in parallel. A whole
    /// object larger than `maxSize` throws `.tooLarge` once its first answer says so, with at
    /// most `maxSize` + 1 bytes of it written.
    @discardableResult
    public func downloadObject(key: String, toFileAt path: String, range: ClosedRange<Int64>? = nil, maxSize: Int64 = .max)
        async throws(S3ClientError) -> ObjectInfo
    {
        let file = try OpenFile(path: path, flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
        let info: ObjectInfo
        let length: Int64
        if let range {
            var request = Request(method: "GET", key: key, range: range)
            request.destination = .file(fileDescriptor: file.descriptor, offset: 0)
            let response = try await send(request)
            info = try objectInfo(key: key, response)
            length = response.curl.bodyLength
        } else {
            info = try await downloadInParts(key: key, file: file, maxSize: maxSize)
            length = info.size
        }
        // A failed attempt may have written further than the one that succeeded.
        try file.truncate(to: length)
        return info
    }

    /// Throws `.service` with kind `.notFound` when there is no such object.
    public func headObject(key: String) async throws(S3ClientError) -> ObjectInfo {
        let response = try await send(Request(method: "HEAD", key: key))
        return try objectInfo(key: key, response)
    }

    /// Deleting a key that does not exist succeeds, as in S3.
    public func deleteObject(key: String) async throws(S3ClientError) {
        _ = try await send(Request(method: "DELETE", key: key))
    }

    /// Deletes in batches of 1,000; returns the keys the server refused, with its reason.
    public func deleteObjects(keys: [String]) async throws(S3ClientError) -> [String: String] {
        var failures: [String: String] = [:]
        for start in stride(from: 0, to: keys.count, by: 1000) {
            let batch = keys[start..<min(start + 1000, keys.count)]
            let objects = batch.map { "<Object><Key>\(xmlEscaped($0))</Key></Object>" }.joined()
            let body = Array("<Delete><Quiet>true</Quiet>\(objects)</Delete>".utf8)
            var request = Request(method: "POST", key: nil, query: [("delete", "")], body: .bytes(body))
            request.payload = .hashing(body)
            request.headers.append(("Content-MD5", MD5.hash(body).base64))
            request.headers.append(("Content-Type", "application/xml"))
            let response = try await send(request)
            let result = try XMLElement.parse(response.body)
            for error in result.children("Error") {
                failures[error.text(of: "Key") ?? ""] = [error.text(of: "Code"), error.text(of: "Message")]
                    .compactMap { $0 }.joined(separator: ": ")
            }
        }
        return failures
    }

    /// ListObjectsV2 across every page.
    /// Every page of a listing. Bounded like any answer: a server repeating a page (a
    /// continuation token seen before) or listing more than `maxObjects` is refused, not read
    /// for ever.
    public func listObjects(prefix: String = "", delimiter: String? = nil, maxObjects: Int = .max) async throws(S3ClientError) -> ListPage {
        var all = ListPage(objects: [], commonPrefixes: [], nextContinuationToken: nil)
        var token: String?
        var tokens: Set<String> = []
        repeat {
            let page = try await listObjectsPage(prefix: prefix, delimiter: delimiter, continuationToken: token)
            all.objects += page.objects
            all.commonPrefixes += page.commonPrefixes
            token = page.nextContinuationToken
            if all.objects.count > maxObjects {
                throw .listingTooLong("the listing of \"\(prefix)\" passed \(maxObjects) objects; not reading on")
            }
            if let token, !tokens.insert(token).inserted {
                throw .listingTooLong("the listing of \"\(prefix)\" repeats a page (continuation token \(token)); not reading on")
            }
        } while token != nil
        return all
    }

    public func listObjectsPage(
        prefix: String = "", delimiter: String? = nil, continuationToken: String? = nil, maxKeys: Int = 1000
    ) async throws(S3ClientError) -> ListPage {
        var query = [("list-type", "2"), ("prefix", prefix), ("max-keys", String(maxKeys))]
        if let delimiter { query.append(("delimiter", delimiter)) }
        if let continuationToken { query.append(("continuation-token", continuationToken)) }
        let response = try await send(Request(method: "GET", key: nil, query: query))
        let result = try XMLElement.parse(response.body)
        guard result.name == "ListBucketResult" else {
            throw .invalidResponse("expected ListBucketResult, got \(result.name)")
        }
        var objects: [ObjectInfo] = []
        for content in result.children("Contents") {
            guard let key = content.text(of: "Key"), let size = content.text(of: "Size").flatMap({ Int64($0) }) else {
                throw .invalidResponse("a listed object lacks Key or Size")
            }
            objects.append(ObjectInfo(
                key: key, size: size, etag: unquoted(content.text(of: "ETag") ?? ""),
                lastModified: content.text(of: "LastModified").flatMap(HTTPDate.parseISO8601)))
        }
        let prefixes = result.children("CommonPrefixes").compactMap { $0.text(of: "Prefix") }
        let truncated = result.text(of: "IsTruncated") == "true"
        let next = truncated ? result.text(of: "NextContinuationToken") : nil
        if truncated && (next ?? "").isEmpty {
            throw .invalidResponse("a truncated listing without a continuation token")
        }
        return ListPage(objects: objects, commonPrefixes: prefixes, nextContinuationToken: next)
    }

    // MARK: Presigned URLs

    public enum PresignMethod: String, Sendable { case get = "GET", put = "PUT" }

    /// A URL anyone holding it may use until it expires (at most seven days, as in S3).
    public func presignedURL(_ method: PresignMethod, key: String, expiresIn: Duration, date: Date = Date()) -> String {
        let target = target(forKey: key)
        let seconds = Int(min(max(expiresIn.components.seconds, 1), Int64(SigV4Signer.presignedExpiryRange.upperBound)))
        let request = SigV4Request(method: method.rawValue, host: target.host, path: target.path)
        let signed = signer.presign(request, expiresIn: seconds, date: date)
        return "\(configuration.endpoint.scheme)://\(target.host)\(request.encodedPath)?\(signed.queryString)"
    }

    // MARK: Multipart

    /// Runs `job` for every part index with at most `concurrency` in flight, handing each
    /// result to `collect` as it arrives (in completion order).
    private func forEachPart<PartResult: Sendable>(
        count: Int, concurrency: Int, _ job: @escaping @Sendable (Int) async throws(S3ClientError) -> PartResult,
        collect: (Int, PartResult) throws(S3ClientError) -> Void
    ) async throws(S3ClientError) {
        do {
            try await withThrowingTaskGroup(of: (Int, PartResult).self) { group in
                var next = 0
                func addPart() {
                    let index = next
                    next += 1
                    group.addTask { (index, try await job(index)) }
                }
                for _ in 0..<min(max(1, concurrency), count) { addPart() }
                while let (index, result) = try await group.next() {
                    try collect(index, result)
                    if next < count { addPart() }
                }
            }
        } catch let error as S3ClientError {
            throw error
        } catch {
            throw .io("\(error)")
        }
    }

    /// The first part's answer tells the object's size and version; the other parts are then
    /// fetched in parallel on condition that the version is still the same (`If-Match`), so
    /// the file never mixes two versions.
    /// The first part asks for no more than `maxSize` + 1 bytes: its answer's Content-Range (or,
    /// from a server ignoring ranges, Content-Length) tells the size before more is read.
    private func downloadInParts(key: String, file: OpenFile, maxSize: Int64) async throws(S3ClientError) -> ObjectInfo {
        let partSize = configuration.multipart.partSize
        var first = Request(method: "GET", key: key, range: 0...min(partSize - 1, maxSize))
        first.destination = .file(fileDescriptor: file.descriptor, offset: 0)
        let response: Response
        do {
            response = try await send(first)
        } catch .service(let error) where error.status == 416 {
            // An empty object has no first byte to ask for.
            var whole = Request(method: "GET", key: key)
            whole.destination = first.destination
            return try objectInfo(key: key, try await send(whole))
        }
        let info = try objectInfo(key: key, response)
        let size = info.size
        guard size <= maxSize else { throw .tooLarge(size: size, maxSize: maxSize) }
        // A server that ignores ranges sends the whole object for every part: ask it once more
        // for the rest rather than once per part.
        let restPartSize = response.curl.rangeIgnoredByServer ? size : partSize
        let restStart = response.curl.bodyLength
        guard restStart < size else { return info }

        // A single-part object's ETag is its MD5: check it over the parts, in order, as the
        // parts before it are complete.
        let digest = configuration.verifyDownloads && isPlainMD5ETag(info.etag) ? StreamingDigest(.md5) : nil
        var hashedThrough: Int64 = 0
        var finishedParts: [Int64: Int64] = [0: restStart]  // offset: length
        func hashFinishedPrefix() throws(S3ClientError) {
            guard let digest else { return }
            while let length = finishedParts.removeValue(forKey: hashedThrough) {
                try file.update(digest, offset: hashedThrough, length: length)
                hashedThrough += length
            }
        }

        let partCount = Int((size - restStart + restPartSize - 1) / restPartSize)
        let etag = info.etag
        try await forEachPart(count: partCount, concurrency: configuration.multipart.concurrency) {
            index throws(S3ClientError) in
            let offset = restStart + Int64(index) * restPartSize
            let range = offset...min(offset + restPartSize, size) - 1
            var request = Request(method: "GET", key: key, range: range)
            request.headers += ReadCondition.ifMatch(etag: etag).headers
            request.destination = .file(fileDescriptor: file.descriptor, offset: offset)
            _ = try await self.send(request)
            return range
        } collect: { _, range throws(S3ClientError) in
            finishedParts[range.lowerBound] = Int64(range.count)
            try hashFinishedPrefix()
        }
        try hashFinishedPrefix()
        if let digest {
            let md5 = digest.finalize().lowercaseHex
            guard md5 == etag.lowercased() else {
                throw .integrity("\(configuration.bucket)/\(key): body MD5 \(md5) does not match ETag \(etag)")
            }
        }
        return info
    }

    private func multipartUpload(key: String, file: OpenFile, condition: WriteCondition?) async throws(S3ClientError)
        -> String
    {
        let created = try await send(Request(method: "POST", key: key, query: [("uploads", "")]))
        guard let uploadID = try XMLElement.parse(created.body).text(of: "UploadId"), !uploadID.isEmpty else {
            throw .invalidResponse("CreateMultipartUpload answered without an UploadId")
        }
        do throws(S3ClientError) {
            let parts = try await uploadParts(key: key, uploadID: uploadID, file: file)
            let list = parts.enumerated().map { index, etag in
                "<Part><PartNumber>\(index + 1)</PartNumber><ETag>\"\(xmlEscaped(etag))\"</ETag></Part>"
            }.joined()
            let body = Array("<CompleteMultipartUpload>\(list)</CompleteMultipartUpload>".utf8)
            var complete = Request(method: "POST", key: key, query: [("uploadId", uploadID)], body: .bytes(body))
            complete.payload = .hashing(body)
            complete.headers.append(("Content-Type", "application/xml"))
            complete.headers += condition?.headers ?? []
            let response = try await send(complete)
            // S3 may answer 200 and put the failure in the body.
            let result = try XMLElement.parse(response.body)
            if result.name == "Error" {
                throw S3ClientError.service(S3Error(status: 500, body: response.body, requestID: nil, resource: key))
            }
            return unquoted(result.text(of: "ETag") ?? response.etag)
        } catch {
            do {
                _ = try await send(Request(method: "DELETE", key: key, query: [("uploadId", uploadID)]))
            } catch let abortError {
                logger.warning("could not abort multipart upload", metadata: ["key": "\(key)", "error": "\(abortError)"])
            }
            throw error
        }
    }

    /// Each part is hashed for its Content-MD5, then streamed from the file. Reading a part
    /// into memory once instead measured slower: the page faults of fresh part buffers cost
    /// more than a second read from the page cache.
    private func uploadParts(key: String, uploadID: String, file: OpenFile) async throws(S3ClientError) -> [String] {
        let partSize = configuration.multipart.partSize
        let partCount = Int((file.size + partSize - 1) / partSize)
        var etags = [String](repeating: "", count: partCount)
        try await forEachPart(count: partCount, concurrency: configuration.multipart.concurrency) {
            index throws(S3ClientError) in
            let offset = Int64(index) * partSize
            let length = min(partSize, file.size - offset)
            var request = Request(
                method: "PUT", key: key, query: [("partNumber", String(index + 1)), ("uploadId", uploadID)],
                body: .file(fileDescriptor: file.descriptor, offset: offset, length: length))
            request.headers.append(("Content-MD5", try file.md5(offset: offset, length: length).base64))
            return try await self.send(request).etag
        } collect: { index, etag in
            etags[index] = etag
        }
        return etags
    }

    // MARK: Requests

    struct Request: Sendable {
        var method: String
        var key: String?
        var query: [(name: String, value: String)] = []
        var headers: [(name: String, value: String)] = []
        var body: RequestBody = .empty
        /// File bodies are sent unsigned (hashing them would read them twice more) and are
        /// protected by Content-MD5 instead.
        var payload = SigV4Payload.unsigned
        var destination: ResponseDestination = .memory
        var range: ClosedRange<Int64>?

        init(method: String, key: String?, query: [(name: String, value: String)] = [], body: RequestBody = .empty,
             range: ClosedRange<Int64>? = nil) {
            self.method = method
            self.key = key
            self.query = query
            self.body = body
            self.range = range
            if case .empty = body { payload = .empty }
            if let range { headers.append(("Range", "bytes=\(range.lowerBound)-\(range.upperBound)")) }
        }
    }

    struct Response {
        var curl: CurlResponse
        var body: [UInt8] { curl.body }
        var etag: String { unquoted(curl.header("ETag") ?? "") }
    }

    private func target(forKey key: String?) -> (host: String, path: String) {
        let authority = configuration.endpoint.authority
        let objectPath = key.map { "/" + $0 } ?? ""
        switch configuration.addressing {
        case .path: return (authority, "/" + configuration.bucket + objectPath)
        case .virtualHosted: return ("\(configuration.bucket).\(authority)", objectPath.isEmpty ? "/" : objectPath)
        }
    }

    /// Signs and sends a request, retrying what is worth retrying, and turns every failure
    /// into an `S3ClientError`.
    private func send(_ request: Request) async throws(S3ClientError) -> Response {
        // The value is not named: it may come from a server (an ETag) or a caller.
        if let header = request.headers.first(where: { !isSingleLine($0.name) || !isSingleLine($0.value) }) {
            throw .invalidRequest("the \(header.name.debugDescription) header holds a line break or NUL")
        }
        let target = target(forKey: request.key)
        let resource = request.key.map { "\(configuration.bucket)/\($0)" } ?? configuration.bucket
        let unsigned = SigV4Request(
            method: request.method, host: target.host, path: target.path, query: request.query,
            headers: request.headers)
        let url = "\(configuration.endpoint.scheme)://\(target.host)\(unsigned.encodedPath)"
            + (unsigned.encodedQuery.isEmpty ? "" : "?\(unsigned.encodedQuery)")

        var attempt = 1
        while true {
            // Signed again on every attempt: a signature is only valid for 15 minutes.
            let signed = signer.signHeaders(unsigned, payload: request.payload, date: Date())
            let curlRequest = CurlRequest(
                method: request.method, url: url, headers: request.headers + signed.headersToAdd, body: request.body,
                destination: request.destination, requestedRange: request.range,
                digestsWholeObjectBody: configuration.verifyDownloads && request.method == "GET" && request.key != nil,
                timeouts: configuration.timeouts, tls: configuration.tls)
            let started = ContinuousClock.now
            let error: S3ClientError
            do {
                let response = try await loop.perform(curlRequest)
                logger.debug("s3 request", metadata: [
                    "method": "\(request.method)", "resource": "\(resource)", "status": "\(response.status)",
                    "bytes": "\(response.bodyLength)", "duration": "\(ContinuousClock.now - started)",
                ])
                if (200..<300).contains(response.status) {
                    try verify(response, of: request, resource: resource)
                    return Response(curl: response)
                }
                error = .service(S3Error(
                    status: response.status, body: response.body,
                    requestID: response.header("x-amz-request-id"), resource: resource))
            } catch let failure as TransportError {
                error = .transport(failure)
            } catch let failure as S3ClientError {
                error = failure
            } catch {
                throw .io("\(error)")
            }
            guard error.isRetryable, attempt < configuration.retry.maxAttempts, !Task.isCancelled else {
                throw error
            }
            let delay = configuration.retry.delay(beforeAttempt: attempt)
            logger.warning("s3 request failed, retrying", metadata: [
                "method": "\(request.method)", "resource": "\(resource)", "attempt": "\(attempt)",
                "error": "\(error)", "delay": "\(delay)",
            ])
            do { try await Task.sleep(for: delay) } catch { throw .transport(TransportError(code: -1, message: "cancelled")) }
            attempt += 1
        }
    }

    /// Checks that the body is the object the server described: its length, and its MD5
    /// where the ETag is one (single-part uploads without SSE-KMS) and the body is the whole
    /// object.
    private func verify(_ response: CurlResponse, of request: Request, resource: String) throws(S3ClientError) {
        guard request.method == "GET", request.key != nil else { return }
        if let range = request.range {
            let available: Int64
            if response.rangeIgnoredByServer {
                available = Int64(response.header("Content-Length") ?? "") ?? response.bodyLength
            } else if let header = response.header("Content-Range") {
                // Parts are written where they were asked for, so the answer must start there.
                guard let answered = ContentRange(parsing: header), answered.first == range.lowerBound else {
                    throw .integrity("\(resource): asked for bytes \(range), the server sent \(header)")
                }
                available = answered.objectSize ?? range.upperBound + 1
            } else {
                available = range.upperBound + 1
            }
            let expected = max(0, min(range.upperBound + 1, available) - range.lowerBound)
            if response.bodyLength != expected {
                throw .integrity("\(resource): expected \(expected) bytes of range \(range), got \(response.bodyLength)")
            }
        } else if let length = response.header("Content-Length").flatMap({ Int64($0) }), length != response.bodyLength {
            throw .integrity("\(resource): expected \(length) bytes, got \(response.bodyLength)")
        }
        let etag = unquoted(response.header("ETag") ?? "")
        if let md5 = response.bodyMD5?.lowercaseHex, md5 != etag.lowercased() {
            throw .integrity("\(resource): body MD5 \(md5) does not match ETag \(etag)")
        }
    }

    private func objectInfo(key: String, _ response: Response) throws(S3ClientError) -> ObjectInfo {
        let size: Int64
        if let total = response.curl.header("Content-Range").flatMap(ContentRange.init(parsing:))?.objectSize {
            size = total
        } else if let length = response.curl.header("Content-Length").flatMap({ Int64($0) }) {
            size = length
        } else {
            size = response.curl.bodyLength
        }
        return ObjectInfo(
            key: key, size: size, etag: response.etag,
            lastModified: response.curl.header("Last-Modified").flatMap(HTTPDate.parseRFC1123))
    }
}

private extension WriteCondition {
    var headers: [(String, String)] {
        switch self {
        case .ifAbsent: [("If-None-Match", "*")]
        case .ifMatch(let etag): [("If-Match", "\"\(etag)\"")]
        }
    }
}

private extension ReadCondition {
    var headers: [(String, String)] {
        switch self {
        case .ifMatch(let etag): [("If-Match", "\"\(etag)\"")]
        case .ifNoneMatch(let etag): [("If-None-Match", "\"\(etag)\"")]
        }
    }
}

/// Whether a header name or value goes on the wire as written: curl sends a CR or LF as is,
/// which ends the header there and starts another, and cuts a value at NUL.
private func isSingleLine(_ text: String) -> Bool {
    !text.utf8.contains { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") || $0 == 0 }
}

/// Whether an ETag (quoted or not) is a plain MD5, which S3 makes it for single-part uploads
/// without SSE-KMS; multipart ETags end in `-<parts>`.
func isPlainMD5ETag(_ etag: String) -> Bool {
    let value = unquoted(etag)
    return value.utf8.count == 32 && value.allSatisfy(\.isHexDigit)
}

func unquoted(_ etag: String) -> String {
    var text = Substring(etag)
    if text.hasPrefix("W/") { text = text.dropFirst(2) }
    if text.hasPrefix("\""), text.hasSuffix("\""), text.count >= 2 { text = text.dropFirst().dropLast() }
    return String(text)
}

/// An open file descriptor, closed when the last user lets go (the parts of a multipart
/// upload share one).
final class OpenFile: Sendable {
    let descriptor: Int32
    let path: String
    let size: Int64

    convenience init(path: String, flags: Int32, mode: mode_t = 0) throws(S3ClientError) {
        let descriptor = open(path, flags | O_CLOEXEC, mode)
        guard descriptor >= 0 else { throw .io("cannot open \(path): \(String(cString: strerror(errno)))") }
        try self.init(owning: descriptor, path: path)
    }

    /// A copy of a descriptor the caller keeps: an unlinked file has no path to open again.
    convenience init(duplicating descriptor: Int32) throws(S3ClientError) {
        let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw .io("cannot duplicate file descriptor \(descriptor): \(String(cString: strerror(errno)))") }
        try self.init(owning: copy, path: "file descriptor \(descriptor)")
    }

    private init(owning descriptor: Int32, path: String) throws(S3ClientError) {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            close(descriptor)
            throw .io("cannot stat \(path): \(String(cString: strerror(errno)))")
        }
        self.descriptor = descriptor
        self.path = path
        self.size = Int64(status.st_size)
    }

    deinit {
        close(descriptor)
    }

    func md5(offset: Int64, length: Int64) throws(S3ClientError) -> [UInt8] {
        let digest = StreamingDigest(.md5)
        try update(digest, offset: offset, length: length)
        return digest.finalize()
    }

    /// Feeds a region of the file to `digest`, through a buffer of at most a megabyte.
    func update(_ digest: StreamingDigest, offset: Int64, length: Int64) throws(S3ClientError) {
        var buffer = [UInt8](repeating: 0, count: Int(min(length, 1 << 20)))
        var position = offset
        while position < offset + length {
            let count = Int(min(Int64(buffer.count), offset + length - position))
            try buffer.withUnsafeMutableBytes { raw in
                Result { () throws(S3ClientError) in
                    try read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]), at: position, digest: digest)
                }
            }.get()
            position += Int64(count)
        }
    }

    /// Fills `buffer` from `offset` with pread and hashes it.
    private func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, digest: StreamingDigest)
        throws(S3ClientError)
    {
        var done = 0
        while done < buffer.count {
            let count = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset + Int64(done)))
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                throw .io("cannot read \(path): \(count == 0 ? "file shrank" : String(cString: strerror(errno)))")
            }
            done += count
        }
        digest.update(UnsafeRawBufferPointer(buffer))
    }

    func truncate(to length: Int64) throws(S3ClientError) {
        guard ftruncate(descriptor, off_t(length)) == 0 else {
            throw .io("cannot truncate \(path): \(String(cString: strerror(errno)))")
        }
    }
}
