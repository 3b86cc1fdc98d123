import Logging
import SystemSupport

/// Multipart uploads, and downloads in ranged parts: parts of one object in flight at once.
extension S3Client {
    /// `job` for every part index, `multipart.concurrency` at most in flight; the results in
    /// part order.
    private func forEachPart<PartResult: Sendable>(
        count: Int, _ job: @escaping @Sendable (Int) async throws(S3ClientError) -> PartResult
    ) async throws(S3ClientError) -> [PartResult] {
        do {
            return try await (0..<count).concurrentMap(limit: max(1, configuration.multipart.concurrency)) {
                try await job($0)
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
    func downloadInParts(key: String, file: OpenFile, maxSize: Int64) async throws(S3ClientError) -> ObjectInfo {
        let partSize = configuration.multipart.partSize
        var first = Request(method: "GET", key: key, range: 0...min(partSize - 1, maxSize))
        first.destination = .file(fileDescriptor: file.descriptor, offset: 0)
        let response: Response
        do {
            response = try await send(first)
        } catch .service(let error) where error.status == 416 {
            // An empty object has no first byte to ask for: it is asked for whole, and the
            // answer cut after `maxSize` + 1 bytes, as one from a server ignoring ranges is.
            var whole = Request(method: "GET", key: key)
            whole.range = maxSize < .max ? 0...maxSize : nil
            whole.destination = first.destination
            let info = try objectInfo(key: key, try await send(whole))
            guard info.size <= maxSize else { throw .tooLarge(size: info.size, maxSize: maxSize) }
            return info
        }
        let info = try objectInfo(key: key, response)
        let size = info.size
        guard size <= maxSize else { throw .tooLarge(size: size, maxSize: maxSize) }
        // A server that ignores ranges sends the whole object for every part: ask it once more
        // for the rest rather than once per part.
        let restPartSize = response.curl.rangeIgnoredByServer ? size : partSize
        let restStart = response.curl.bodyLength
        guard restStart < size else { return info }

        let partCount = Int((size - restStart + restPartSize - 1) / restPartSize)
        let etag = info.etag
        _ = try await forEachPart(count: partCount) { index throws(S3ClientError) in
            let offset = restStart + Int64(index) * restPartSize
            var request = Request(method: "GET", key: key, range: offset...min(offset + restPartSize, size) - 1)
            request.headers += ReadCondition.ifMatch(etag: etag).headers
            request.destination = .file(fileDescriptor: file.descriptor, offset: offset)
            _ = try await self.send(request)
        }
        // A single-part object's ETag is its MD5: check it over the file, whole once every part is in.
        if configuration.verifyDownloads && isPlainMD5ETag(etag) {
            let digest = StreamingDigest(.md5)
            try file.update(digest, offset: 0, length: size)
            let md5 = digest.finalize().lowercaseHex
            guard md5 == etag.lowercased() else {
                throw .integrity("\(configuration.bucket)/\(key): body MD5 \(md5) does not match ETag \(etag)")
            }
        }
        return info
    }

    func multipartUpload(key: String, file: OpenFile, condition: WriteCondition?) async throws(S3ClientError)
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
        return try await forEachPart(count: partCount) { index throws(S3ClientError) in
            let offset = Int64(index) * partSize
            let length = min(partSize, file.size - offset)
            var request = Request(
                method: "PUT", key: key, query: [("partNumber", String(index + 1)), ("uploadId", uploadID)],
                body: .file(fileDescriptor: file.descriptor, offset: offset, length: length))
            request.headers.append(("Content-MD5", try file.md5(offset: offset, length: length).base64))
            return try await self.send(request).etag
        }
    }
}
