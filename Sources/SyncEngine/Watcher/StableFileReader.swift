import FoundationEssentials
import Glibc
import SessionArchive
import SystemSupport

/// A file's complete content together with the state it had throughout the read.
public struct StableFile: Sendable, Equatable {
    public var bytes: [UInt8]
    public var state: FileState
    /// A SQLite database, captured as one image (`SQLiteDatabase.capture`): its main file's state
    /// does not follow its content (a commit writes the `-wal`), so it is no fingerprint.
    public var isDatabase = false
}

/// The outcome of a read that can be told apart from a failure: every case but `.stable` means
/// "keep the previous good version and try again on the next event".
public enum StableRead: Sendable, Equatable {
    case stable(StableFile)
    /// The file changed (size, mtime or inode) while it was read, or was replaced by another:
    /// a writer is at work and its close will bring another event.
    case unstable
    /// A `*.json` file whose bytes do not parse: half-written, or empty.
    case invalidJSON(FileState)
    /// The file does not exist (any more): its removal brings, or brought, its own event.
    case missing
}

/// Reads session files so that a half-written one never passes for a complete one.
///
/// Baileys rewrites files in place (O_TRUNC, write, close, no fsync), so a read can see a
/// truncated or half-written file. The reader takes a file only when its size, mtime and inode
/// were the same before and after the read (and the path still names the same inode), and a
/// `*.json` file only when its bytes parse as JSON. A rewrite that keeps the size within one mtime
/// tick can slip past the first check; the writer's close then brings another event, and the
/// newer read wins.
public struct StableFileReader: Sendable {
    public var maxFileSize: Int
    /// Runs between the read and the second stat, so tests can change the file exactly there.
    var afterRead: (@Sendable (String) -> Void)?

    public init(maxFileSize: Int = 64 << 20) {
        self.maxFileSize = maxFileSize
    }

    /// `path`: a `FileName` string (the session directory's path and the file's name).
    public func read(_ path: String) throws(WatcherError) -> StableRead {
        // O_NONBLOCK so that a FIFO planted in a session does not block the open; it is refused below.
        let descriptor = FileName.withPlatformPath(path) { open($0, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK) }
        guard descriptor >= 0 else {
            switch errno {
            case ENOENT: return .missing
            case ELOOP: throw WatcherError(.notRegularFile, path: path)
            default: throw .lastSystemError("open", path: path)
            }
        }
        let file = FileDescriptor(owning: descriptor, path: path)

        let before = try status(of: file)
        guard before.st_mode & S_IFMT == S_IFREG else { throw WatcherError(.notRegularFile, path: path) }
        guard before.st_size <= maxFileSize else { throw WatcherError(.fileTooLarge(limit: maxFileSize), path: path) }
        let state = FileState(before)

        // A SQLite database is read through libsqlite3, unless it is closed (see `capture`).
        var start = [UInt8](repeating: 0, count: 20)
        let startRead = start.withUnsafeMutableBytes { buffer in
            Result { () throws(SystemError) in try file.readFully(into: buffer, at: 0) }
        }
        let startCount: Int
        do {
            startCount = try startRead.get()
        } catch {
            throw WatcherError(.system(operation: "read", errno: error.errno), path: path)
        }
        let isDatabase = SQLiteDatabase.startsWithHeader(start[0..<startCount])
        if isDatabase, !SQLiteDatabase.isClosedWALDatabase(start, path: path) {
            let read = try SQLiteDatabase.capture(path, maxSize: maxFileSize)
            guard case .stable(var captured) = read else { return read }
            // The path must still name the file that was opened: a database replaced meanwhile is read again.
            var current = stat()
            guard FileName.withPlatformPath(path, { lstat($0, &current) }) == 0, FileState(current).inode == state.inode,
                FileState(current).device == state.device
            else { return .unstable }
            captured.state = state
            return .stable(captured)
        }

        // One byte past the limit tells a file that grew past it during the read.
        guard let bytes = try readAll(file, expected: Int(before.st_size), limit: maxFileSize + 1) else {
            return .unstable
        }
        afterRead?(path)

        let after = try status(of: file)
        var current = stat()
        guard FileName.withPlatformPath(path, { lstat($0, &current) }) == 0 else {
            if errno == ENOENT { return .unstable }
            throw .lastSystemError("stat", path: path)
        }
        guard bytes.count == before.st_size, FileState(after) == state, FileState(current) == state else {
            return .unstable
        }
        if path.hasSuffix(".json") && !StableFileReader.isValidJSON(bytes) { return .invalidJSON(state) }
        // A closed WAL database opened by its writer during the read: its content may be in the `-wal` now.
        if isDatabase, SQLiteDatabase.fileExists(path + "-wal") { return .unstable }
        return .stable(StableFile(bytes: bytes, state: state, isDatabase: isDatabase))
    }

    /// Whether `bytes` are one complete JSON value (a top-level scalar is allowed, trailing bytes
    /// are not), as `JSONDecoder` decides: `JSONSyntax` accepts the usual file without it.
    static func isValidJSON(_ bytes: [UInt8]) -> Bool {
        guard !bytes.isEmpty else { return false }
        if bytes.withUnsafeBytes(JSONSyntax.isValid) { return true }
        return (try? JSONDecoder().decode(AnyJSONValue.self, from: Data(bytes))) != nil
    }

    /// Decodes from any JSON value, keeping nothing: JSONDecoder scans the whole document's
    /// structure (brackets, separators, trailing bytes) before it asks the type for anything; it
    /// checks a string's escapes and a number's form only when it decodes them, which this never
    /// asks. A torn file ends inside the structure and is refused. `JSONSyntax`, asked first,
    /// checks strings and numbers too, so it accepts a part of what this accepts.
    private struct AnyJSONValue: Decodable {
        init(from decoder: any Decoder) throws {}
    }

    private func status(of file: FileDescriptor) throws(WatcherError) -> stat {
        var status = stat()
        guard fstat(file.raw, &status) == 0 else { throw .lastSystemError("stat", path: file.path) }
        return status
    }

    /// Reads to end of file; nil when the file holds more than `limit` bytes.
    private func readAll(_ file: FileDescriptor, expected: Int, limit: Int) throws(WatcherError) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: min(max(expected + 1, 4096), limit))
        var count = 0
        while true {
            if count == bytes.count {
                guard bytes.count < limit else { return nil }
                bytes += [UInt8](repeating: 0, count: min(bytes.count, limit - bytes.count))
            }
            let read = bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(SystemError) in
                    try file.readFully(into: UnsafeMutableRawBufferPointer(rebasing: buffer[count...]), at: Int64(count))
                }
            }
            let filled: Int
            do {
                filled = try read.get()
            } catch {
                throw WatcherError(.system(operation: "read", errno: error.errno), path: file.path)
            }
            count += filled
            if count < bytes.count { break }  // the end of the file
        }
        bytes.removeSubrange(count...)
        return bytes
    }
}
