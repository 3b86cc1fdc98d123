import Crypto

/// A fresh, private directory next to a session directory, filled before it replaces it (see
/// `DirectorySwap`). Files are created 0600 and directories 0700 whatever the source says, with
/// O_CREAT|O_EXCL|O_NOFOLLOW and mkdirat below the staging directory only, so nothing can be
/// written outside it. Every file is fsynced as it is closed; `syncDirectories()` covers the rest.
public final class StagingDirectory {
    /// The staging directory's own path (a dot-named sibling of the target).
    public let path: String
    private let root: FileDescriptor
    /// Relative paths of the directories created below the root, for the final fsync.
    private var createdDirectories: [String] = []
    /// The directory the previous file went into: session directories are flat or nearly so.
    private var lastParent: (path: String, directory: FileDescriptor)?

    init(path: String, root: FileDescriptor) {
        self.path = path
        self.root = root
    }

    /// Creates `relativePath` (a safe relative path) and lets `write` fill it. The file must not exist yet.
    public func writeFile(relativePath: String, _ write: (ByteSink) throws -> Void) throws {
        let components = try ArchivePath.validatedComponents(of: relativePath)
        let parent = try directory(for: components.dropLast())
        let file = try parent.createFile(at: String(components.last!))
        try write(FileDescriptorSink(fileDescriptor: file.raw, path: file.path))
        try file.sync()
    }

    /// Creates a directory (and any missing parents); an existing directory is accepted.
    public func makeDirectory(relativePath: String) throws {
        _ = try directory(for: try ArchivePath.validatedComponents(of: relativePath)[...])
    }

    /// Fsyncs every directory created here, deepest first, then the root.
    func syncDirectories() throws {
        for relativePath in createdDirectories.reversed() {
            var directory = root
            for component in relativePath.split(separator: "/") {
                directory = try directory.openDirectory(at: String(component))
            }
            try directory.sync()
        }
        try root.sync()
    }

    private func directory(for components: ArraySlice<Substring>) throws -> FileDescriptor {
        if components.isEmpty { return root }
        let path = components.joined(separator: "/")
        if let lastParent, lastParent.path == path { return lastParent.directory }
        var directory = root
        var walked: [Substring] = []
        for component in components {
            walked.append(component)
            let name = String(component)
            if try directory.contains(name) {
                directory = try directory.openDirectory(at: name)
            } else {
                directory = try directory.makeDirectory(at: name)
                createdDirectories.append(walked.joined(separator: "/"))
            }
        }
        lastParent = (path, directory)
        return directory
    }
}
