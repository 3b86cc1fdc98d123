import SessionArchive
import SessionCrypto
import SystemSupport

/// A session's id: the name of its directory under the sessions root, any name a directory can
/// have (1 to 255 bytes, neither "/" nor NUL), as `FileName` maps it to a `String`, except names
/// starting with "." (hidden, and the restore's staging directories `.<session>.sync-agent-…`).
///
/// It appears in three spellings: `rawValue`, the name itself (the directory, manifests, the
/// encryption identity); `description`, how people and programs see and type it (tables, JSON,
/// logs, arguments, `--sessions-from`); and `keyComponent`, in object keys.
public struct SessionID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// The id of a directory named `name` (from `FileName.decode`); nil for a name no session
    /// directory can have.
    public init?(_ name: String) {
        guard Self.defect(ofName: name) == nil else { return nil }
        rawValue = name
    }

    /// The id spelled as `description` prints it: the name, or for a name that could not be
    /// printed or typed as it is, "~" and the lowercase hex of its bytes.
    public init?(printed text: String) {
        try? self.init(parsing: text)
    }

    /// `init?(printed:)` saying why a text is not an id: for a command's arguments, where the
    /// reason is all a user has to go on.
    public init(parsing text: String) throws(InvalidSessionID) {
        guard text.hasPrefix("~") else {
            if let reason = Self.defect(ofName: text) { throw InvalidSessionID(reason) }
            rawValue = text
            guard description == text else { throw InvalidSessionID(.notAsPrinted) }
            return
        }
        guard let bytes = Self.bytes(fromHex: text.utf8.dropFirst()) else { throw InvalidSessionID(.notHex) }
        let name = FileName.decode(bytes)
        if let reason = Self.defect(ofName: name) { throw InvalidSessionID(reason) }
        rawValue = name
    }

    /// Why no session directory can be named `name`; nil when one can.
    private static func defect(ofName name: String) -> InvalidSessionID.Reason? {
        let bytes = FileName.bytes(of: name)
        if !(1...255).contains(bytes.count) { return .length }
        if bytes.first == UInt8(ascii: ".") { return .hidden }
        if bytes.contains(0) || bytes.contains(UInt8(ascii: "/")) { return .separator }
        // Text holding the escapes of bytes that are valid UTF-8 together: the name reads otherwise.
        if FileName.decode(bytes) != name { return .notAsPrinted }
        return nil
    }

    /// The name as it is when it is text that can be printed and typed; otherwise (what
    /// `FileName.displayed` would escape: control characters, bytes that are not UTF-8,
    /// backslashes; white space at either end, a leading "~") "~" and the lowercase hex of its
    /// bytes, so a name can neither forge a log line nor get lost.
    public var description: String {
        let scalars = rawValue.unicodeScalars
        let printable = !rawValue.hasPrefix("~") && scalars.first?.properties.isWhitespace != true
            && scalars.last?.properties.isWhitespace != true && FileName.displayed(rawValue) == rawValue
        return printable ? rawValue : "~" + FileName.bytes(of: rawValue).lowercaseHex
    }

    /// The name in object keys of format version 2 (a plain place): as it is for names of today's key-safe set
    /// (`[A-Za-z0-9._-@+=]`, at most 200 bytes), so the keys of existing stores stay; any other
    /// name as the lowercase hex of its bytes in components of at most 120 bytes each, each
    /// starting with "~" (outside the safe set), all but the last ending with "~" too (so no
    /// session's keys are a prefix of another's). FORMAT.md specifies it.
    var keyComponent: String {
        let safe = rawValue.utf8.count <= 200 && rawValue.utf8.allSatisfy(Self.isKeySafe)
        guard !safe else { return rawValue }
        let bytes = FileName.bytes(of: rawValue)
        return stride(from: 0, to: bytes.count, by: Self.bytesPerKeyComponent).map { start in
            "~" + bytes[start..<min(start + Self.bytesPerKeyComponent, bytes.count)].lowercaseHex
        }.joined(separator: "~/")
    }

    /// The id whose `keyComponent` and a "/" start `rest` (a key after "sessions/" at a plain
    /// place, of format version 2); nil when none does in the writer's spelling (one session, one key).
    static func plainlyKeyed(_ rest: Substring) -> SessionID? {
        let name: String
        if rest.hasPrefix("~") {
            var bytes: [UInt8] = []
            for component in rest.split(separator: "/", omittingEmptySubsequences: false) {
                let continues = component.count > 1 && component.hasSuffix("~")
                guard component.hasPrefix("~"),
                    let chunk = Self.bytes(fromHex: component.dropFirst().dropLast(continues ? 1 : 0).utf8)
                else { return nil }
                bytes += chunk
                if !continues { break }
            }
            name = FileName.decode(bytes)
        } else {
            name = String(rest.prefix { $0 != "/" })
        }
        guard let id = SessionID(name), rest.hasPrefix(id.keyComponent + "/") else { return nil }
        return id
    }

    private static let bytesPerKeyComponent = 120

    private static func isKeySafe(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: "._-@+=".utf8.contains(byte)
        }
    }

    /// The bytes of a "~" name's hex: lowercase only (a name has one spelling), never empty.
    private static func bytes(fromHex hex: some Collection<UInt8>) -> [UInt8]? {
        hex.isEmpty ? nil : Hex.decode(hex)
    }

    // By bytes, not by Swift's String comparison: "é" as one scalar and as "e" + U+0301 are two
    // directories, two sessions, though their Strings are equal.
    public static func == (lhs: SessionID, rhs: SessionID) -> Bool { lhs.rawValue.utf8.elementsEqual(rhs.rawValue.utf8) }
    public static func < (lhs: SessionID, rhs: SessionID) -> Bool {
        lhs.rawValue.utf8.lexicographicallyPrecedes(rhs.rawValue.utf8)
    }

    public func hash(into hasher: inout Hasher) {
        for byte in rawValue.utf8 { hasher.combine(byte) }
    }
}

