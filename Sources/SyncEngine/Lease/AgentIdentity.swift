import FoundationEssentials
import SessionArchive
import SystemSupport

/// Who writes: the agent (`id`, stable across its restarts, what heads name as the holder and
/// what the lease is for) and this process of it (`instance`, the head's `owner`, so two
/// processes of one agent at once, a `backup` beside `watch`, stay apart).
public struct AgentIdentity: Sendable, Equatable {
    /// `--agent-id`; by default `defaultID`.
    public let id: String
    /// "host/pid/random".
    public let instance: String

    public init(id: String, instance: String) {
        self.id = id
        self.instance = instance
    }

    /// The host name and the sessions directory's absolute path ("worker-1:/data/sessions"):
    /// the same worker restarted is the same agent (it re-acquires its sessions at once), and two
    /// agents on one host with different sessions directories are two agents. A path that is
    /// long or would not print as it is stands as "sha256:" and 16 hex digits of its hash.
    public static func defaultID(host: String, sessionsDirectory: String) -> String {
        let path = URL(fileURLWithPath: sessionsDirectory).standardizedFileURL.path
        let printable = path.utf8.count <= 200 && FileName.displayed(path) == path
        let shownHost = FileName.displayed(host).prefix(50)
        return "\(shownHost):" + (printable ? path : "sha256:" + SHA256.hash(FileName.bytes(of: path)).prefix(8).lowercaseHex)
    }

    /// Why `id` cannot be an agent id (1 to 256 bytes of printable text), nil when it can: it is
    /// printed in logs and errors, and must not forge a line.
    public static func defect(ofID id: String) -> String? {
        guard (1...256).contains(id.utf8.count) else { return "an agent id is 1 to 256 bytes" }
        guard id.unicodeScalars.allSatisfy({ !$0.properties.generalCategory.isControl }) else {
            return "an agent id cannot hold control characters"
        }
        return nil
    }
}

extension Unicode.GeneralCategory {
    fileprivate var isControl: Bool { [.control, .format, .lineSeparator, .paragraphSeparator, .unassigned].contains(self) }
}
