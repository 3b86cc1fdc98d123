import FoundationEssentials
import Glibc
import SystemSupport

/// The `local` mode store: each object is a file under a root directory, at the path of its
/// key. Objects are written to `<root>/.tmp/`, fsynced and renamed into place, so a crash
/// leaves the old object or the new one; conditional writes are enforced under an flock on
/// `<root>/.lock`, which holds across processes on one host (`backup` beside `watch`).
///
/// A key cannot be both an object and a directory of others here ("a" and "a/b"), which S3
/// allows; the engine's layout never does that. The first components `.tmp` and `.lock` are
/// the store's own.
public struct FileSystemStore: ObjectStore {
    /// Absolute, without a trailing "/".
    public let root: String
    public var location: String { "file://\(root)" }

    private var temporaryDirectory: String { root + "/" + Self.temporaryName }
    private static let temporaryName = ".tmp"
    private static let lockName = ".lock"

    /// With `.create`, creates `root` (and any missing parents, 0700) when it does not exist;
    /// otherwise `root` must exist. With `.read` nothing is created or needs to be writable.
    public init(root: String, access storeAccess: StoreAccess = .create) throws(StoreError) {
        var absolute = root.hasPrefix("/") ? root : FileManager.default.currentDirectoryPath + "/" + root
        absolute = "/" + absolute.split(separator: "/").filter { $0 != "." }.joined(separator: "/")
        self.root = absolute
        if storeAccess == .create { try makeDirectories(absolute) }
        let needed = storeAccess == .read ? R_OK | X_OK : R_OK | W_OK | X_OK
        guard access(absolute, needed) == 0 else {
            throw .rejected("cannot use \(absolute) as the local store: \(systemMessage())")
        }
        if storeAccess != .read { try makeDirectories(temporaryDirectory) }
    }

    @discardableResult
    public func put(_ key: String, body: ObjectBody, condition: WriteCondition?) async throws(StoreError) -> String {
        try checkKey(key)
        return try await runBlocking { () throws(StoreError) in
            try writeObject(key, condition: condition) { file throws(StoreError) in
                switch body {
                case .bytes(let bytes):
                    try file.write(bytes[...])
                    return MD5.hash(bytes)
                case .file(let descriptor):
                    let digest = StreamingDigest(.md5)
                    let source = "file descriptor \(descriptor)"
                    try readAll(descriptor, readFailure: { .io("cannot read \(source): \(systemMessage())") }) { chunk, _ throws(StoreError) in
                        digest.update(chunk)
                        try file.write(chunk)
                    }
                    return digest.finalize()
                }
            }
        }
    }

    public func get(_ key: String, maxSize: Int64) async throws(StoreError) -> StoredObject? {
        try checkKey(key)
        return try await runBlocking { () throws(StoreError) in
            guard let (file, status) = try openObject(key) else { return nil }
            try checkSize(key, Int64(status.st_size), maxSize: maxSize)
            var bytes: [UInt8] = []
            let digest = StreamingDigest(.md5)
            try readAll(file.raw, readFailure: { storeFailure("read", file.path) }) { chunk, offset throws(StoreError) in
                // Written to since it was opened: the size checked above no longer holds.
                try checkSize(key, offset + Int64(chunk.count), maxSize: maxSize)
                digest.update(chunk)
                bytes += chunk
            }
            return StoredObject(info: info(key, status, etag: digest.finalize().lowercaseHex), bytes: bytes)
        }
    }

    public func download(_ key: String, toFileAt path: String, maxSize: Int64) async throws(StoreError) -> StoredObjectInfo? {
        try checkKey(key)
        return try await runBlocking { () throws(StoreError) in
            guard let (file, status) = try openObject(key) else { return nil }
            try checkSize(key, Int64(status.st_size), maxSize: maxSize)
            guard let destination = FileDescriptor.creating( path, flags: O_TRUNC) else {
                throw .io("cannot create \(path): \(systemMessage())")
            }
            do throws(StoreError) {
                let digest = StreamingDigest(.md5)
                try readAll(file.raw, readFailure: { storeFailure("read", file.path) }) { chunk, offset throws(StoreError) in
                    // Written to since it was opened: the size checked above no longer holds.
                    try checkSize(key, offset + Int64(chunk.count), maxSize: maxSize)
                    digest.update(chunk)
                    try destination.write(chunk, failure: { .io("cannot write \(path): \(systemMessage($0))") })
                }
                return info(key, status, etag: digest.finalize().lowercaseHex)
            } catch {
                unlink(path)
                throw error
            }
        }
    }