/// Why a text is not a session id. The message does not repeat the text: whoever shows it
/// shows the text beside it, escaped.
public struct InvalidSessionID: Error, CustomStringConvertible {
    public enum Reason: Sendable {
        /// Not 1 to 255 bytes.
        case length
        /// Starts with ".".
        case hidden
        /// Holds "/" or NUL.
        case separator
        /// A name that prints otherwise (control characters, white space at an end, a leading
        /// "~", bytes that are not UTF-8): typed as its "~" hex spelling.
        case notAsPrinted
        /// After "~", not the lowercase hex of at least one byte.
        case notHex
    }

    public let reason: Reason

    init(_ reason: Reason) { self.reason = reason }

    public var description: String {
        switch reason {
        case .length: "a session id is 1 to 255 bytes"
        case .hidden: "a session id cannot start with \".\""
        case .separator: "a session id cannot contain \"/\" or NUL"
        case .notAsPrinted: "this name cannot be typed as it is: give \"~\" and the lowercase hex of its bytes"
        case .notHex: "after \"~\", a session id is the lowercase hex of its bytes"
        }
    }
}

public enum SnapshotKind: String, Codable, Sendable, CaseIterable {
    /// Every file of the session.
    case base
    /// The files created or changed, and the names deleted, since the previous snapshot.
    case delta
    /// The session directory was removed (logout): restore must not bring it back.
    case tombstone
}

