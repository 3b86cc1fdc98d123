import Glibc
import SystemSupport

/// The points of an atomic replacement, reported after each one completes (for the crash tests).
enum SwapStep: String, CaseIterable, Sendable {
    case stagingCreated
    case stagingPopulated
    case stagingSynced
    /// Staging renamed from `staging` to `ready` (complete) and the parent fsynced.
    case stagingSealed
    /// renameat2(RENAME_EXCHANGE): the target now holds the new contents, `ready` the old ones.
    case exchanged
    /// Fallback without RENAME_EXCHANGE: the target renamed to `old`.
    case oldMovedAside
    /// Fallback, or no previous target: `ready` renamed to the target.
    case newMovedIntoPlace
    case parentSynced
    case oldRemoved
    case finished
}

/// What `recoverLeftovers` did, for the log.
public enum RecoveryAction: Hashable, Sendable {
    /// The target was missing and its complete previous version was renamed back.
    case restoredPrevious(session: String)
    case removed(name: String)
}

/// Replaces a directory by a new one so that a crash at any instant leaves the target either the
/// complete old directory (or absent, if there was none) or the complete new one.
///
/// Working directories live next to the target and are named `.<target>.sync-agent-<kind>-<16 hex>`:
/// - `staging`: being filled; never complete, always safe to remove;
/// - `ready`: complete and durable (sealed by rename). Before the exchange it holds the new contents,
///   after it the old ones; either way, once the target exists it is a leftover;
/// - `old`: the previous target, moved aside (only without RENAME_EXCHANGE).
///
/// With renameat2(RENAME_EXCHANGE) the target name never disappears: the kernel swaps both names in
/// one step, so the target is the complete old or the complete new directory at every instant. Where
/// the file system refuses it, the target is renamed aside and `ready` renamed into place; between
/// those two renames the target is missing, and `recoverLeftovers` puts `old` back.
///
/// Only one process may replace directories in a given parent at a time, and `recoverLeftovers` must
/// not run while a replacement is under way there.
public enum DirectorySwap {
    private static let marker = ".sync-agent-"

    /// Fills a new staging directory with `populate`, makes it durable, and swaps it into `target`'s
    /// place. If `populate` or anything before the swap fails, `target` is untouched and the staging
    /// directory removed. `target`'s parent must exist.
    public static func replace(_ target: String, populate: (StagingDirectory) throws -> Void) throws {
        try replace(target, allowExchange: true, onStep: { _ in }, populate: populate)
    }

    static func replace(
        _ target: String,
        allowExchange: Bool,
        onStep: (SwapStep) -> Void,
        populate: (StagingDirectory) throws -> Void
    ) throws {
        let (parentPath, name) = try split(target)
        let parent = try FileDescriptor.openDirectory(parentPath)
        let suffix = String(UInt64.random(in: .min ... .max), radix: 16).leftPadded(to: 16)
        let stagingName = workingName(for: name, kind: .staging, suffix: suffix)
        let readyName = workingName(for: name, kind: .ready, suffix: suffix)

        let root = try parent.makeDirectory(at: stagingName)
        onStep(.stagingCreated)
        do {
            let staging = StagingDirectory(path: parent.path + "/" + stagingName, root: root)
            try populate(staging)
            onStep(.stagingPopulated)
            try staging.sync()
            onStep(.stagingSynced)
            try parent.rename(stagingName, to: readyName)
            try parent.sync()
            onStep(.stagingSealed)
        } catch {
            try? parent.removeTree(at: stagingName)
            throw error
        }

        let previous: String?
        do {
            if try !parent.contains(name) {
                try parent.rename(readyName, to: name)
                previous = nil
                onStep(.newMovedIntoPlace)
            } else if allowExchange, try parent.exchange(readyName, name) {
                previous = readyName
                onStep(.exchanged)
            } else {
                guard canMoveAside(name) else {
                    throw SystemError("replace (the file system cannot exchange directories, and the name is too long to move aside)", path: target, errno: ENAMETOOLONG)
                }
                let oldName = workingName(for: name, kind: .old, suffix: suffix)
                try parent.rename(name, to: oldName)
                onStep(.oldMovedAside)
                do {
                    try parent.rename(readyName, to: name)
                } catch {
                    try? parent.rename(oldName, to: name)
                    throw error
                }
                previous = oldName
                onStep(.newMovedIntoPlace)
            }
        } catch {
            try? parent.removeTree(at: readyName)
            throw error
        }
        try parent.sync()
        onStep(.parentSynced)
        if let previous {
            try parent.removeTree(at: previous)
            onStep(.oldRemoved)
            try parent.sync()
        }
        onStep(.finished)
    }

