import Glibc
import SystemSupport

/// The process's umask, read once (from /proc: umask(2) can only read it by changing it, which
/// would race with other threads creating files). A new file's mode is the requested mode less
/// the umask's bits, so a file created 0600 needs no chmod unless the umask takes owner bits: one
/// system call less per restored file. Unknown (no /proc) counts as taking them.
let processUmask: mode_t = {
    let descriptor = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return 0o777 }
    defer { close(descriptor) }
    var bytes = [UInt8](repeating: 0, count: 8192)
    let count = read(descriptor, &bytes, bytes.count)
    guard count > 0 else { return 0o777 }
    let status = String(decoding: bytes[..<count], as: UTF8.self)
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Umask:") }),
        let value = line.dropFirst("Umask:".count).split(separator: "\t").last.flatMap({ mode_t($0, radix: 8) })
    else { return 0o777 }
    return value
}()

/// Opening and changing what lies below a directory. Everything below a directory is reached
/// with the *at() calls and O_NOFOLLOW, so a symlink planted in a staging or session directory is
/// never followed. Names are `FileName` strings: each goes to the kernel as the bytes it stands
/// for, and `entryNames` decodes what readdir returns the same way.
extension FileDescriptor {
    /// Opens a directory given by the caller (the parent of a session directory), following symlinks
    /// in that path as the caller's configuration asks.
    static func openDirectory(_ path: String) throws -> FileDescriptor {
        let raw = FileName.withPlatformPath(path) { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard raw >= 0 else { throw SystemError("open", path: path) }
        return FileDescriptor(owning: raw, path: path)
    }

    private func childPath(_ name: String) -> String {
        path + "/" + name
    }

    func openDirectory(at name: String) throws -> FileDescriptor {
        let raw = FileName.withPlatformPath(name) { openat(self.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard raw >= 0 else { throw SystemError("open", path: childPath(name)) }
        return FileDescriptor(owning: raw, path: childPath(name))
    }

    func openFile(at name: String) throws -> FileDescriptor {
        let raw = FileName.withPlatformPath(name) { openat(self.raw, $0, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
        guard raw >= 0 else { throw SystemError("open", path: childPath(name)) }
        return FileDescriptor(owning: raw, path: childPath(name))
    }

    /// Creates a new directory (never reuses one) with exactly 0700, whatever the umask.
    func makeDirectory(at name: String) throws -> FileDescriptor {
        guard FileName.withPlatformPath(name, { mkdirat(raw, $0, 0o700) }) == 0 else { throw SystemError("mkdir", path: childPath(name)) }
        let directory = try openDirectory(at: name)
        try directory.setMode(0o700)
        return directory
    }

    /// Creates a new file (O_EXCL: never opens an existing file or a symlink) with exactly 0600.
    func createFile(at name: String) throws -> FileDescriptor {
        let raw = FileName.withPlatformPath(name) { openat(self.raw, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        guard raw >= 0 else { throw SystemError("create", path: childPath(name)) }
        let file = FileDescriptor(owning: raw, path: childPath(name))
        if processUmask & 0o600 != 0 { try file.setMode(0o600) }
        return file
    }

    func setMode(_ mode: mode_t) throws {
        guard fchmod(raw, mode) == 0 else { throw SystemError("chmod", path: path) }
    }

    func sync() throws {
        guard fsync(raw) == 0 else { throw SystemError("fsync", path: path) }
    }

    /// syncfs(2): flushes everything written on the file system this descriptor is on, and reports
    /// any write-back error there since this descriptor was opened (Linux ≥ 5.8).
    func syncFileSystem() throws {
        guard syncfsFunction(raw) == 0 else { throw SystemError("syncfs", path: path) }
    }

    /// Whether `name` exists in this directory (without following a symlink).
    func contains(_ name: String) throws -> Bool {
        var info = stat()
        if FileName.withPlatformPath(name, { fstatat(raw, $0, &info, AT_SYMLINK_NOFOLLOW) }) == 0 { return true }
        if errno == ENOENT { return false }
        throw SystemError("stat", path: childPath(name))
    }

    func entryNames() throws -> [String] {
        try directoryEntries().map { FileName.decode($0.name) }
    }

    /// Removes `name` and, if it is a directory, everything below it; symlinks are removed, not followed.
    /// A missing `name` is not an error, so an interrupted removal can simply be run again.
    func removeTree(at name: String) throws {
        if FileName.withPlatformPath(name, { unlinkat(raw, $0, 0) }) == 0 || errno == ENOENT { return }
        guard errno == EISDIR else { throw SystemError("unlink", path: childPath(name)) }
        let directory = try openDirectory(at: name)
        for child in try directory.entryNames() {
            try directory.removeTree(at: child)
        }
        guard FileName.withPlatformPath(name, { unlinkat(raw, $0, AT_REMOVEDIR) }) == 0 || errno == ENOENT else {
            throw SystemError("rmdir", path: childPath(name))
        }
    }

    func rename(_ from: String, to: String) throws {
        let renamed = FileName.withPlatformPath(from) { from in FileName.withPlatformPath(to) { renameat(raw, from, raw, $0) } }
        guard renamed == 0 else { throw SystemError("rename", path: childPath(from)) }
    }

    /// Atomically swaps two names in this directory with renameat2(RENAME_EXCHANGE). Returns false when
    /// the kernel or file system does not support it, so the caller can fall back to two renames.
    func exchange(_ first: String, _ second: String) throws -> Bool {
        guard let renameat2 = renameat2Function else { return false }
        let exchanged = FileName.withPlatformPath(first) { first in
            FileName.withPlatformPath(second) { renameat2(raw, first, raw, $0, renameExchangeFlag) }
        }
        if exchanged == 0 { return true }
        if errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP { return false }
        throw SystemError("renameat2", path: childPath(first))
    }
}

/// Glibc declares renameat2 and syncfs only under _GNU_SOURCE, which the Swift Glibc module does not
/// set, so they are looked up at run time: renameat2 may be missing (glibc < 2.28), syncfs is in
/// every glibc since 2.14.
private func glibcFunction<Function>(_ name: String, as type: Function.Type) -> Function? {
    guard let process = dlopen(nil, RTLD_NOW), let symbol = dlsym(process, name) else { return nil }
    return unsafeBitCast(symbol, to: type)
}

private typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>?, Int32, UnsafePointer<CChar>?, UInt32) -> Int32
private let renameExchangeFlag: UInt32 = 1 << 1
private let renameat2Function = glibcFunction("renameat2", as: RenameAt2.self)

private typealias SyncFS = @convention(c) (Int32) -> Int32
private let syncfsFunction: SyncFS = {
    guard let function = glibcFunction("syncfs", as: SyncFS.self) else { fatalError("glibc without syncfs(2)") }
    return function
}()

/// Reads an open file in chunks of `buffer`'s size and hands each to `body`; throws
/// `sourceChanged` if the file holds fewer than `size` bytes (it is being rewritten), and never
/// reads past `size`.
func readChunks(
    of fileDescriptor: Int32, size: Int64, into buffer: UnsafeMutableRawBufferPointer, entry: String,
    _ body: (UnsafeRawBufferPointer) throws -> Void
) throws {
    var remaining = size
    while remaining > 0 {
        let wanted = Int(min(Int64(buffer.count), remaining))
        let count = read(fileDescriptor, buffer.baseAddress, wanted)
        if count < 0 {
            if errno == EINTR { continue }
            throw SystemError("read", path: entry)
        }
        if count == 0 { throw ArchiveError(.sourceChanged, entry: entry) }
        try body(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        remaining -= Int64(count)
    }
}

let fileChunkSize = 64 * 1024
