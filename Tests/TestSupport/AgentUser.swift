import Foundation
import Glibc

/// The user the end-to-end tests run the agent as. Production runs it unprivileged (the systemd
/// unit's `User=`, the image's `USER`, Kubernetes' `runAsUser`), while CI and containers run the
/// tests as root: there the agent is started through setpriv as `nobody`, with no supplementary
/// groups and no capabilities, so that whatever only root may do fails in the tests as it would
/// in production (a socket option needing CAP_NET_ADMIN ended the agent on its first request).
public enum AgentUser {
    public static let uid: uid_t = 65534
    public static let gid: gid_t = 65534
    static let setpriv = "/usr/bin/setpriv"

    /// Whether the agent runs as a user of its own: the test process is root.
    public static var isSeparate: Bool { geteuid() == 0 }

    /// Gives `path` and everything under it (symbolic links themselves, not their targets) to the
    /// agent's user: what a test made for the agent, as an operator makes it the agent's. Nothing
    /// when the agent runs as the test's own user or `path` does not exist (the agent makes it).
    /// Only inside a `TemporaryDirectory`: a path a test passes to see it refused is never changed.
    public static func handOver(_ path: String) throws {
        guard isSeparate, isInTemporaryDirectory(path) else { return }
        try handOver(bytes: Array(path.utf8))
    }

    /// The walk by raw bytes: names under a session need not be UTF-8 (a String would mangle them).
    private static func handOver(bytes path: [UInt8]) throws {
        try changeOwner(path)
        let descriptor = open(path.map { CChar(bitPattern: $0) } + [0], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else {
            // Not a directory (a file, a symbolic link: not followed), or removed since (a writer beside the agent).
            guard errno == ENOTDIR || errno == ELOOP || errno == ENOENT else {
                throw ProgramFailure("cannot list \(String(decoding: path, as: UTF8.self)) to hand it over: \(String(cString: strerror(errno)))")
            }
            return
        }
        guard let directory = fdopendir(descriptor) else {
            close(descriptor)
            throw ProgramFailure("cannot list \(String(decoding: path, as: UTF8.self)) to hand it over: \(String(cString: strerror(errno)))")
        }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            let child = path + [0x2F] + name
            try handOver(bytes: child)
        }
    }

    static func isInTemporaryDirectory(_ path: String) -> Bool {
        path.hasPrefix("/") && path.split(separator: "/").contains { $0.hasPrefix(TemporaryDirectory.namePrefix) }
            && !path.split(separator: "/").contains("..")
    }

    private static func changeOwner(_ path: [UInt8]) throws {
        // A writer running beside the agent (restarted in a crash loop) may have just removed it.
        guard lchown(path.map { CChar(bitPattern: $0) } + [0], uid, gid) == 0 || errno == ENOENT else {
            throw ProgramFailure("cannot hand \(String(decoding: path, as: UTF8.self)) over to uid \(uid): \(String(cString: strerror(errno)))")
        }
    }

    static func command(_ executable: String, _ arguments: [String]) throws -> (executable: String, arguments: [String]) {
        guard isSeparate else { return (executable, arguments) }
        guard access(setpriv, X_OK) == 0 else {
            throw ProgramFailure("no \(setpriv) to run the agent unprivileged: install util-linux")
        }
        return (setpriv, [
            "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--", executable,
        ] + arguments)
    }
}