    public func head(_ key: String) async throws(StoreError) -> StoredObjectInfo? {
        try checkKey(key)
        return try await runBlocking { () throws(StoreError) in
            guard let (file, status) = try openObject(key) else { return nil }
            return info(key, status, etag: try file.md5Hex())
        }
    }

    public func list(prefix: String) async throws(StoreError) -> [StoredObjectInfo] {
        let (directory, namePrefix) = try validatePrefix(prefix)
        if isReserved(directory) { return [] }
        return try await runBlocking { () throws(StoreError) in
            var objects: [StoredObjectInfo] = []
            for name in try entries(of: directory) where name.utf8.starts(with: namePrefix.utf8) {
                let key = directory.isEmpty ? name : directory + "/" + name
                if !isReserved(key) { try collect(key, into: &objects) }
            }
            return objects.sortedByKey()
        }
    }

    public func delete(_ keys: [String]) async throws(StoreError) {
        for key in keys { try checkKey(key) }
        try await runBlocking { () throws(StoreError) in
            try withLock { () throws(StoreError) in
                var changedDirectories: Set<String> = []
                for key in keys {
                    let path = root + "/" + key
                    guard unlink(path) == 0 else {
                        // A directory at the key holds other objects; it is not an object.
                        if [ENOENT, ENOTDIR, EISDIR].contains(errno) { continue }
                        throw storeFailure("delete", path)
                    }
                    var directory = parentPath(path)
                    while directory != root, rmdir(directory) == 0 {
                        directory = parentPath(directory)
                    }
                    changedDirectories.insert(directory)
                }
                // A directory emptied by a later key is gone; its surviving parent is in the set.
                for directory in changedDirectories where access(directory, F_OK) == 0 {
                    try syncDirectory(directory)
                }
            }
        }
    }

    public func probeConditionalWrites() async throws(StoreError) -> Bool {
        true
    }

    // MARK: Writing

    /// Writes a new file in `.tmp` with `fill` (which returns the content's MD5), makes it
    /// durable, then, under the lock, checks `condition` and renames it into place.
    private func writeObject(
        _ key: String, condition: WriteCondition?, fill: (FileDescriptor) throws(StoreError) -> [UInt8]
    ) throws(StoreError) -> String {
        let path = root + "/" + key
        let temporaryPath = "\(temporaryDirectory)/\(String(UInt64.random(in: .min ... .max), radix: 16))"
        guard let file = FileDescriptor.creating( temporaryPath, flags: O_EXCL) else {
            throw storeFailure("create", temporaryPath)
        }
        var renamed = false
        defer { if !renamed { unlink(temporaryPath) } }
        let etag = try fill(file).lowercaseHex
        guard fsync(file.raw) == 0 else { throw storeFailure("fsync", temporaryPath) }

        try withLock { () throws(StoreError) in
            switch condition {
            case nil: break
            case .ifAbsent:
                if try openObject(key) != nil { throw .preconditionFailed(key: key) }
            case .ifMatch(let expected):
                guard let (current, _) = try openObject(key), try current.md5Hex() == expected else {
                    throw .preconditionFailed(key: key)
                }
            }
            try makeParentDirectories(of: key)
            guard rename(temporaryPath, path) == 0 else {
                if errno == EISDIR {
                    throw .rejected("cannot store \(key) in \(location): other objects are stored below it")
                }
                throw storeFailure("rename into", path)
            }
            renamed = true
            try syncDirectory(parentPath(path))
        }
        return etag
    }

    /// Creates the missing directories above `key`'s file, each 0700 and made durable in its parent.
    private func makeParentDirectories(of key: String) throws(StoreError) {
        var directory = root
        var components: [Substring] = []
        for component in key.split(separator: "/").dropLast() {
            let parent = directory
            directory += "/" + component
            components.append(component)
            if mkdir(directory, 0o700) == 0 {
                guard chmod(directory, 0o700) == 0 else { throw storeFailure("chmod", directory) }
                try syncDirectory(parent)
                continue
            }
            guard errno == EEXIST else { throw storeFailure("create directory", directory) }
            var status = stat()
            guard lstat(directory, &status) == 0 else { throw storeFailure("stat", directory) }
            guard status.st_mode & S_IFMT == S_IFDIR else {
                throw .rejected("cannot store \(key) in \(location): \(components.joined(separator: "/")) is an object")
            }
        }
    }

