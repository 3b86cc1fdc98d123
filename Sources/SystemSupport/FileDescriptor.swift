import Glibc

/// An open file descriptor, closed exactly once: when the last reference to its owner goes. What
/// it guarantees: the owner never leaks the descriptor and never closes it twice. What it does
/// not: `raw` is a plain number, and Swift may release the owner right after its last use, which
/// can be the read of `raw`; a call made with that number afterwards may find it closed, or
/// reused by another open. So a descriptor is used through this type's methods (`self` lives
/// through each call), or the owner is kept alive across every use of `raw`
/// (`withExtendedLifetime`). Nor does it stop code from closing `raw` by hand.
public final class FileDescriptor: Sendable {
    public let raw: Int32
    /// What the descriptor is open on, for error messages only.
    public let path: String

    /// Takes ownership of `raw`, which must be open.
    public init(owning raw: Int32, path: String) {
        precondition(raw >= 0, "a FileDescriptor owns an open descriptor")
        self.raw = raw
        self.path = path
    }

    deinit {
        close(raw)
    }

    /// Two connected sockets of `type` (SOCK_CLOEXEC added), as socketpair(2) makes them.
    public static func socketPair(type: Int32, path: String) throws(SystemError) -> (FileDescriptor, FileDescriptor) {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw SystemError("socketpair", path: path)
        }
        return (FileDescriptor(owning: pair[0], path: path), FileDescriptor(owning: pair[1], path: path))
    }
}

extension FileDescriptor {
    /// fsync(2): what was written to the file is on disk (for a directory, its entries).
    public func sync() throws(SystemError) {
        guard fsync(raw) == 0 else { throw SystemError("fsync", path: path) }
    }
}

/// Positional reads and writes (pread, pwrite): the descriptor's position is left alone, so parts
/// of one file can be read or written concurrently and a caller's file needs no rewinding.
extension FileDescriptor {
    /// Reads from `offset` until `buffer` is full or the file ends, retrying EINTR and short
    /// reads. Returns how many bytes it read: fewer than `buffer.count` only when the file ended
    /// first, which the caller decides about (the end of a file read in chunks, or a file that shrank).
    public func readFully(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(SystemError) -> Int {
        var done = 0
        while done < buffer.count {
            let count = pread(raw, buffer.baseAddress! + done, buffer.count - done, off_t(offset + Int64(done)))
            if count < 0 {
                if errno == EINTR { continue }
                throw SystemError("read", path: path)
            }
            if count == 0 { break }
            done += count
        }
        return done
    }

    /// Writes all of `bytes` at `offset`, retrying EINTR and short writes.
    public func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(SystemError) {
        var remaining = bytes
        var position = offset
        while !remaining.isEmpty {
            let written = pwrite(raw, remaining.baseAddress, remaining.count, off_t(position))
            if written < 0 {
                if errno == EINTR { continue }
                throw SystemError("write", path: path)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
            position += Int64(written)
        }
    }
}
