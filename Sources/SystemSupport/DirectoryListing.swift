import Glibc

/// One name in a directory, typed without following a symlink.
public struct DirectoryEntry: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case file
        case directory
        /// A symlink, FIFO, socket or device.
        case other

        public init(mode: mode_t) {
            switch mode & S_IFMT {
            case S_IFREG: self = .file
            case S_IFDIR: self = .directory
            default: self = .other
            }
        }
    }

    /// The name's bytes as the kernel holds them (any bytes but "/" and NUL, not necessarily UTF-8).
    public var name: [UInt8]
    public var kind: Kind

    public init(name: [UInt8], kind: Kind) {
        self.name = name
        self.kind = kind
    }
}

extension FileDescriptor {
    /// The entries of the directory this descriptor is open on, without "." and "..", typed from
    /// readdir's d_type, or fstatat without following symlinks where the file system does not
    /// fill it in; entries gone before their fstatat are left out. Reads from the start each time.
    public func directoryEntries() throws(SystemError) -> [DirectoryEntry] {
        // fdopendir takes the descriptor over, and closedir closes it: it gets a duplicate.
        let duplicate = dup(raw)
        guard duplicate >= 0 else { throw SystemError("dup", path: path) }
        guard let stream = fdopendir(duplicate) else {
            let error = SystemError("opendir", path: path)
            close(duplicate)
            throw error
        }
        defer { closedir(stream) }
        // The duplicate shares the position of `raw`: an earlier listing left it at the end.
        rewinddir(stream)
        var entries: [DirectoryEntry] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw SystemError("readdir", path: path) }
                return entries
            }
            // The name is read in place: a record is only as long as its name (d_reclen), so copying
            // the whole `d_name` tuple out of it read past the end of readdir's buffer (a crash on
            // a directory of 1,000 files whose last record ended near the end of a page).
            let namePointer = UnsafeRawPointer(entry).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                .assumingMemoryBound(to: CChar.self)
            let name = Array(UnsafeRawBufferPointer(start: namePointer, count: strlen(namePointer)))
            if name == [UInt8(ascii: ".")] || name == [UInt8(ascii: "."), UInt8(ascii: ".")] { continue }
            let kind: DirectoryEntry.Kind
            switch Int32(entry.pointee.d_type) {
            case Int32(DT_REG): kind = .file
            case Int32(DT_DIR): kind = .directory
            case Int32(DT_UNKNOWN):
                var status = stat()
                guard fstatat(raw, namePointer, &status, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
                kind = DirectoryEntry.Kind(mode: status.st_mode)
            default: kind = .other
            }
            entries.append(DirectoryEntry(name: name, kind: kind))
        }
    }

    /// The entries of the directory at `path` (a C string of the path's bytes); the path itself
    /// may go through symlinks, its entries are typed without following them. A failure to open
    /// the directory is reported as "opendir".
    public static func directoryEntries(
        atPath path: UnsafePointer<CChar>, displayedAs displayed: String
    ) throws(SystemError) -> [DirectoryEntry] {
        let raw = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard raw >= 0 else { throw SystemError("opendir", path: displayed) }
        return try FileDescriptor(owning: raw, path: displayed).directoryEntries()
    }
}
