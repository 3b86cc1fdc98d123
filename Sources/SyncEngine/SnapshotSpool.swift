import FoundationEssentials
import Glibc
import SessionCrypto
import SystemSupport

/// Where a snapshot is written before it is uploaded: memory while it is small (most deltas
/// are a few KiB), an unlinked temporary file once it passes `memoryLimit`. A base of a large
/// session then costs disk rather than memory, and each upload in flight holds at most
/// `memoryLimit` bytes, whatever the sessions' sizes.
///
/// `@unchecked Sendable`: a spool is filled on the thread that writes the snapshot, then handed
/// whole to the replicator that uploads it; it is never used from two threads at once.
final class SnapshotSpool: ByteSink, @unchecked Sendable {
    static let memoryLimit = 256 << 10

    private var buffer: [UInt8] = []
    private var file: FileDescriptorSink?
    private(set) var size: Int64 = 0

    deinit {
        if let file { close(file.fileDescriptor) }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        if file == nil, buffer.count + bytes.count > Self.memoryLimit {
            let spilled = try Self.temporaryFile()
            try buffer.withUnsafeBytes { try spilled.write($0) }
            buffer = []
            file = spilled
        }
        if let file { try file.write(bytes) } else { buffer.append(contentsOf: bytes) }
        size += Int64(bytes.count)
    }

    /// Writes what the spool holds to `key` in `store`.
    func upload(to store: any ObjectStore, key: String) async throws(StoreError) {
        _ = try await store.put(key, body: file.map { .file(descriptor: $0.fileDescriptor) } ?? .bytes(buffer), condition: nil)
    }

    /// A file in the temporary directory, unlinked at once: nothing is left behind, even by a
    /// crash, and no other process can open it by name.
    private static func temporaryFile() throws -> FileDescriptorSink {
        let (descriptor, path) = try createTemporaryFile(named: "sync-agent-spool")
        unlink(path)
        return FileDescriptorSink(fileDescriptor: descriptor, path: "a temporary file in \(temporaryDirectory)")
    }
}

/// The temporary directory: TMPDIR, else /tmp.
private var temporaryDirectory: String {
    ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
}

/// A new empty file `<temporary directory>/<prefix>-XXXXXX` (0600, close-on-exec): its descriptor and path.
private func createTemporaryFile(named prefix: String) throws -> (descriptor: Int32, path: String) {
    var template = Array("\(temporaryDirectory)/\(prefix)-XXXXXX".utf8CString)
    let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard descriptor >= 0 else { throw SystemError("create a temporary file in", path: temporaryDirectory) }
    _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
    return (descriptor, template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
}

/// An object read back as a stream, through a temporary file: a snapshot read into memory whole
/// cost its size (a base of 100,000 files is about 70 MB) and as much again while it grew.
final class DownloadedObject: Sendable {
    private let descriptor: Int32
    private let key: String
    let size: Int64

    /// Nil when the store has no such object. One larger than `maxSize` is refused with
    /// `.invalidObject` before more than `maxSize` bytes of it are on disk.
    init?(_ key: String, maxSize: Int64, from store: any ObjectStore) async throws {
        let (descriptor, path) = try createTemporaryFile(named: "sync-agent-download")
        // The store writes the object by name; once it has, the name goes and only this descriptor
        // (opened before, so it sees what was written) keeps the file.
        defer { unlink(path) }
        let info: StoredObjectInfo
        do {
            guard let downloaded = try await store.download(key, toFileAt: path, maxSize: maxSize) else {
                close(descriptor)
                return nil
            }
            info = downloaded
        } catch {
            close(descriptor)
            throw error
        }
        self.descriptor = descriptor
        self.key = key
        self.size = info.size
    }

    deinit {
        close(descriptor)
    }

    /// Writes the object to `key` in `store`, streamed from the file.
    func upload(to store: any ObjectStore, key: String) async throws(StoreError) {
        _ = try await store.put(key, body: .file(descriptor: descriptor), condition: nil)
    }

    /// The object's bytes from the start; each call reads them again (one reader at a time).
    func source() throws -> FileDescriptorSource {
        guard lseek(descriptor, 0, SEEK_SET) == 0 else { throw SystemError("seek in", path: "a download of \(key)") }
        return FileDescriptorSource(fileDescriptor: descriptor, path: "a download of \(key)")
    }
}

/// A snapshot object downloaded to be read or copied (a restore, an agent loading its chain, the
/// hybrid mirror copying it from the local store to S3): in memory
/// while it is small (deltas, bases of ordinary sessions), in an unlinked temporary file when the
/// listing says it is larger than `SnapshotSpool.memoryLimit`, so a large session costs disk,
/// not its size in RAM.
enum DownloadedSnapshot: Sendable {
    case inMemory([UInt8])
    case spooled(DownloadedObject)

    /// Nil when the store has no such object. Throws `SnapshotError.changedDuringRead` when it
    /// is not the `size` the listing said: keys are never written twice, so it was replaced since.
    /// The listed size bounds the read, so a larger object in its place costs neither memory nor
    /// disk past it.
    init?(_ key: String, size: Int64, from store: any ObjectStore) async throws {
        let downloadedSize: Int64
        do {
            if size > SnapshotSpool.memoryLimit {
                guard let object = try await DownloadedObject(key, maxSize: size, from: store) else { return nil }
                self = .spooled(object)
                downloadedSize = object.size
            } else {
                guard let object = try await store.get(key, maxSize: size) else { return nil }
                self = .inMemory(object.bytes)
                downloadedSize = Int64(object.bytes.count)
            }
        } catch StoreError.invalidObject(let reason) {
            // The listing saw a regular file of `size` bytes (a store lists nothing else): one
            // larger, or no regular file, is in its place now.
            throw SnapshotError.changedDuringRead("\(reason) (it was listed with \(size) bytes: replaced since)")
        }
        guard downloadedSize == size else {
            throw SnapshotError.changedDuringRead("\(key) is \(downloadedSize) bytes, not the \(size) it was listed with: it was replaced since")
        }
    }

    /// Writes the object to `key` in `store`.
    func upload(to store: any ObjectStore, key: String) async throws(StoreError) {
        switch self {
        case .inMemory(let bytes): _ = try await store.put(key, body: .bytes(bytes), condition: nil)
        case .spooled(let object): try await object.upload(to: store, key: key)
        }
    }

    /// The object's bytes from the start; each call reads them again.
    func source() throws -> any ByteSource {
        switch self {
        case .inMemory(let bytes): BufferSource(bytes)
        case .spooled(let object): try object.source()
        }
    }
}
