import FoundationEssentials

/// The storage seam, like litestream's ReplicaClient: everything the engine needs from a
/// backend, nothing more. `FileSystemStore` (local mode) and `S3ObjectStore` implement it,
/// and one conformance suite runs unchanged against each.
///
/// Keys are relative ("sessions/abc/head"): components separated by "/", none empty, none
/// "." or "..". A store maps them under its own root or prefix.
public protocol ObjectStore: Sendable {
    /// Where the objects live, for logs and errors: "s3://bucket/prefix", "file:///dir".
    var location: String { get }

    /// Writes a whole object: a reader sees the old object or the new one, never a part.
    /// Returns the new object's ETag. A failed `condition` throws `.preconditionFailed`.
    @discardableResult
    func put(_ key: String, body: ObjectBody, condition: WriteCondition?) async throws(StoreError) -> String

    /// The object; nil when there is no such object. An object larger than `maxSize` bytes is
    /// refused with `.invalidObject`, from its size before its bytes are read, and while they are
    /// read should it grow: a read never costs more memory than what the object can legitimately
    /// be (a head is a few hundred bytes; one of 3 GB, or a FIFO in its place, must not take the
    /// agent down or hang it).
    func get(_ key: String, maxSize: Int64) async throws(StoreError) -> StoredObject?

    /// Streams the object into a new file at `path` (mode 0600); nil when there is no such object.
    /// An object larger than `maxSize` bytes (the size its listing said) is refused with
    /// `.invalidObject` and no file is left: a replaced or huge object must not fill the disk.
    func download(_ key: String, toFileAt path: String, maxSize: Int64) async throws(StoreError) -> StoredObjectInfo?

    /// nil when there is no such object.
    func head(_ key: String) async throws(StoreError) -> StoredObjectInfo?

    /// Every object whose key starts with `prefix`, sorted by key. ETags may be empty here.
    func list(prefix: String) async throws(StoreError) -> [StoredObjectInfo]

    /// Deletes the keys; keys that do not exist are not an error.
    func delete(_ keys: [String]) async throws(StoreError)

    /// Whether the backend enforces `WriteCondition`s (rclone's S3 server ignores them).
    /// Fencing relies on them, so the engine checks once at start and warns when they are off.
    func probeConditionalWrites() async throws(StoreError) -> Bool
}

/// What a put writes, read as often as the store needs (restic's `Save` takes a rewindable
/// reader): each attempt, a retry included, reads it again from the start.
public enum ObjectBody: Sendable {
    case bytes([UInt8])
    /// An open file, read with `pread` from offset 0 to its end at each attempt: the file position
    /// is never used, so the caller's descriptor needs no rewinding, and the file needs no name (a
    /// spool is an unlinked temporary file). The store does not close it; the caller keeps it
    /// open until the put returns. S3Client uploads it through `putObject(key:fileDescriptor:)`,
    /// which duplicates the descriptor for its parts, so this type needs nothing of S3Client's.
    case file(descriptor: Int32)
}

/// Conditions on a write, for fencing: create only, or replace only a known version. The S3
/// store sends them as `If-None-Match: *` and `If-Match`; the local store checks them under its lock.
public enum WriteCondition: Sendable, Equatable {
    /// Fails with `.preconditionFailed` when the key exists.
    case ifAbsent
    /// Fails with `.preconditionFailed` unless the object's current ETag is `etag`.
    case ifMatch(etag: String)
}

public struct StoredObjectInfo: Sendable, Equatable {
    public var key: String
    public var size: Int64
    /// Opaque version tag for `WriteCondition.ifMatch`; may be empty in listings.
    public var etag: String
    public var lastModified: Date?

    public init(key: String, size: Int64, etag: String, lastModified: Date?) {
        self.key = key
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
    }
}

public struct StoredObject: Sendable {
    public var info: StoredObjectInfo
    public var bytes: [UInt8]

    public init(info: StoredObjectInfo, bytes: [UInt8]) {
        self.info = info
        self.bytes = bytes
    }
}

/// How a store operation failed, sorted by what the caller should do about it.
public enum StoreError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The store could not be reached or failed (network, 5xx, throttling): try again later;
    /// nothing is lost, the change stays pending.
    case unavailable(String)
    /// A conditional write lost: another writer changed the object first.
    case preconditionFailed(key: String)
    /// The store refused the request in a way retrying cannot fix (credentials, missing
    /// bucket, permissions, a malformed key): an operator must act.
    case rejected(String)
    /// A local file could not be read or written.
    case io(String)
    /// What the store holds or answers cannot be what was asked for: an object larger than such
    /// an object can be, one that is not a regular file (local store), a listing without end.
    /// Asking again gives the same answer.
    case invalidObject(String)

    public var description: String {
        switch self {
        case .unavailable(let reason): "store unavailable: \(reason)"
        case .preconditionFailed(let key): "\(key) was changed by another writer"
        case .rejected(let reason): "store refused the request: \(reason)"
        case .io(let reason): reason
        case .invalidObject(let reason): "invalid object: \(reason)"
        }
    }
}

/// Checks a relative key: "/"-separated components, none empty, "." or "..", no NUL.
/// Components are split on the UTF-8 bytes, as a file system sees them: split into
/// Characters, "/" followed by a combining mark would be one Character and hide a "..".
package func validateKey(_ key: String) throws(StoreError) {
    let components = key.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    guard !key.isEmpty, !key.utf8.contains(0),
        components.allSatisfy({ !$0.isEmpty && !$0.elementsEqual(".".utf8) && !$0.elementsEqual("..".utf8) })
    else {
        throw .rejected("invalid object key \"\(key)\"")
    }
}

/// The most objects one listing returns. A store of 10,000 sessions, each with a few hundred
/// snapshots, lists a few million under "sessions/"; a listing past this is a store answering
/// without end (a server repeating its pages, a tree grown by something else), and reading on
/// would take the agent's memory.
package let maxListedObjects = 5_000_000

package func tooManyObjectsMessage(_ prefix: String, in location: String) -> String {
    "the listing of \"\(prefix)\" in \(location) passed \(maxListedObjects) objects, more than a store of sessions holds; not reading on"
}

/// Why an object is refused by `get(_:maxSize:)` or `download(_:toFileAt:maxSize:)`.
/// `size` is what the store says, or as much as was read before it went past the bound.
package func tooLargeMessage(_ key: String, size: Int64, maxSize: Int64, in location: String) -> String {
    "\(key) in \(location) is \(size) bytes or more, larger than such an object can be (at most \(maxSize)); not reading it"
}
