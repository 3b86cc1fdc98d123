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
    let signer: SigV4Signer
    let loop: CurlMultiLoop
    let logger: Logger

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
}
