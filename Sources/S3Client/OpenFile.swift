import Glibc
import SystemSupport

/// A file a transfer reads or writes, with its size when opened. Its descriptor is closed when
/// the last user lets go (the parts of a multipart upload share it).
final class OpenFile: Sendable {
    let descriptor: FileDescriptor
    let size: Int64

    convenience init(path: String, flags: Int32, mode: mode_t = 0) throws(S3ClientError) {
        let descriptor = open(path, flags | O_CLOEXEC, mode)
        guard descriptor >= 0 else { throw .io("\(SystemError("cannot open", path: path))") }
        try self.init(FileDescriptor(owning: descriptor, path: path))
    }

    /// A copy of a descriptor the caller keeps: an unlinked file has no path to open again.
    convenience init(duplicating descriptor: FileDescriptor) throws(S3ClientError) {
        let copy = fcntl(descriptor.raw, F_DUPFD_CLOEXEC, 0)
        let source = "file descriptor \(descriptor.raw)"
        guard copy >= 0 else { throw .io("\(SystemError("cannot duplicate", path: source))") }
        try self.init(FileDescriptor(owning: copy, path: source))
    }

    init(_ descriptor: FileDescriptor) throws(S3ClientError) {
        var status = stat()
        guard fstat(descriptor.raw, &status) == 0 else { throw .io("\(SystemError("cannot stat", path: descriptor.path))") }
        self.descriptor = descriptor
        self.size = Int64(status.st_size)
    }

    /// The MD5 of a region, read and hashed on a thread of its own: a part of 16 MiB takes tens
    /// of milliseconds, for which a thread of the cooperative pool (one a core) must not block.
    func md5(offset: Int64, length: Int64) async throws(S3ClientError) -> [UInt8] {
        try await runBlocking { () throws(S3ClientError) in
            let digest = StreamingDigest(.md5)
            try self.update(digest, offset: offset, length: length)
            return digest.finalize()
        }
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

    /// Fills `buffer` from `offset` and hashes it.
    private func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, digest: StreamingDigest)
        throws(S3ClientError)
    {
        let count: Int
        do {
            count = try descriptor.readFully(into: buffer, at: offset)
        } catch {
            throw .io("\(SystemError("cannot read", path: descriptor.path, errno: error.errno))")
        }
        guard count == buffer.count else { throw .io("cannot read \(descriptor.path): file shrank") }
        digest.update(UnsafeRawBufferPointer(buffer))
    }

    func truncate(to length: Int64) throws(S3ClientError) {
        guard ftruncate(descriptor.raw, off_t(length)) == 0 else {
            throw .io("\(SystemError("cannot truncate", path: descriptor.path))")
        }
    }
}
