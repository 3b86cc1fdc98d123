import Glibc
import SessionArchive

/// A file of a session that the agent cannot take: the session's snapshots keep its last good
/// version (or, if it never had one, leave it out), and the agent tries it again at its next change.
/// A subdirectory the agent may not list is one too, for every file below it.
public struct SkippedFile: Codable, Sendable, Hashable {
    /// Relative to the session directory, as `FileName.displayed` shows it.
    public var name: String
    /// Why, in one line without the path: "larger than the 64 MiB limit", "cannot be read: Permission denied".
    public var reason: String

    public init(name: String, reason: String) {
        self.name = name
        self.reason = reason
    }

    /// A path the archive cannot hold: longer than its 1,024 bytes with `files/` (Linux allows
    /// 4,096). Left out rather than failing every snapshot of its session.
    static let pathTooLong = "path longer than the 1,018 bytes a snapshot can hold"

    /// The file at `name` as `error` left it out; nil for errors that are no property of the file
    /// (the disk failing, descriptors used up), which fail the upload and are retried.
    init?(name: String, _ error: WatcherError) {
        switch error.reason {
        case .fileTooLarge(let limit):
            self.init(name: FileName.displayed(name), reason: "larger than the \(limit >> 20) MiB limit")
        case .system(let call, let code) where ["open", "opendir"].contains(call) && (code == EACCES || code == EPERM):
            self.init(name: FileName.displayed(name), reason: "cannot be read: \(String(cString: strerror(code)))")
        default:
            return nil
        }
    }
}

/// Why a name under the sessions root is not backed up, though it looks like a session.
public enum Refusal: String, Codable, Sendable, CaseIterable {
    /// A symbolic link: the agent does not follow links out of the sessions directory, and a
    /// restore could not bring the link back.
    case symlink
    /// A directory the agent may not list.
    case unreadable

    /// One line for `/sessions` and the log.
    public var message: String {
        switch self {
        case .symlink: "not backed up: a symbolic link (sessions must be directories; links are not followed)"
        case .unreadable: "not backed up: the agent may not read the directory (check its owner and mode)"
        }
    }

    /// A refused name as `/sessions`, `/readyz`, the logs and the reports print it: a session's
    /// one spelling (`~hex` for a name that cannot be printed as it is).
    public static func printed(_ name: String) -> String {
        SessionID(name)?.description ?? FileName.displayed(name)
    }

    /// Whether the entry `name` of `root` is a session the agent refuses, and why; nil for a session
    /// it backs up, and for names that are no session at all (hidden names, plain files).
    static func of(_ name: String, inRoot root: String) -> Refusal? {
        guard SessionFiles.isSessionDirectoryName(name) else { return nil }
        let path = root + "/" + name
        var status = stat()
        guard FileName.withPlatformPath(path, { lstat($0, &status) }) == 0 else { return nil }
        switch status.st_mode & S_IFMT {
        case S_IFLNK: return .symlink
        case S_IFDIR: break
        default: return nil
        }
        if FileName.withPlatformPath(path, { access($0, R_OK | X_OK) }) != 0 { return .unreadable }
        return nil
    }
}

/// What `SyncService.run` leaves not backed up when it stops: `watch` exits 1 naming it unless
/// it is complete.
public struct ShutdownReport: Sendable, Equatable {
    /// Sessions with changes not in the store: uploads failing, files still mid-write, or the
    /// shutdown timeout passed.
    public var unflushed: [SessionID]
    /// Sessions released at the stop (handed over: the next acquire need not wait).
    public var released: [SessionID] = []
    /// Names under the root not backed up at all, as a session's `description` prints them.
    public var refused: [Refused]
    /// Files the sessions' snapshots leave out.
    public var skippedFiles: [SessionID: [SkippedFile]]

    public struct Refused: Sendable, Equatable {
        public var name: String
        public var refusal: Refusal
    }

    public var isComplete: Bool { unflushed.isEmpty && refused.isEmpty && skippedFiles.isEmpty }
}
