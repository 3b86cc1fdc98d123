import FoundationEssentials
import Logging
import SystemSupport

/// Every request: addressed, signed, sent, retried, and its answer checked.
extension S3Client {
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
        /// The bytes wanted. `init` asks for them with a `Range` header; set afterwards, it only
        /// bounds the answer, which is cut after it.
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

    func target(forKey key: String?) -> (host: String, path: String) {
        let authority = configuration.endpoint.authority
        let objectPath = key.map { "/" + $0 } ?? ""
        switch configuration.addressing {
        case .path: return (authority, "/" + configuration.bucket + objectPath)
        case .virtualHosted: return ("\(configuration.bucket).\(authority)", objectPath.isEmpty ? "/" : objectPath)
        }
    }

    /// Signs and sends a request, retrying what is worth retrying, and turns every failure
    /// into an `S3ClientError`.
    func send(_ request: Request) async throws(S3ClientError) -> Response {
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
        var random = SystemRandomNumberGenerator()
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
            guard !Task.isCancelled, let delay = configuration.retry.delay(after: error, attempt: attempt, random: &random)
            else { throw error }
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

    func objectInfo(key: String, _ response: Response) throws(S3ClientError) -> ObjectInfo {
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


extension WriteCondition {
    var headers: [(String, String)] {
        switch self {
        case .ifAbsent: [("If-None-Match", "*")]
        case .ifMatch(let etag): [("If-Match", "\"\(etag)\"")]
        }
    }
}

extension ReadCondition {
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

