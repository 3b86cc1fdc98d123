import Crypto
import FoundationEssentials
import Glibc

/// Where a snapshot is written before it is uploaded: memory while it is small (most deltas
/// are a few KiB), an unlinked temporary file once it passes `memoryLimit`. A base of a large
/// session then costs disk rather than memory, and each upload in flight holds at most
/// `memoryLimit` bytes, whatever the sessions' sizes.
final class SnapshotSpool: ByteSink {
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
        if let file {
            // The file has no name left; the process's descriptor link opens it again.
            _ = try await store.put(key, fileAt: "/proc/self/fd/\(file.fileDescriptor)", condition: nil)
        } else {
            _ = try await store.put(key, bytes: buffer, condition: nil)
        }
    }

    /// A file in the temporary directory (TMPDIR, else /tmp), unlinked at once: nothing is
    /// left behind, even by a crash, and no other process can open it by name.
    private static func temporaryFile() throws -> FileDescriptorSink {
        let directory = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array("\(directory)/sync-agent-spool-XXXXXX".utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard descriptor >= 0 else { throw SystemError("create a temporary file in", path: directory) }
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        unlink(template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        return FileDescriptorSink(fileDescriptor: descriptor, path: "a temporary file in \(directory)")
    }
}
