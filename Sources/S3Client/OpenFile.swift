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
    convenience init(duplicating descriptor: Int32) throws(S3ClientError) {
        let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw .io("\(SystemError("cannot duplicate", path: "file descriptor \(descriptor)"))") }
        try self.init(FileDescriptor(owning: copy, path: "file descriptor \(descriptor)"))
    }

    init(_ descriptor: FileDescriptor) throws(S3ClientError) {
        var status = stat()
        guard fstat(descriptor.raw, &status) == 0 else { throw .io("\(SystemError("cannot stat", path: descriptor.path))") }
        self.descriptor = descriptor
        self.size = Int64(status.st_size)
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
            let count = pread(descriptor.raw, buffer.baseAddress! + done, buffer.count - done, off_t(offset + Int64(done)))
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                throw .io(count == 0 ? "cannot read \(descriptor.path): file shrank" : "\(SystemError("cannot read", path: descriptor.path))")
            }
            done += count
        }
        digest.update(UnsafeRawBufferPointer(buffer))
    }

    func truncate(to length: Int64) throws(S3ClientError) {
        guard ftruncate(descriptor.raw, off_t(length)) == 0 else {
            throw .io("\(SystemError("cannot truncate", path: descriptor.path))")
        }
    }
}
