import FoundationEssentials
import Glibc
import S3Client
import SyncEngine

/// The objects of a store under a key prefix of one S3 bucket: the S3 backend of the engine's
/// storage seam. The conformance is declared here, in the backend's module, and checked when it
/// compiles (litestream's `var _ litestream.ReplicaClient = (*ReplicaClient)(nil)`).
public struct S3ObjectStore: ObjectStore {
    public let client: S3Client
    /// Empty, or ending with "/"; every store key is appended to it.
    public let prefix: String
    public let location: String

    /// `prefix` follows the key rules ("backups/prod"); a missing trailing "/" is added.
    public init(client: S3Client, prefix: String = "") throws(StoreError) {
        let trimmed = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        if !trimmed.isEmpty {
            do { try validateKey(trimmed) } catch { throw .rejected("invalid key prefix \"\(prefix)\"") }
        }
        self.client = client
        self.prefix = trimmed.isEmpty ? "" : trimmed + "/"
        self.location = "s3://\(client.configuration.bucket)" + (trimmed.isEmpty ? "" : "/\(trimmed)")
    }

    @discardableResult
    public func put(_ key: String, body: ObjectBody, condition: SyncEngine::WriteCondition?) async throws(StoreError) -> String {
        try validateKey(key)
        let condition = condition.map(S3Client::WriteCondition.init)
        do {
            switch body {
            case .bytes(let bytes): return try await client.putObject(key: prefix + key, bytes: bytes, condition: condition)
            case .file(let descriptor): return try await client.putObject(key: prefix + key, fileDescriptor: descriptor, condition: condition)
            }
        } catch .service(let error) where error.kind == .notFound && condition != nil {
            // AWS answers If-Match on a missing key with 404 NoSuchKey: the condition failed.
            throw .preconditionFailed(key: key)
        } catch {
            throw failure(error, key: key)
        }
    }

    public func get(_ key: String, maxSize: Int64) async throws(StoreError) -> StoredObject? {
        try validateKey(key)
        let object: StoredObject?
        do {
            // The object is asked for as its first `maxSize` + 1 bytes: the answer's
            // Content-Range gives the object's size, and however large it is, at most one byte
            // past the bound comes into memory (the client cuts an answer that ignores the range).
            let read = try await client.getObject(key: prefix + key, range: 0...maxSize)
            object = StoredObject(info: storedInfo(read.info, key: key), bytes: read.bytes)
        } catch .service(let error) where error.kind == .notFound {
            return nil
        } catch .service(let error) where error.status == 416 {
            // An empty object has no satisfiable range: HTTP refuses it, the store answers with
            // the bytes that are there, none.
            object = try await head(key).map { StoredObject(info: $0, bytes: []) }
        } catch {
            throw failure(error, key: key)
        }
        if let object, object.info.size > maxSize || object.bytes.count > maxSize {
            throw .invalidObject(tooLargeMessage(key, size: max(object.info.size, Int64(object.bytes.count)), maxSize: maxSize, in: location))
        }
        return object
    }

    public func download(_ key: String, toFileAt path: String, maxSize: Int64) async throws(StoreError) -> StoredObjectInfo? {
        try validateKey(key)
        do {
            return storedInfo(try await client.downloadObject(key: prefix + key, toFileAt: path, maxSize: maxSize), key: key)
        } catch {
            // The client created (or truncated) the file before the request; what is left is
            // no object, or part of one.
            unlink(path)
            if error.isNotFound { return nil }
            throw failure(error, key: key)
        }
    }

    public func head(_ key: String) async throws(StoreError) -> StoredObjectInfo? {
        try validateKey(key)
        do {
            return storedInfo(try await client.headObject(key: prefix + key), key: key)
        } catch where error.isNotFound {
            return nil
        } catch {
            throw failure(error, key: key)
        }
    }