/// Names one write attempt of a snapshot: 8 random bytes, as 16 lowercase hex digits. Two
/// writers racing for the same sequence (a `backup` beside `watch`, or a retry after a lost
/// reply) thus never write the same object: each attempt has a key of its own, and the head
/// names the one that won.
public struct SnapshotTag: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init?(_ text: some StringProtocol) {
        guard text.utf8.count == 16, text.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
        else { return nil }
        rawValue = String(text)
    }

    /// A fresh tag from the system's random source.
    public static func random() -> SnapshotTag {
        var generator = SystemRandomNumberGenerator()
        let value: UInt64 = generator.next()
        return SnapshotTag(withUnsafeBytes(of: value.bigEndian) { $0.lowercaseHex })!
    }

    public var description: String { rawValue }
    public static func < (lhs: SnapshotTag, rhs: SnapshotTag) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let tag = SnapshotTag(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a snapshot tag"))
        }
        self = tag
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// Which snapshot: its place in the session's chain, the generation (ownership claim) of the
/// writer that made it, and the tag of the write attempt. Several objects can share a
/// sequence (and a generation): racing writers, retries, fenced writers; only the one the
/// head's walk reaches is committed (`SessionStore.committed`), so the committed history has
/// one snapshot per sequence and "42.3" names it for people.
public struct SnapshotID: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public var sequence: UInt64
    public var generation: UInt64
    public var tag: SnapshotTag

    public init(sequence: UInt64, generation: UInt64, tag: SnapshotTag) {
        self.sequence = sequence
        self.generation = generation
        self.tag = tag
    }

    public static func < (lhs: SnapshotID, rhs: SnapshotID) -> Bool {
        (lhs.sequence, lhs.generation, lhs.tag) < (rhs.sequence, rhs.generation, rhs.tag)
    }

    /// "42.3": sequence 42 written under generation 3 (the tag is for keys, not for people).
    public var description: String { label.description }

    /// "42.3 (tag 5f0c3a9e7d21b846)": for messages about objects that may share a label (an
    /// orphan beside the committed snapshot of its sequence, a parent that is not the one named).
    public var tagged: String { "\(label) (tag \(tag))" }

    public var label: SnapshotLabel { SnapshotLabel(sequence: sequence, generation: generation) }
}

/// How people name a committed snapshot ("42.3", as `snapshots` prints it): its sequence and
/// generation. The committed history has one snapshot per sequence, so this is enough to find it.
public struct SnapshotLabel: Hashable, Sendable, CustomStringConvertible {
    public var sequence: UInt64
    public var generation: UInt64

    public init(sequence: UInt64, generation: UInt64) {
        self.sequence = sequence
        self.generation = generation
    }

    public var description: String { "\(sequence).\(generation)" }

    public init?(parsing text: String) {
        let parts = text.split(separator: ".")
        guard parts.count == 2, let sequence = UInt64(parts[0]), let generation = UInt64(parts[1]) else { return nil }
        self.init(sequence: sequence, generation: generation)
    }
}

/// Where a session's objects live in a store. Keys carry a keyed id of the session (or, in a
/// store of format version 2 not yet migrated, its name), sequence and generation numbers,
/// random tags and kinds only: nothing from inside the session.
///
///     sessions/<place>/head                               the commit point (encrypted)
///     sessions/<place>/name                               the session's id (encrypted; keyed places)
///     sessions/<place>/snapshots/<seq:020>-<gen:010>-<tag>[-<parent tag>].<kind>
///                                                         one snapshot (encrypted archive)
///     naming/<key id>                                     the store's naming secret, wrapped
///
/// The parent's tag (the snapshot at the sequence before, absent only for a session's first)
/// links each object to the one it follows, so the committed history is a walk from the head
/// through the listing.
public enum SessionLayout {
    static let root = "sessions/"

    public static func snapshotName(_ id: SnapshotID, kind: SnapshotKind, parentTag: SnapshotTag?) -> String {
        "snapshots/" + zeroPadded(id.sequence, 20) + "-" + zeroPadded(id.generation, 10) + "-" + id.tag.rawValue
            + (parentTag.map { "-" + $0.rawValue } ?? "") + "." + kind.rawValue
    }

    public static func snapshotName(_ entry: SnapshotEntry) -> String {
        snapshotName(entry.id, kind: entry.kind, parentTag: entry.parentTag)
    }

