import Glibc

/// The push end of a byte pipeline (files → tar → zstd → encryption → object).
/// Every stage streams through these so no stage ever holds a whole archive in memory.
public protocol ByteSink: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws
}

/// The pull end of a byte pipeline (object → decryption → zstd → tar → files).
public protocol ByteSource: AnyObject {
    /// Fills at most `buffer.count` bytes and returns how many; 0 means end of stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

extension ByteSource {
    /// Copies everything left in the source to `sink`, in 64 KiB pieces.
    public func copy(to sink: ByteSink) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = try read(into: buffer)
            if count == 0 { return }
            try sink.write(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        }
    }

    /// Reads and discards everything left, so the checks a stream makes at its end
    /// (authentication, declared lengths) still run.
    public func drain() throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { buffer.deallocate() }
        while try read(into: buffer) > 0 {}
    }
}

/// A failed system call, with the path it concerned when there is one.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public let operation: String
    public let path: String?
    public let errno: Int32

    public init(_ operation: String, path: String? = nil, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        if let path { return "\(operation) \(path): \(reason)" }
        return "\(operation): \(reason)"
    }
}

/// Collects everything written to it; for small objects and tests.
public final class BufferSink: ByteSink {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        self.bytes.append(contentsOf: bytes)
    }
}

/// Serves a byte array from memory.
public final class BufferSource: ByteSource {
    private let bytes: [UInt8]
    private var offset = 0

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = min(buffer.count, bytes.count - offset)
        guard count > 0 else { return 0 }
        bytes.withUnsafeBytes { all in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: all[offset..<offset + count]))
        }
        offset += count
        return count
    }
}

/// Writes to a file descriptor the caller owns; retries short writes and EINTR.
public final class FileDescriptorSink: ByteSink, Sendable {
    public let fileDescriptor: Int32
    private let path: String?

    public init(fileDescriptor: Int32, path: String? = nil) {
        self.fileDescriptor = fileDescriptor
        self.path = path
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var remaining = bytes
        while !remaining.isEmpty {
            let written = Glibc.write(fileDescriptor, remaining.baseAddress, remaining.count)
            if written < 0 {
                if errno == EINTR { continue }
                throw SystemError("write", path: path)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }
}

/// Reads from a file descriptor the caller owns; retries EINTR.
public final class FileDescriptorSource: ByteSource {
    public let fileDescriptor: Int32
    private let path: String?

    public init(fileDescriptor: Int32, path: String? = nil) {
        self.fileDescriptor = fileDescriptor
        self.path = path
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let count = Glibc.read(fileDescriptor, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno != EINTR { throw SystemError("read", path: path) }
        }
    }
}
