import Crypto

/// A session's id: the name of its directory under the sessions root. It is the only thing
/// from the session that appears in object keys, so it is restricted to characters that are
/// safe in a key and in a path.
public struct SessionID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init?(_ name: String) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@+=")
        guard (1...200).contains(name.utf8.count), !name.hasPrefix("."), name.allSatisfy(allowed.contains) else {
            return nil
        }
        rawValue = name
    }

    public var description: String { rawValue }
    public static func < (lhs: SessionID, rhs: SessionID) -> Bool { lhs.rawValue < rhs.rawValue }
}

public enum SnapshotKind: String, Codable, Sendable, CaseIterable {
    /// Every file of the session.
    case base
    /// The files created or changed, and the names deleted, since the previous snapshot.
    case delta
    /// The session directory was removed (logout): restore must not bring it back.
    case tombstone
}

/// Which snapshot: its place in the session's chain, and the generation (ownership claim)
/// of the writer that made it. Two writers can only ever share a sequence number across a
/// change of owner, and then the newer generation wins.
public struct SnapshotID: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public var sequence: UInt64
    public var generation: UInt64

    public init(sequence: UInt64, generation: UInt64) {
        self.sequence = sequence
        self.generation = generation
    }

    public static func < (lhs: SnapshotID, rhs: SnapshotID) -> Bool {
        (lhs.sequence, lhs.generation) < (rhs.sequence, rhs.generation)
    }

    /// "42.3": sequence 42 written under generation 3.
    public var description: String { "\(sequence).\(generation)" }

    public init?(parsing text: String) {
        let parts = text.split(separator: ".")
        guard parts.count == 2, let sequence = UInt64(parts[0]), let generation = UInt64(parts[1]) else { return nil }
        self.init(sequence: sequence, generation: generation)
    }
}

/// Where a session's objects live in a store. Keys carry the session id, sequence numbers and
/// kinds only: nothing from inside the session.
///
///     sessions/<id>/head                                  the commit point (encrypted)
///     sessions/<id>/snapshots/<seq:020>-<gen:010>.<kind>  one snapshot (encrypted archive)
public enum SessionLayout {
    static let root = "sessions/"

    public static func sessionPrefix(_ session: SessionID) -> String { "\(root)\(session.rawValue)/" }
    public static func headKey(_ session: SessionID) -> String { sessionPrefix(session) + "head" }
    public static func snapshotsPrefix(_ session: SessionID) -> String { sessionPrefix(session) + "snapshots/" }

    public static func snapshotName(_ id: SnapshotID, kind: SnapshotKind) -> String {
        "snapshots/" + zeroPadded(id.sequence, 20) + "-" + zeroPadded(id.generation, 10) + "." + kind.rawValue
    }

    public static func snapshotKey(_ session: SessionID, _ id: SnapshotID, kind: SnapshotKind) -> String {
        sessionPrefix(session) + snapshotName(id, kind: kind)
    }

    /// Parses a key from a listing of `snapshotsPrefix`; nil for anything else.
    static func parseSnapshotKey(_ key: String, session: SessionID) -> (SnapshotID, SnapshotKind)? {
        let prefix = snapshotsPrefix(session)
        guard key.hasPrefix(prefix) else { return nil }
        let name = key.dropFirst(prefix.count)
        guard let dot = name.firstIndex(of: "."), let dash = name.firstIndex(of: "-"), dash < dot,
            let sequence = UInt64(name[..<dash]), let generation = UInt64(name[name.index(after: dash)..<dot]),
            let kind = SnapshotKind(rawValue: String(name[name.index(after: dot)...]))
        else { return nil }
        return (SnapshotID(sequence: sequence, generation: generation), kind)
    }

    /// Session ids that have objects in the store, from a listing of every key.
    static func sessionIDs(in keys: [String]) -> [SessionID] {
        var seen = Set<SessionID>()
        for key in keys where key.hasPrefix(root) {
            let rest = key.dropFirst(root.count)
            if let slash = rest.firstIndex(of: "/"), let id = SessionID(String(rest[..<slash])) { seen.insert(id) }
        }
        return seen.sorted()
    }

    /// The identity bound into an object's encryption, so an object copied to another
    /// session or renamed to another snapshot fails to decrypt.
    static func identity(_ session: SessionID, objectName: String) -> ObjectIdentity {
        ObjectIdentity(sessionID: session.rawValue, objectName: objectName)
    }

    private static func zeroPadded(_ value: UInt64, _ width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}