    /// Serialises writers, in this process and others, for the span of `body`.
    private func withLock<Value>(_ body: () throws(StoreError) -> Value) throws(StoreError) -> Value {
        let lockPath = root + "/" + Self.lockName
        guard let lock = FileDescriptor.opening( lockPath, flags: O_RDWR | O_CREAT) else {
            throw storeFailure("open", lockPath)
        }
        while flock(lock.raw, LOCK_EX) != 0 {
            guard errno == EINTR else { throw storeFailure("lock", lockPath) }
        }
        // Closing the descriptor (when `lock` goes) releases the lock.
        return try body()
    }

    // MARK: Reading

    /// The object's open file and status; nil when nothing is at the key, or a directory (which
    /// holds other objects, as a key prefix does on S3). Anything else that is not a regular file
    /// is refused: it is opened without following a symbolic link and without blocking (an open
    /// of a FIFO for reading waits for a writer, forever), then `fstat` must say regular file.
    private func openObject(_ key: String) throws(StoreError) -> (FileDescriptor, stat)? {
        let path = root + "/" + key
        guard let file = FileDescriptor.opening( path, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK) else {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            if errno == ELOOP { throw .invalidObject("\(key) in \(location) is a symbolic link, not a regular file") }
            throw storeFailure("open", path)
        }
        var status = stat()
        guard fstat(file.raw, &status) == 0 else { throw storeFailure("stat", path) }
        switch status.st_mode & S_IFMT {
        case S_IFREG: return (file, status)
        case S_IFDIR: return nil
        case S_IFIFO: throw .invalidObject("\(key) in \(location) is a FIFO, not a regular file")
        case S_IFSOCK: throw .invalidObject("\(key) in \(location) is a socket, not a regular file")
        default: throw .invalidObject("\(key) in \(location) is a device, not a regular file")
        }
    }

    private func checkSize(_ key: String, _ size: Int64, maxSize: Int64) throws(StoreError) {
        if size > maxSize { throw .invalidObject(tooLargeMessage(key, size: size, maxSize: maxSize, in: location)) }
    }

    /// Adds the object at `key`, or every object below it when it is a directory.
    private func collect(_ key: String, into objects: inout [StoredObjectInfo]) throws(StoreError) {
        let path = root + "/" + key
        var status = stat()
        guard lstat(path, &status) == 0 else {
            // Deleted while the listing ran.
            if errno == ENOENT { return }
            throw storeFailure("stat", path)
        }
        switch status.st_mode & S_IFMT {
        case S_IFREG:
            guard objects.count < maxListedObjects else { throw .invalidObject(tooManyObjectsMessage(key, in: location)) }
            objects.append(info(key, status, etag: ""))
        case S_IFDIR:
            for name in try entries(of: key) { try collect(key + "/" + name, into: &objects) }
        default: break
        }
    }

    /// The names in the directory at `key` ("" for the root); none when it does not exist.
    private func entries(of key: String) throws(StoreError) -> [String] {
        let path = key.isEmpty ? root : root + "/" + key
        do {
            return try FileDescriptor.directoryEntries(atPath: path, displayedAs: path).map { String(decoding: $0.name, as: UTF8.self) }
        } catch where error.errno == ENOENT || error.errno == ENOTDIR {
            return []
        } catch {
            throw storeFailure(error.operation == "opendir" ? "open directory" : "read directory", path, code: error.errno)
        }
    }

    private func info(_ key: String, _ status: stat, etag: String) -> StoredObjectInfo {
        let modified = Double(status.st_mtim.tv_sec) + Double(status.st_mtim.tv_nsec) / 1e9
        return StoredObjectInfo(
            key: key, size: Int64(status.st_size), etag: etag, lastModified: Date(timeIntervalSince1970: modified))
    }

    // MARK: Helpers

    private func checkKey(_ key: String) throws(StoreError) {
        try validateKey(key)
        if isReserved(key) { throw .rejected("object key \"\(key)\" is reserved in \(location)") }
    }

    /// Whether `key` is, or is below, one of the store's own files.
    private func isReserved(_ key: String) -> Bool {
        let first = key.prefix { $0 != "/" }
        return first == Self.temporaryName || first == Self.lockName
    }
}

