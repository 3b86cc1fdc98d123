import Glibc
import SystemSupport

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
            let count = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset + Int64(done)))
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                throw .io("cannot read \(path): \(count == 0 ? "file shrank" : String(cString: strerror(errno)))")
            }
            done += count
        }
        digest.update(UnsafeRawBufferPointer(buffer))
    }

    func truncate(to length: Int64) throws(S3ClientError) {
        guard ftruncate(descriptor, off_t(length)) == 0 else {
            throw .io("cannot truncate \(path): \(String(cString: strerror(errno)))")
        }
    }
}