    public func list(prefix listed: String) async throws(StoreError) -> [StoredObjectInfo] {
        try validatePrefix(listed)
        let objects = try await storeErrors(key: listed) { () async throws(S3ClientError) in
            try await client.listObjects(prefix: prefix + listed, maxObjects: maxListedObjects).objects
        }
        return objects.map { object in
            storedInfo(object, key: String(decoding: object.key.utf8.dropFirst(prefix.utf8.count), as: UTF8.self))
        }.sortedByKey()
    }

    public func delete(_ keys: [String]) async throws(StoreError) {
        for key in keys { try validateKey(key) }
        guard !keys.isEmpty else { return }
        let refused = try await storeErrors(key: keys[0]) { () async throws(S3ClientError) in
            try await client.deleteObjects(keys: keys.map { prefix + $0 })
        }
        guard refused.isEmpty else {
            let reasons = refused.sorted { $0.key < $1.key }.prefix(3).map { "\($0.key): \($0.value)" }
            throw .rejected("\(refused.count) of \(keys.count) deletions refused in \(location) (\(reasons.joined(separator: "; ")))")
        }
    }

    public func probeConditionalWrites() async throws(StoreError) -> Bool {
        let key = ".sync-agent-probe-\(UInt64.random(in: .min ... .max))"
        return try await storeErrors(key: key) { () async throws(S3ClientError) in
            try await client.probeConditionalWrites(key: prefix + key)
        }
    }

    /// Counts the failure by its S3 error code, then sorts it for the engine. Only failures
    /// that reach the engine count: the client's retried attempts and the answers the store
    /// turns into results (a missing key is nil) do not.
    private func failure(_ error: S3ClientError, key: String) -> StoreError {
        switch error {
        case .service(let failure): EngineMetrics.s3Error(code: failure.code.isEmpty ? "HTTP\(failure.status)" : failure.code)
        case .transport: EngineMetrics.s3Error(code: "transport")
        case .integrity: EngineMetrics.s3Error(code: "integrity")
        case .invalidResponse, .listingTooLong: EngineMetrics.s3Error(code: "invalid_response")
        case .io, .invalidRequest, .tooLarge: break  // a local file, the request itself or the object, not the store
        }
        return StoreError(error, key: key)
    }

    private func storedInfo(_ info: ObjectInfo, key: String) -> StoredObjectInfo {
        StoredObjectInfo(key: key, size: info.size, etag: info.etag, lastModified: info.lastModified)
    }

    private func storeErrors<Result>(
        key: String, _ operation: () async throws(S3ClientError) -> Result
    ) async throws(StoreError) -> Result {
        do {
            return try await operation()
        } catch {
            throw failure(error, key: key)
        }
    }
}

extension S3Client::WriteCondition {
    /// The engine's condition, sent as `If-None-Match: *` or `If-Match`.
    init(_ condition: SyncEngine::WriteCondition) {
        switch condition {
        case .ifAbsent: self = .ifAbsent
        case .ifMatch(let etag): self = .ifMatch(etag: etag)
        }
    }
}

extension StoreError {
    /// Sorts a client failure, after the client's own retries, by what the engine should do.
    init(_ error: S3ClientError, key: String) {
        switch error {
        case .service(let failure):
            switch failure.kind {
            case .preconditionFailed: self = .preconditionFailed(key: key)
            // AWS: a conditional write raced another; retrying decides who won.
            case _ where failure.code == "ConditionalRequestConflict": self = .unavailable(failure.description)
            case .throttled, .serverError: self = .unavailable(failure.description)
            case .notFound, .noSuchBucket, .notModified, .accessDenied, .invalidCredentials, .clientError:
                self = .rejected(failure.description)
            }
        case .transport, .integrity: self = .unavailable(error.description)
        case .invalidResponse, .invalidRequest: self = .rejected(error.description)
        case .io(let reason): self = .io(reason)
        case .tooLarge, .listingTooLong: self = .invalidObject("\(key): \(error)")
        }
    }
}
