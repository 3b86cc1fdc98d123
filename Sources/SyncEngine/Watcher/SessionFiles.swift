import Glibc
import SessionArchive
import SystemSupport

/// What the watcher and the start-up comparison consider part of a session: the same rules in
/// both, so a file the watcher ignores is never uploaded by a rescan either.
///
/// The sessions root holds one directory per session id. A session holds regular files, directly
/// or in subdirectories at any depth (reported as "a/b/name"). Names are `FileName` strings: any
/// bytes the kernel holds, decoded from readdir and passed back to system calls as those bytes.
public enum SessionFiles {
    /// Session ids are directory names that do not start with "."; the restore code stages its
    /// working directories as `.<session>.sync-agent-…` (`DirectorySwap.isWorkingDirectoryName`),
    /// and those must never be taken for sessions.
    public static func isSessionDirectoryName(_ name: String) -> Bool {
        !name.isEmpty && !name.hasPrefix(".")
    }

    /// Editor and writer temporaries, and hidden names, are not part of a session.
    public static func isIgnoredName(_ name: String) -> Bool {
        name.isEmpty || name.hasPrefix(".") || name.hasSuffix("~")
            || ignoredSuffixes.contains { name.hasSuffix($0) }
    }

    private static let ignoredSuffixes = [".tmp", ".swp", ".swx"]

    /// What the directory shows of a file that the previous snapshot had and a snapshot found
    /// missing, looked at in the order that cannot miss the second rename of a replacement
    /// (`name.tmp` renamed to `name` turns one into the other): the temporary first, the name last.
    ///
    /// `backupHoldsItsLastVersion`: `name.bak`, as this snapshot has it, holds the version the
    /// previous snapshot had for `name`; its change time is then when it was renamed there.
    static func missingFile(_ path: String, backupHoldsItsLastVersion: Bool) -> MissingFile {
        var missing = MissingFile()
        missing.temporaryWritten = fileState(path + ".tmp")?.modificationTime
        if backupHoldsItsLastVersion { missing.movedToBackup = changeTime(path + ".bak") }
        missing.isBack = fileState(path) != nil
        return missing
    }

    /// The change time of the regular file at `path` (which a rename sets), in nanoseconds since
    /// the epoch; nil if there is none.
    static func changeTime(_ path: String) -> Int64? {
        regularFileStatus(path).map { Int64($0.st_ctim.tv_sec) * 1_000_000_000 + Int64($0.st_ctim.tv_nsec) }
    }

    /// The session directories under `root`, sorted by their bytes.
    public static func sessionIDs(inRoot root: String) throws(WatcherError) -> [SessionID] {
        try entries(of: root).compactMap { $0.kind == .directory ? SessionID($0.name) : nil }.sorted()
    }

    /// The regular files of a session directory and their states, in the order of a
    /// `SessionState`, without ignored names (nor anything below an ignored directory), symlinks
    /// and other special files; files in subdirectories, at any depth, are named "a/b/name". For
    /// the start-up comparison with the last manifest. (An array, not a dictionary: a session of
    /// 100,000 files.)
    ///
    /// `unreadable`: called with the name of each subdirectory the agent may not list, and the
    /// error, which the scan then goes past; without it such a subdirectory fails the scan.
    public static func scan(
        sessionDirectory directory: String, unreadable: ((String, WatcherError) -> Void)? = nil
    ) throws(WatcherError) -> [(name: String, state: FileState)] {
        var files: [(name: String, state: FileState)] = []
        try collectFiles(in: directory, prefix: "", into: &files, unreadable: unreadable)
        files.sort { SessionState.precedes($0.name, $1.name) }
        return files
    }

    private static func collectFiles(
        in directory: String, prefix: String, into files: inout [(name: String, state: FileState)],
        unreadable: ((String, WatcherError) -> Void)?
    ) throws(WatcherError) {
        let listed = try entries(of: directory)
        let fileNames = Set(listed.compactMap { $0.kind == .file ? $0.name : nil })
        for entry in listed where !isIgnoredName(entry.name) {
            let path = directory + "/" + entry.name
            switch entry.kind {
            case .file:
                if isDatabaseCompanion(entry.name, in: directory, among: fileNames) { continue }
                if let state = fileState(path) { files.append((prefix + entry.name, state)) }
            case .directory:
                do {
                    try collectFiles(in: path, prefix: prefix + entry.name + "/", into: &files, unreadable: unreadable)
                } catch {
                    // A subdirectory removed (or replaced by a file) since the listing is simply
                    // not there any more; any other failure is one.
                    guard case .system(let call, let code) = error.reason else { throw error }
                    if code == ENOENT || code == ENOTDIR { continue }
                    guard call == "opendir", code == EACCES || code == EPERM, let unreadable else { throw error }
                    unreadable(prefix + entry.name, error)
                }
            case .other:
                continue
            }
        }
    }