/// A failure of the store's own files, sorted like a server's: permissions, a read-only file
/// system or a clash of names need an operator; a full disk or an I/O error may pass.
private func storeFailure(_ operation: String, _ path: String, code: Int32 = errno) -> StoreError {
    let reason = "cannot \(operation) \(path): \(systemMessage(code))"
    switch code {
    case EACCES, EPERM, EROFS, ENOTDIR, EISDIR, ENAMETOOLONG, ELOOP: return .rejected(reason)
    default: return .unavailable(reason)
    }
}

private func systemMessage(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}

private func parentPath(_ path: String) -> String {
    String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
}

/// Makes the directory's entries (a rename, a new or removed name) durable.
private func syncDirectory(_ path: String) throws(StoreError) {
    guard let directory = FileDescriptor.opening( path, flags: O_RDONLY | O_DIRECTORY) else {
        throw storeFailure("open directory", path)
    }
    guard fsync(directory.raw) == 0 else { throw storeFailure("fsync", path) }
}

/// Creates `path` and any missing parents, each 0700 and made durable in its parent.
private func makeDirectories(_ path: String) throws(StoreError) {
    var status = stat()
    if stat(path, &status) == 0 {
        guard status.st_mode & S_IFMT == S_IFDIR else { throw .rejected("\(path) exists and is not a directory") }
        return
    }
    guard errno == ENOENT else { throw storeFailure("stat", path) }
    let parent = parentPath(path)
    try makeDirectories(parent.isEmpty ? "/" : parent)
    guard mkdir(path, 0o700) == 0 || errno == EEXIST else { throw storeFailure("create directory", path) }
    guard chmod(path, 0o700) == 0 else { throw storeFailure("chmod", path) }
    try syncDirectory(parent.isEmpty ? "/" : parent)
}

/// Hands every chunk of the open file, from offset 0 to its end, to `body` with its offset;
/// pread leaves the descriptor's position alone (an `ObjectBody.file` is the caller's).
private func readAll(
    _ descriptor: Int32, readFailure: () -> StoreError, _ body: (ArraySlice<UInt8>, Int64) throws(StoreError) -> Void
) throws(StoreError) {
    // Sized to the file, up to 1 MiB: a delta is a few KiB, and zeroing a whole MiB for it cost
    // each small put a million instructions. A file that grew meanwhile takes more reads.
    var status = stat()
    let size = fstat(descriptor, &status) == 0 ? Int(status.st_size) : 1 << 20
    var buffer = [UInt8](repeating: 0, count: min(max(size, 1), 1 << 20))
    var offset: Int64 = 0
    while true {
        let count = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, off_t(offset)) }
        if count < 0 {
            if errno == EINTR { continue }
            throw readFailure()
        }
        if count == 0 { return }
        try body(buffer[0..<count], offset)
        offset += Int64(count)
    }
}

/// The store's ways of opening files and writing and hashing them, on the one descriptor owner.
extension FileDescriptor {
    /// nil with `errno` set when the file cannot be opened.
    fileprivate static func opening(_ path: String, flags: Int32) -> FileDescriptor? {
        let raw = open(path, flags | O_CLOEXEC, 0o600)
        return raw < 0 ? nil : FileDescriptor(owning: raw, path: path)
    }

    /// A file written with exactly 0600, whatever the umask; nil with `errno` set on failure.
    fileprivate static func creating(_ path: String, flags: Int32) -> FileDescriptor? {
        let raw = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | flags, 0o600)
        guard raw >= 0 else { return nil }
        let file = FileDescriptor(owning: raw, path: path)
        return fchmod(raw, 0o600) == 0 ? file : nil
    }

    fileprivate func write(_ bytes: ArraySlice<UInt8>) throws(StoreError) {
        try write(bytes, failure: { storeFailure("write", path, code: $0) })
    }

    /// `failure` makes the error from the write's errno.
    fileprivate func write(_ bytes: ArraySlice<UInt8>, failure: (Int32) -> StoreError) throws(StoreError) {
        do {
            try bytes.withUnsafeBytes { try FileDescriptorSink(fileDescriptor: raw, path: path).write($0) }
        } catch {
            throw failure((error as? SystemError)?.errno ?? EIO)
        }
    }

    fileprivate func md5Hex() throws(StoreError) -> String {
        let digest = StreamingDigest(.md5)
        try readAll(raw, readFailure: { storeFailure("read", path) }) { chunk, _ in digest.update(chunk) }
        return digest.finalize().lowercaseHex
    }
}
