import ArgumentParser
import Glibc
import SystemSupport

/// The Unix socket the worker drives its sidecar through (`watch --control-socket`): who may
/// connect is decided by the socket file's permissions, so it serves the control routes
/// without a token. It never exists with wider permissions than asked, even for an instant: it
/// is bound inside a private (0700) directory beside `path`, given its mode there, then renamed
/// onto `path`, which replaces a stale socket left by a crashed agent in one step. Anything at
/// `path` that is not a socket, or a socket another process still accepts on, is refused.
struct ControlSocket: Sendable {
    /// Who may connect besides root.
    enum Access: String, CaseIterable, ExpressibleByArgument, Sendable {
        /// The agent's user only (0600).
        case owner
        /// The agent's user and group (0660): a worker running as another user of that group.
        case group
    }

    let path: String
    let access: Access

    var mode: mode_t { access == .owner ? 0o600 : 0o660 }

    /// `sockaddr_un`'s `sun_path` holds 108 bytes with the terminating NUL.
    static let longestPath = 107

    private func refusal(_ why: String) -> ConfigurationError {
        ConfigurationError(.badControlSocket, "--control-socket \(path): \(why)")
    }

    /// Checks what is at `path` now: nothing, or a stale socket; throws otherwise.
    func checkPath() throws(ConfigurationError) {
        guard path.utf8.count <= Self.longestPath else {
            throw refusal("longer than the \(Self.longestPath) bytes a socket path can have")
        }
        var status = stat()
        guard lstat(path, &status) == 0 else {
            guard errno == ENOENT else { throw refusal(String(cString: strerror(errno)).lowercased()) }
            return
        }
        guard status.st_mode & S_IFMT == S_IFSOCK else { throw refusal("exists and is not a socket; not replaced") }
        if Self.accepts(path) { throw refusal("another process accepts connections on it") }
    }

    /// Whether a process accepts connections on the socket at `path`.
    static func accepts(_ path: String) -> Bool {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            let bytes = Array(path.utf8.prefix(buffer.count - 1))
            buffer.copyBytes(from: bytes)
            buffer[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    /// Binds through `bindAt` (given the temporary path) and moves the socket into place; the
    /// server is closed through `close` when that fails.
    func bind<Server>(
        _ bindAt: (String) async throws -> Server, close: (Server) async -> Void
    ) async throws -> Server {
        try checkPath()
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        var template = Array("\(directory.isEmpty ? "" : directory)/.sync-agent-XXXXXX".utf8CString)
        guard let created = mkdtemp(&template) else {
            throw refusal("cannot create a directory beside it: \(String(cString: strerror(errno)).lowercased())")
        }
        let privateDirectory = String(cString: created)
        defer { rmdir(privateDirectory) }
        let temporary = privateDirectory + "/s"
        guard temporary.utf8.count <= Self.longestPath else {
            throw refusal("its directory's path is too long for a socket (at most \(Self.longestPath - 20) bytes)")
        }
        let server: Server
        do {
            server = try await bindAt(temporary)
        } catch {
            unlink(temporary)
            throw refusal("cannot listen: \(HTTPEndpoint.reason(error))")
        }
        guard chmod(temporary, mode) == 0, rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno)).lowercased()
            unlink(temporary)
            await close(server)
            throw refusal(reason)
        }
        return server
    }

    /// Removes the socket when it is still the one `bind` put there (not a successor's).
    func remove(ifStill identity: (device: UInt64, inode: UInt64)?) {
        guard let identity, let current = Self.identity(of: path), current == identity else { return }
        unlink(path)
    }

    static func identity(of path: String) -> (device: UInt64, inode: UInt64)? {
        var status = stat()
        guard lstat(path, &status) == 0 else { return nil }
        return (UInt64(status.st_dev), UInt64(status.st_ino))
    }
}