    /// Whether `name` is the `-wal`, `-shm` or `-journal` of a SQLite database in `directory`
    /// (`names`: the directory's files): never part of a session as a file, its content is captured
    /// with the database's. A companion without its database is an ordinary file.
    static func isDatabaseCompanion(_ name: String, in directory: String, among names: Set<String>) -> Bool {
        guard let database = SQLiteDatabase.database(ofCompanion: name), names.contains(database) else { return false }
        return SQLiteDatabase.isDatabase(directory + "/" + database)
    }

    struct Entry: Equatable {
        typealias Kind = DirectoryEntry.Kind
        var name: String
        var kind: Kind
    }

    /// The entries of a directory, typed without following symlinks (`directoryEntries`), with
    /// their names decoded as `FileName` strings.
    static func entries(of directory: String) throws(WatcherError) -> [Entry] {
        let listed = FileName.withPlatformPath(directory) { path in
            Result { () throws(SystemError) in try FileDescriptor.directoryEntries(atPath: path, displayedAs: directory) }
        }
        switch listed {
        case .success(let entries):
            return entries.map { Entry(name: FileName.decode($0.name), kind: $0.kind) }
        case .failure(let error):
            throw WatcherError(.system(operation: error.operation, errno: error.errno), path: directory)
        }
    }

    /// The state of the regular file at `path`; nil if there is none (any more).
    static func fileState(_ path: String) -> FileState? {
        regularFileStatus(path).map(FileState.init)
    }

    private static func regularFileStatus(_ path: String) -> stat? {
        var status = stat()
        guard FileName.withPlatformPath(path, { lstat($0, &status) }) == 0, Entry.Kind(mode: status.st_mode) == .file else {
            return nil
        }
        return status
    }

    /// The modification time of what `path` names, in nanoseconds since the epoch; nil if nothing.
    static func modificationTime(_ path: String) -> Int64? {
        var status = stat()
        guard FileName.withPlatformPath(path, { lstat($0, &status) }) == 0 else { return nil }
        return FileState(status).modificationTime
    }

    static func isDirectory(_ path: String) -> Bool {
        var status = stat()
        return FileName.withPlatformPath(path, { lstat($0, &status) }) == 0 && Entry.Kind(mode: status.st_mode) == .directory
    }
}

/// A file the previous snapshot had, found missing: deleted, or between the two renames of a
/// replacement. Baileys replaces `name` in three steps: `name.tmp` written whole, `name` renamed to
/// `name.bak`, `name.tmp` renamed to `name`; between the renames `name` is missing and was never
/// deleted. A `null` write unlinks `name`, `name.tmp` and `name.bak`: a deletion.
///
/// Pure: times in nanoseconds since the epoch, as the file system's are, `now` passed in.
struct MissingFile: Equatable {
    /// When `name.tmp` was written, if there is one.
    var temporaryWritten: Int64?
    /// When `name` was renamed to `name.bak`, if `name.bak` holds the version `name` last had.
    var movedToBackup: Int64?
    /// `name` is there again (the second rename came while the snapshot looked).
    var isBack = false

    /// Whether `name` is being replaced: it is back, or its replacement began less than
    /// `replacementTimeout` ago, as a temporary written that recently or the rename to the backup
    /// of its last version says (either is enough: the backup whatever the temporary is yet, the
    /// temporary for writers that rename it over `name` with no backup). A replacement older than
    /// that was left by a writer that died between its renames: `name` is then gone, and Baileys
    /// reads `name.bak`, part of the session, instead.
    func isBeingReplaced(now: Int64) -> Bool {
        isBack || [temporaryWritten, movedToBackup].contains { $0.map { abs(now - $0) < Self.replacementTimeout } ?? false }
    }

    /// Long enough for a writer stalled between its renames (a pause of its runtime, a busy
    /// disk), short enough that one that died leaves its file counted as mid-write for seconds.
    static let replacementTimeout: Int64 = 10_000_000_000
}

/// A regular file's identity and metadata, as compared between reads and with the last manifest.
public struct FileState: Hashable, Sendable, Codable {
    public var size: Int64
    /// Permission bits only (the file is always a regular file).
    public var mode: UInt32
    /// Modification time in nanoseconds since the epoch.
    public var modificationTime: Int64
    public var inode: UInt64
    public var device: UInt64

    public init(size: Int64, mode: UInt32, modificationTime: Int64, inode: UInt64, device: UInt64) {
        self.size = size
        self.mode = mode
        self.modificationTime = modificationTime
        self.inode = inode
        self.device = device
    }

    init(_ status: stat) {
        self.init(
            size: Int64(status.st_size),
            mode: UInt32(status.st_mode) & 0o7777,
            modificationTime: Int64(status.st_mtim.tv_sec) * 1_000_000_000 + Int64(status.st_mtim.tv_nsec),
            inode: UInt64(status.st_ino),
            device: UInt64(status.st_dev)
        )
    }
}
