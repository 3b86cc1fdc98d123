import SystemSupport


/// A fresh, private directory next to a session directory, filled before it replaces it (see
/// `DirectorySwap`). Files are created 0600 and directories 0700 whatever the source says, with
/// O_CREAT|O_EXCL|O_NOFOLLOW and mkdirat below the staging directory only, so nothing can be
/// written outside it. Nothing is fsynced as it is written: `sync()` makes it all durable at once.
public final class StagingDirectory {
    /// The staging directory's own path (a dot-named sibling of the target).
    public let path: String
    private let root: FileDescriptor
    /// The directory the previous file went into: files come in name order, so most share it.
    private var lastParent: (path: String, directory: FileDescriptor)?

    init(path: String, root: FileDescriptor) {
        self.path = path
        self.root = root
    }

    /// Creates `relativePath` (a safe relative path), and its missing directories at any depth,
    /// and lets `write` fill it. The file must not exist yet.
    public func writeFile(relativePath: String, _ write: (ByteSink) throws -> Void) throws {
        let components = try ArchivePath.validatedComponents(of: relativePath)
        let parent = try directory(for: components.dropLast())
        let file = try parent.createFile(at: String(components.last!))
        try write(FileDescriptorSink(fileDescriptor: file.raw, path: file.path))
    }

    /// Makes every file and directory written here durable with one syncfs(2) of the file system
    /// the staging directory is on. A restore writes thousands of small files, and an fsync each costs
    /// a journal commit each: measured 30× slower than the extraction itself (bench/archive). syncfs
    /// also reports any write-back error on that file system since the staging directory was opened.
    func sync() throws {
        try root.syncFileSystem()
    }

    private func directory(for components: ArraySlice<Substring>) throws -> FileDescriptor {
        if components.isEmpty { return root }
        let path = components.joined(separator: "/")
        // Bytewise: String's == takes canonically equivalent names ("é" and "e\u{301}") for one.
        if let lastParent, lastParent.path.utf8.elementsEqual(path.utf8) { return lastParent.directory }
        var directory = root
        for component in components {
            let name = String(component)
            if try directory.contains(name) {
                directory = try directory.openDirectory(at: name)
            } else {
                directory = try directory.makeDirectory(at: name)
            }
        }
        lastParent = (path, directory)
        return directory
    }
}
