import ArgumentParser
import FoundationEssentials
import Glibc
import SyncEngine

struct SnapshotsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshots",
        abstract: "List the stored sessions, or one session's snapshots.",
        discussion: """
            Without a session: every session in the store with its head (latest snapshot,
            generation, owner, tombstone). With one: each snapshot object, and whether the head
            committed it or it is an orphan (a writer still committing, or one that lost a race,
            retried, crashed or was fenced). Reads only.
            In hybrid mode, a session's snapshots are listed from the store a restore would use.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @Flag(help: "Also read every committed snapshot (downloads and decrypts) for its session's files and bytes.")
    var details = false
    @Flag(help: "Print the list as JSON.") var json = false
    @Argument(help: "A session id; without one, list the sessions.") var session: SessionID?

    func validate() throws {
        if details && session == nil { throw ValidationError("--details lists one session's snapshots: name a session") }
    }

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.snapshots")
        let opened = try await OpenedStorage.open(storage, logger: logger, access: .read)
        if let session {
            try await listSnapshots(session, store: try await opened.sources.store(for: session))
        } else {
            try await listSessions(opened)
        }
    }

    /// A session whose state cannot be read (its head corrupt, missing beside its snapshots, or
    /// behind a newer committed chain, or its store failing) is listed with its error, and the
    /// command exits 1 once every session is listed.
    private func listSessions(_ opened: OpenedStorage) async throws {
        var listing = SessionsListing()
        for id in try await opened.sources.sessions() {
            do {
                let stored = try await opened.sources.store(for: id).stored(id)
                try stored?.checkHeadIsNewest()
                listing.sessions.append(.init(id.description, head: stored?.head))
            } catch {
                var entry = SessionsListing.Session(id.description, head: nil)
                entry.error = "\(error)"
                listing.sessions.append(entry)
            }
        }
        if json {
            try printJSON(listing)
        } else {
            for entry in listing.sessions {
                let state = entry.error.map { "failed: \($0)" } ?? (entry.tombstoned ? "logged out" : entry.latest == nil ? "no snapshot" : "ok")
                print([
                    entry.sessionId, entry.latest ?? "-", entry.latestKind ?? "-", "generation \(entry.generation.map(String.init) ?? "-")",
                    state, entry.updatedAt ?? "-", entry.owner ?? "-",
                ].joined(separator: "\t"))
            }
        }
        if listing.sessions.contains(where: { $0.error != nil }) { throw ExitCode(1) }
    }

    /// The objects are listed even when the session's state cannot be read (then all as
    /// orphans), with the error, and the command exits 1.
    private func listSnapshots(_ session: SessionID, store: SessionStore) async throws {
        var head: SessionHead?
        var history: CommittedHistory?
        // The objects as the state's read listed them; nil when that read failed.
        var entries: [SnapshotEntry]?
        var stateError: (any Error)?
        do {
            let stored = try await store.stored(session)
            head = stored?.head
            entries = stored?.entries ?? []
            // A head behind a newer chain commits nothing it names: checked before its history.
            try stored?.checkHeadIsNewest()
            history = try stored?.committed()
        } catch {
            stateError = error
        }
        let listed: [SnapshotEntry]
        if let entries { listed = entries } else { listed = try await store.snapshots(session) }
        var listing = SnapshotsListing(sessionId: session.description, head: head.map { .init(session.description, head: $0) })
        listing.error = stateError.map { "\($0)" }
        for entry in listed {
            let isCommitted = history?.contains(entry) ?? false
            var row = SnapshotsListing.Snapshot(
                id: "\(entry.id)", tag: entry.id.tag.rawValue, kind: entry.kind.rawValue, size: entry.size,
                time: entry.lastModified.map(timestamp), committed: isCommitted)
            if details, isCommitted {
                do {
                    if let manifest = try await store.manifest(session, entry) {
                        row.files = manifest.stateFileCount
                        row.bytes = manifest.stateByteCount
                    } else {
                        row.error = "vanished from the store"
                    }
                } catch let error as SnapshotError {
                    row.error = "\(error)"
                }
            }
            listing.snapshots.append(row)
        }
        if json {
            try printJSON(listing)
        } else {
            for row in listing.snapshots {
                var columns = [row.time ?? "-", row.id, row.kind, "\(row.size) B", row.committed ? "committed" : "orphan"]
                if details {
                    columns.append(row.error ?? row.files.map { "\($0) files" } ?? "-")
                    columns.append(row.bytes.map { "\($0) bytes" } ?? "-")
                }
                print(columns.joined(separator: "\t"))
            }
        }
        if let stateError {
            writeStandardError("Error: \(stateError)\n")
            throw ExitCode(1)
        }
    }
}

struct SessionsListing: Encodable {
    struct Session: Encodable {
        var sessionId: String
        var latest: String?
        var latestKind: String?
        var base: String?
        var generation: UInt64?
        var owner: String?
        var tombstoned: Bool
        var updatedAt: String?
        /// Why the session's state cannot be read: its head is corrupt, missing beside its
        /// snapshots, or behind a newer committed chain.
        var error: String?

        /// A session whose head cannot be read (see `error`) shows no head fields.
        init(_ session: String, head: SessionHead?) {
            sessionId = session
            latest = head?.latest.map { "\($0)" }
            latestKind = head?.latestKind?.rawValue
            base = head?.base.map { "\($0)" }
            generation = head?.generation
            owner = head?.owner
            tombstoned = head?.isTombstoned ?? false
            updatedAt = head.map { timestamp($0.updatedAt) }
        }
    }

    var sessions: [Session] = []
}

struct SnapshotsListing: Encodable {
    struct Snapshot: Encodable {
        /// `SEQ.GEN`, which `restore --snapshot` takes; an orphan may share it with a committed snapshot.
        var id: String
        /// The write attempt's tag, which tells such objects apart.
        var tag: String
        var kind: String
        /// The object's size in the store.
        var size: Int64
        /// When the object was written, as the store lists it.
        var time: String?
        /// Part of the head's history; an orphan is an object no restore uses.
        var committed: Bool
        /// With `--details`: the session after this snapshot.
        var files: Int?
        var bytes: Int64?
        /// With `--details`: why the snapshot could not be read.
        var error: String?
    }

    var sessionId: String
    var head: SessionsListing.Session?
    /// Why the session's state cannot be read (the snapshots are then all listed as orphans).
    var error: String?
    var snapshots: [Snapshot] = []
}

func timestamp(_ date: Date) -> String { date.formatted(.iso8601) }
