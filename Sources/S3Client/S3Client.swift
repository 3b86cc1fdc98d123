import Foundation
import Glibc
import Logging

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
        let file = try OpenFile(path: path, flags: O_RDONLY)
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

    /// Downloads to a file (created 0600, replaced if present), streamed to disk.
    @discardableResult
    public func downloadObject(key: String, toFileAt path: String, range: ClosedRange<Int64>? = nil)
        async throws(S3ClientError) -> ObjectInfo
    {
        let file = try OpenFile(path: path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        var request = Request(method: "GET", key: key, range: range)
        request.destination = .file(fileDescriptor: file.descriptor)
        let response = try await send(request)
        return try objectInfo(key: key, response)
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
    public func listObjects(prefix: String = "", delimiter: String? = nil) async throws(S3ClientError) -> ListPage {
        var all = ListPage(objects: [], commonPrefixes: [], nextContinuationToken: nil)
        var token: String?
        repeat {
            let page = try await listObjectsPage(prefix: prefix, delimiter: delimiter, continuationToken: token)
            all.objects += page.objects
            all.commonPrefixes += page.commonPrefixes
            token = page.nextContinuationToken
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

    private func uploadParts(key: String, uploadID: String, file: OpenFile) async throws(S3ClientError) -> [String] {
        let partSize = configuration.multipart.partSize
        let partCount = Int((file.size + partSize - 1) / partSize)
        var etags = [String](repeating: "", count: partCount)
        do {
            try await withThrowingTaskGroup(of: (Int, String).self) { group in
                var next = 0
                func addPart() {
                    let index = next
                    next += 1
                    group.addTask {
                        let offset = Int64(index) * partSize
                        let length = min(partSize, file.size - offset)
                        var request = Request(
                            method: "PUT", key: key,
                            query: [("partNumber", String(index + 1)), ("uploadId", uploadID)],
                            body: .file(fileDescriptor: file.descriptor, offset: offset, length: length))
                        request.headers.append(("Content-MD5", try file.md5(offset: offset, length: length).base64))
                        return (index, try await self.send(request).etag)
                    }
                }
                for _ in 0..<min(configuration.multipart.concurrency, partCount) { addPart() }
                while let (index, etag) = try await group.next() {
                    etags[index] = etag
                    if next < partCount { addPart() }
                }
            }
        } catch let error as S3ClientError {
            throw error
        } catch {
            throw .io("\(error)")
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
        let target = target(forKey: request.key)
        let resource = request.key.map { "\(configuration.bucket)/\($0)" } ?? configuration.bucket
        let unsigned = SigV4Request(
            method: request.method, host: target.host, path: target.path, query: request.query,
            headers: request.headers)
        let url = "\(configuration.endpoint.scheme)://\(target.host)\(unsigned.encodedPath)"
            + (unsigned.encodedQuery.isEmpty ? "" : "?\(unsigned.encodedQuery)")
        var fileStart: off_t = 0
        if case .file(let descriptor) = request.destination { fileStart = lseek(descriptor, 0, SEEK_CUR) }

        var attempt = 1
        while true {
            // Signed again on every attempt: a signature is only valid for 15 minutes.
            let signed = signer.signHeaders(unsigned, payload: request.payload, date: Date())
            let curlRequest = CurlRequest(
                method: request.method, url: url, headers: request.headers + signed.headersToAdd, body: request.body,
                destination: request.destination, requestedRange: request.range,
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
            if case .file(let descriptor) = request.destination {
                guard ftruncate(descriptor, fileStart) == 0, lseek(descriptor, fileStart, SEEK_SET) == fileStart else {
                    throw .io("cannot rewind the download file: \(String(cString: strerror(errno)))")
                }
            }
            do { try await Task.sleep(for: delay) } catch { throw .transport(TransportError(code: -1, message: "cancelled")) }
            attempt += 1
        }
    }

    /// Checks that the body is the object the server described: its length, and its MD5
    /// where the ETag is one (single-part uploads without SSE-KMS).
    private func verify(_ response: CurlResponse, of request: Request, resource: String) throws(S3ClientError) {
        guard request.method == "GET", request.key != nil else { return }
        if let range = request.range {
            let available: Int64
            if response.rangeIgnoredByServer {
                available = Int64(response.header("Content-Length") ?? "") ?? response.bodyLength
            } else if let total = response.header("Content-Range")?.split(separator: "/").last, let size = Int64(total) {
                available = size
            } else {
                available = range.upperBound + 1
            }
            let expected = max(0, min(range.upperBound + 1, available) - range.lowerBound)
            if response.bodyLength != expected {
                throw .integrity("\(resource): expected \(expected) bytes of range \(range), got \(response.bodyLength)")
            }
            return
        }
        if let length = response.header("Content-Length").flatMap({ Int64($0) }), length != response.bodyLength {
            throw .integrity("\(resource): expected \(length) bytes, got \(response.bodyLength)")
        }
        let etag = unquoted(response.header("ETag") ?? "")
        if configuration.verifyDownloads, etag.count == 32, etag.allSatisfy(\.isHexDigit),
            etag.lowercased() != response.bodyMD5.lowercaseHex
        {
            throw .integrity("\(resource): body MD5 \(response.bodyMD5.lowercaseHex) does not match ETag \(etag)")
        }
    }

    private func objectInfo(key: String, _ response: Response) throws(S3ClientError) -> ObjectInfo {
        let size: Int64
        if let range = response.curl.header("Content-Range")?.split(separator: "/").last, let total = Int64(range) {
            size = total
        } else if let length = response.curl.header("Content-Length").flatMap({ Int64($0) }) {
            size = response.curl.rangeIgnoredByServer ? length : length
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

    init(path: String, flags: Int32, mode: mode_t = 0) throws(S3ClientError) {
        let descriptor = open(path, flags | O_CLOEXEC, mode)
        guard descriptor >= 0 else { throw .io("cannot open \(path): \(String(cString: strerror(errno)))") }
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
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var position = offset
        let end = offset + length
        while position < end {
            let count = buffer.withUnsafeMutableBytes { raw in
                pread(descriptor, raw.baseAddress, Int(min(Int64(raw.count), end - position)), off_t(position))
            }
            guard count > 0 else {
                throw .io("cannot read \(path): \(count == 0 ? "file shrank" : String(cString: strerror(errno)))")
            }
            buffer.withUnsafeBytes { digest.update(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            position += Int64(count)
        }
        return digest.finalize()
    }
}
