import Glibc
import SessionArchive
import SystemSupport

/// Why watching the sessions root or reading a session file failed. The description is one line
/// naming the path and, for the inotify limits, the kernel setting to raise.
public struct WatcherError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Reason: Equatable, Sendable {
        /// inotify_add_watch failed with ENOSPC: `fs.inotify.max_user_watches` is used up.
        case watchLimitReached
        /// inotify_init1 failed with EMFILE: `fs.inotify.max_user_instances` is used up.
        case instanceLimitReached
        /// The path is a symlink, a directory, a FIFO, a device or a socket where a regular file was expected.
        case notRegularFile
        case fileTooLarge(limit: Int)
        /// A system call failed; `errno` says why.
        case system(operation: String, errno: Int32)
        /// libsqlite3 could not read the database (corrupt, or its `-shm` unusable); SQLite's message.
        case database(String)
    }

    public let reason: Reason
    public let path: String

    init(_ reason: Reason, path: String) {
        self.reason = reason
        self.path = path
    }

    /// The failure of `operation` on `path` as the current errno, with the limits spelled out.
    static func lastSystemError(_ operation: String, path: String) -> WatcherError {
        let code = errno
        switch (operation, code) {
        case ("inotify_add_watch", ENOSPC): return WatcherError(.watchLimitReached, path: path)
        case ("inotify_init1", EMFILE): return WatcherError(.instanceLimitReached, path: path)
        default: return WatcherError(.system(operation: operation, errno: code), path: path)
        }
    }

    public var description: String {
        let quoted = "\"" + FileName.displayed(path) + "\""
        switch reason {
        case .watchLimitReached:
            return "cannot watch \(quoted): the inotify watch limit is reached (/proc/sys/fs/inotify/max_user_watches); "
                + "raise it, e.g. `sysctl fs.inotify.max_user_watches=524288` (persist it in /etc/sysctl.d/)"
        case .instanceLimitReached:
            return "cannot watch \(quoted): the inotify instance limit is reached (/proc/sys/fs/inotify/max_user_instances); "
                + "raise it, e.g. `sysctl fs.inotify.max_user_instances=1024`"
        case .notRegularFile: return "\(quoted) is not a regular file (symlinks, FIFOs and devices are refused)"
        case .fileTooLarge(let limit): return "\(quoted) is larger than the limit of \(limit) bytes"
        case .system(let operation, let code):
            return "\(operation) \(quoted) failed: \(String(cString: strerror(code)))"
        case .database(let message):
            return "SQLite cannot read the database \(quoted): \(message)"
        }
    }
}
