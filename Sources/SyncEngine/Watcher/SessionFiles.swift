import Glibc

/// What the watcher and the start-up comparison consider part of a session: the same rules in
/// both, so a file the watcher ignores is never uploaded by a rescan either.
///
/// The sessions root holds one directory per session id. A session holds regular files, directly
/// or in one level of subdirectories (reported as "subdirectory/name").
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

    /// The session ids under `root`, sorted.
    public static func sessionIDs(inRoot root: String) throws(WatcherError) -> [String] {
        try entries(of: root).filter { $0.kind == .directory && isSessionDirectoryName($0.name) }.map(\.name).sorted()
    }

    /// The regular files of a session directory and their states, in the order of a
    /// `SessionState`, without ignored names, symlinks and other special files; files in
    /// first-level subdirectories are named "subdirectory/name". For the start-up comparison
    /// with the last manifest. (An array, not a dictionary: a session of 100,000 files.)
    public static func scan(sessionDirectory directory: String) throws(WatcherError) -> [(name: String, state: FileState)] {
        var files: [(name: String, state: FileState)] = []
        for entry in try entries(of: directory) where !isIgnoredName(entry.name) {
            switch entry.kind {
            case .file:
                if let state = fileState(directory + "/" + entry.name) { files.append((entry.name, state)) }
            case .directory:
                // A subdirectory removed since the listing is simply not there any more.
                guard let inner = try? entries(of: directory + "/" + entry.name) else { continue }
                for innerEntry in inner where innerEntry.kind == .file && !isIgnoredName(innerEntry.name) {
                    let name = entry.name + "/" + innerEntry.name
                    if let state = fileState(directory + "/" + name) { files.append((name, state)) }
                }
            case .other:
                continue
            }
        }
        files.sort { SessionState.precedes($0.name, $1.name) }
        return files
    }

    struct Entry: Equatable {
        enum Kind: Equatable {
            case file
            case directory
            case other
        }
        var name: String
        var kind: Kind
    }

    /// The entries of a directory, typed without following symlinks (from readdir's d_type, or
    /// lstat where the file system does not fill it in). Entries gone before their lstat are left out.
    static func entries(of directory: String) throws(WatcherError) -> [Entry] {
        guard let stream = opendir(directory) else { throw .lastSystemError("opendir", path: directory) }
        defer { closedir(stream) }
        var entries: [Entry] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw .lastSystemError("readdir", path: directory) }
                return entries
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let kind: Entry.Kind
            switch Int(entry.pointee.d_type) {
            case Int(DT_REG): kind = .file
            case Int(DT_DIR): kind = .directory
            case Int(DT_UNKNOWN):
                var status = stat()
                guard lstat(directory + "/" + name, &status) == 0 else { continue }
                kind = Entry.Kind(mode: status.st_mode)
            default: kind = .other
            }
            entries.append(Entry(name: name, kind: kind))
        }
    }

    /// The state of the regular file at `path`; nil if there is none (any more).
    static func fileState(_ path: String) -> FileState? {
        var status = stat()
        guard lstat(path, &status) == 0, Entry.Kind(mode: status.st_mode) == .file else { return nil }
        return FileState(status)
    }

    static func isDirectory(_ path: String) -> Bool {
        var status = stat()
        return lstat(path, &status) == 0 && Entry.Kind(mode: status.st_mode) == .directory
    }
}

extension SessionFiles.Entry.Kind {
    init(mode: mode_t) {
        switch mode & S_IFMT {
        case S_IFREG: self = .file
        case S_IFDIR: self = .directory
        default: self = .other
        }
    }
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
