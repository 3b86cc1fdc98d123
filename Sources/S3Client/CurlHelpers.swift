import FoundationEssentials
import Glibc
import SystemSupport

/// A `Content-Range: bytes first-last/size` header; the size may be `*` (unknown).
struct ContentRange: Equatable {
    var first: Int64
    var last: Int64
    var objectSize: Int64?

    init(first: Int64, last: Int64, objectSize: Int64?) {
        self.first = first
        self.last = last
        self.objectSize = objectSize
    }

    init?(parsing text: String) {
        let trimmed = text.trimmingWhitespace()
        guard trimmed.lowercased().hasPrefix("bytes ") else { return nil }
        let spec = trimmed.dropFirst("bytes ".count).split(separator: "/", omittingEmptySubsequences: false)
        guard spec.count == 2 else { return nil }
        let bounds = spec[0].split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count == 2, let first = Int64(bounds[0]), let last = Int64(bounds[1]), first <= last else {
            return nil
        }
        let size = Int64(spec[1])
        guard spec[1] == "*" || size.map({ $0 > last }) == true else { return nil }
        self.init(first: first, last: last, objectSize: size)
    }
}

extension FileDescriptor {
    /// Writes all of `bytes` at `offset` with pwrite, so that parts of one object can be written
    /// into one file concurrently.
    func writeAll(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(SystemError) {
        var remaining = bytes
        var position = offset
        while !remaining.isEmpty {
            let written = pwrite(raw, remaining.baseAddress, remaining.count, off_t(position))
            if written < 0 {
                if errno == EINTR { continue }
                throw SystemError("write response body")
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
            position += Int64(written)
        }
    }
}

extension Duration {
    var milliseconds: Int {
        let (seconds, attoseconds) = components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }
}