    /// Parses a key from a listing of `place.snapshotsPrefix`; nil for anything else.
    static func parseSnapshotKey(_ key: String, place: SessionPlace) -> (id: SnapshotID, kind: SnapshotKind, parentTag: SnapshotTag?)? {
        let prefix = place.snapshotsPrefix
        guard key.hasPrefix(prefix) else { return nil }
        let name = key.dropFirst(prefix.count)
        guard let dot = name.firstIndex(of: "."), let kind = SnapshotKind(rawValue: String(name[name.index(after: dot)...]))
        else { return nil }
        let fields = name[..<dot].split(separator: "-", omittingEmptySubsequences: false)
        guard (3...4).contains(fields.count), let sequence = UInt64(fields[0]), let generation = UInt64(fields[1]),
            let tag = SnapshotTag(fields[2])
        else { return nil }
        var parentTag: SnapshotTag?
        if fields.count == 4 {
            guard let parent = SnapshotTag(fields[3]) else { return nil }
            parentTag = parent
        }
        let id = SnapshotID(sequence: sequence, generation: generation, tag: tag)
        // Only the spelling the writer uses: one object, one key ("+1" or unpadded numbers are not ours).
        guard snapshotName(id, kind: kind, parentTag: parentTag) == "snapshots/" + name else { return nil }
        return (id, kind, parentTag)
    }

    /// Session ids at plain places (format version 2) in a listing of keys; keys at a keyed
    /// place (whose component has a keyed id's spelling) are not read here: their heads name them.
    static func plainSessionIDs(in keys: [String]) -> [SessionID] {
        var seen = Set<SessionID>()
        for key in keys where key.hasPrefix(root) {
            let rest = key.dropFirst(root.count)
            if !StoreNaming.isKeyedID(rest.prefix { $0 != "/" }), let id = SessionID.plainlyKeyed(rest) { seen.insert(id) }
        }
        return seen.sorted()
    }

    /// The identity bound into a snapshot's encryption, so an object copied to another
    /// session or renamed to another snapshot fails to decrypt. The session's name, in both
    /// layouts: a snapshot moves to its keyed place byte for byte.
    static func identity(_ session: SessionID, objectName: String) -> ObjectIdentity {
        ObjectIdentity(sessionID: session.rawValue, objectName: objectName)
    }

    private static func zeroPadded(_ value: UInt64, _ width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

/// One session's place in a store: the component after `sessions/`, a keyed id (format version
/// 3) or the name's own spelling (`SessionID.keyComponent`, version 2).
public struct SessionPlace: Hashable, Sendable, CustomStringConvertible {
    public let component: String
    public let isKeyed: Bool

    /// Where a session written by this version lives.
    public static func keyed(_ session: SessionID, naming: StoreNaming) -> SessionPlace {
        SessionPlace(component: naming.keyedID(.session, name: FileName.bytes(of: session.rawValue)), isKeyed: true)
    }

    /// Where format version 2 kept the session: its name in the key.
    public static func plain(_ session: SessionID) -> SessionPlace {
        SessionPlace(component: session.keyComponent, isKeyed: false)
    }

    public var prefix: String { SessionLayout.root + component + "/" }
    public var headKey: String { prefix + "head" }
    /// A keyed place's name object: the session's id, encrypted, so a listing can still name a
    /// session whose head is damaged or missing.
    public var nameKey: String { prefix + "name" }
    public var snapshotsPrefix: String { prefix + "snapshots/" }
    public func snapshotKey(_ entry: SnapshotEntry) -> String { prefix + SessionLayout.snapshotName(entry) }

    /// The identity bound into the head's encryption: the keyed id at a keyed place, so a head is
    /// read from the listing alone; the name at a plain place (version 2, and a migration's seal).
    func headIdentity(_ session: SessionID) -> ObjectIdentity {
        ObjectIdentity(sessionID: isKeyed ? component : session.rawValue, objectName: "head")
    }

    var nameIdentity: ObjectIdentity { ObjectIdentity(sessionID: component, objectName: "name") }

    public var description: String { prefix }
}