    /// Brings every directory in `parent` back to a single complete version after a crash: a target
    /// missing next to its moved-aside previous version gets it back, then every working directory
    /// (staging, ready, old) is removed. Idempotent, so a crash during recovery is recovered by the
    /// next run. Run it before watching or restoring in `parent`.
    @discardableResult
    public static func recoverLeftovers(in parent: String) throws -> [RecoveryAction] {
        let directory = try FileDescriptor.openDirectory(parent)
        let leftovers = try directory.entryNames().compactMap(WorkingName.init).sorted { $0.name < $1.name }
        var actions: [RecoveryAction] = []
        var renamedBack: Set<String> = []
        for leftover in leftovers where leftover.kind == .old {
            if try !directory.contains(leftover.target) {
                try directory.rename(leftover.name, to: leftover.target)
                renamedBack.insert(leftover.name)
                actions.append(.restoredPrevious(session: leftover.target))
            }
        }
        // The renamed-back directory must be durable before anything else that could hold a copy is removed.
        if !renamedBack.isEmpty { try directory.sync() }
        for leftover in leftovers where !renamedBack.contains(leftover.name) {
            try directory.removeTree(at: leftover.name)
            actions.append(.removed(name: leftover.name))
        }
        if !actions.isEmpty { try directory.sync() }
        return actions
    }

    /// Whether `name` is one of our working directories, which a watcher must ignore.
    public static func isWorkingDirectoryName(_ name: String) -> Bool {
        WorkingName(name) != nil
    }

    /// `.<target>.sync-agent-<kind>-<suffix>`. A target whose name leaves no room for that in a
    /// name's 255 bytes gets `.~.sync-agent-<kind>-<suffix>` for staging and ready, which recovery
    /// only removes; it is never moved aside (`old`), which recovery must be able to name back.
    private static func workingName(for target: String, kind: WorkingName.Kind, suffix: String) -> String {
        "." + (canMoveAside(target) ? target : "~") + marker + kind.rawValue + "-" + suffix
    }

    private static func canMoveAside(_ target: String) -> Bool {
        let longestKind = WorkingName.Kind.allCases.map(\.rawValue.utf8.count).max()!
        return 1 + FileName.bytes(of: target).count + marker.utf8.count + longestKind + 1 + 16 <= 255
    }

    private static func split(_ target: String) throws -> (parent: String, name: String) {
        let trimmed = target.hasSuffix("/") ? String(target.dropLast()) : target
        let parent: String
        let name: String
        if let slash = trimmed.lastIndex(of: "/") {
            parent = slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
            name = String(trimmed[trimmed.index(after: slash)...])
        } else {
            parent = "."
            name = trimmed
        }
        guard !name.isEmpty, name != ".", name != ".." else {
            throw SystemError("replace", path: target, errno: EINVAL)
        }
        return (parent, name)
    }

    /// A parsed `.<target>.sync-agent-<kind>-<16 hex>` name.
    private struct WorkingName {
        enum Kind: String, CaseIterable {
            case staging, ready, old
        }

        let name: String
        let target: String
        let kind: Kind

        init?(_ name: String) {
            let suffix = name.suffix(16)
            guard name.hasPrefix("."), suffix.count == 16, suffix.allSatisfy(\.isHexDigit) else { return nil }
            let withoutSuffix = name.dropLast(16)
            for kind in Kind.allCases {
                let infix = DirectorySwap.marker + kind.rawValue + "-"
                if withoutSuffix.hasSuffix(infix), withoutSuffix.count > infix.count + 1 {
                    self.name = name
                    self.target = String(withoutSuffix.dropFirst().dropLast(infix.count))
                    self.kind = kind
                    return
                }
            }
            return nil
        }
    }
}

private extension String {
    func leftPadded(to length: Int) -> String {
        String(repeating: "0", count: max(0, length - count)) + self
    }
}
