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
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        try changeOwner(path)
        guard status.st_mode & S_IFMT == S_IFDIR else { return }
        guard let enumerator = FileManager.default.enumerator(atPath: path) else {
            throw ProgramFailure("cannot list \(path) to hand it over to the agent's user")
        }
        while let name = enumerator.nextObject() as? String {
            try changeOwner("\(path)/\(name)")
        }
    }

    static func isInTemporaryDirectory(_ path: String) -> Bool {
        path.hasPrefix("/") && path.split(separator: "/").contains { $0.hasPrefix(TemporaryDirectory.namePrefix) }
            && !path.split(separator: "/").contains("..")
    }

    private static func changeOwner(_ path: String) throws {
        // A writer running beside the agent (restarted in a crash loop) may have just removed it.
        guard lchown(path, uid, gid) == 0 || errno == ENOENT else {
            throw ProgramFailure("cannot hand \(path) over to uid \(uid): \(String(cString: strerror(errno)))")
        }
    }

    /// The command that runs `executable` with `arguments` as the agent's user.
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
