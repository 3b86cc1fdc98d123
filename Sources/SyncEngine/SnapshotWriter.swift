import FoundationEssentials
import Glibc
import SessionArchive
import SessionCrypto
import SystemSupport

/// Turns a session directory into one snapshot: a zstd pax tar of the files it includes
/// (`files/<name>`), then the manifest, encrypted as it is written.
///
/// Files are read one at a time and only when they may have changed (their fingerprint
/// moved), so a delta costs what changed, and memory stays one file deep whatever the
/// session's size. A file that is being written (unstable, or JSON that does not parse) is
/// never captured: the snapshot keeps its previous good version and the caller retries. A file
/// the agent cannot take (over the size limit, unreadable) is skipped the same way, and reported:
/// the rest of its session is still backed up.
struct SnapshotWriter: Sendable {
    let keyring: Keyring
    let compressionLevel: Int
    /// Large bases (`ArchiveWriter.workerThreadThreshold`) compress on zstd's worker thread,
    /// overlapping compression with reading files (a 100,000-file base: 3.2 s instead of 4.1 s)
    /// at the cost of its job buffers, ~35 MB: right for a one-shot `backup`, which writes one
    /// session at a time; the sidecar keeps its memory instead.
    let largeBasesOnWorkerThread: Bool
    /// Which file holds the session's identity, recorded in each manifest.
    var format = SessionFormat.opaque
    let reader = StableFileReader()

    /// A file modified this recently may be rewritten again within one mtime tick with the
    /// same size, which its fingerprint could not tell apart (git's "racy" problem); such a
    /// file gets no fingerprint, so the next snapshot reads and hashes it again.
    static let fingerprintSettleTime: Int64 = 2_000_000_000

    struct Outcome: Sendable {
        /// Nil when a delta would be empty: nothing to upload.
        var manifest: SnapshotManifest?
        /// The session state after this snapshot.
        var state: SessionState
        /// Files that could not be captured consistently this time.
        var unsettled: [String]
        /// Files the agent cannot take, among those it looked at.
        var skipped: [String: SkippedFile]
        /// The files looked at, when only reported paths were; nil when the whole directory was.
        var examined: [String]?
        /// The session's identity after this snapshot (nil: unknown, or a format without one).
        var identity: SessionIdentity?
        /// This snapshot replaces the registered identity the previous one had.
        var replacesRegisteredIdentity = false
    }

    enum Failure: Error {
        /// A base needs every file, but some were mid-write; retry or write a delta.
        case baseIncomplete(unsettled: [String])
        /// The session was written at `lastWrite` (nanoseconds since the epoch), in the pause
        /// before the reads or during them (`WritePause`): try again once it is quiet.
        case writtenDuringReads(lastWrite: Int64)
    }

    /// Writes the snapshot to `sink` (opened lazily through `openSink`, so an empty delta
    /// writes nothing) and returns what it holds.
    ///
    /// `changedPaths` (deltas only): the paths the watcher reported since the previous
    /// snapshot; only those are read, so a change costs what changed, not the session's size.
    /// Nil scans the whole directory (start-up, rescans, after failures, bases).
    ///
    /// `previousIdentity`: the identity after the previous snapshot. The credentials file is
    /// parsed only when it changed, or when that identity is not known.
    /// `pause`: throws `writtenDuringReads` when the session was written in the pause before the
    /// reads or during them; nil takes the session as it is.
    func write(
        session: SessionID, directory: String, previous: SessionState, previousIdentity: SessionIdentity? = nil,
        kind: SnapshotKind, id: SnapshotID, parent: SnapshotID?, changedPaths: Set<String>? = nil, pause: WritePause? = nil,
        openSink: () throws -> ByteSink
    ) throws -> Outcome {
        precondition(kind != .tombstone, "tombstones carry no files; see tombstone(...)")
        let identity = SessionLayout.identity(session, objectName: SessionLayout.snapshotName(id, kind: kind, parentTag: parent?.tag))
        // Reported paths only: everything else is as the previous snapshot had it. Reported paths
        // are always read, never judged by fingerprint.
        var reportedNames: [String]?
        if kind == .delta, let changedPaths { reportedNames = try expand(changedPaths, in: directory, previous: previous) }
        let readsReportedPaths = reportedNames != nil
        var skipped: [String: SkippedFile] = [:]
        // Subdirectories the agent may not list: each is named as skipped, and the files the
        // previous state had below it keep their last good versions.
        var unreadableDirectories: [String] = []
        let candidates: [(name: String, fingerprint: FileState?)]
        if let reportedNames {
            candidates = reportedNames.map { ($0, nil) }
        } else {
            var scanned = try SessionFiles.scan(sessionDirectory: directory) { name, error in
                unreadableDirectories.append(name)
                skipped[name] = SkippedFile(name: name, error)
            }.map { (name: $0.name, fingerprint: Optional($0.state)) }
            if !unreadableDirectories.isEmpty {
                for name in unreadableDirectories { scanned += previous.names(inDirectory: name).map { ($0, nil) } }
                scanned.sort { SessionState.precedes($0.name, $1.name) }
            }
            candidates = scanned
        }
        // About what the tar will be, for zstd's window and tables: each file (a reported path
        // at the size the previous snapshot had it: an estimate, which spares a stat of every
        // changed file before the read that stats it anyway), a 512-byte header and half a block
        // of padding each, a manifest line of about 150 bytes each, the end marker.
        let expectedSize = candidates.reduce(Int64(1024)) { sum, candidate in
            sum + (candidate.fingerprint?.size ?? previous[candidate.name]?.size ?? 0) + 512 + 256 + 150
        }
        var archive: (writer: ArchiveWriter, encryption: EncryptingSink)?
        func archiveWriter() throws -> ArchiveWriter {
            if let archive { return archive.writer }
            let encryption = EncryptingSink(key: keyring.primary, identity: identity, downstream: try openSink())
            let writer = try ArchiveWriter(
                sink: encryption, compressionLevel: compressionLevel, expectedSize: expectedSize,
                workerThreadAllowed: largeBasesOnWorkerThread && kind == .base)
            archive = (writer, encryption)
            return writer
        }

        // Candidates come in name order, so both states build in place, without a dictionary of
        // every file (a base of 100,000 files). A base includes every file of its state.
        var included = SessionState.Builder()
        // What each candidate is now: the whole state after a scan, the changes after reported paths.
        var scanned = SessionState.Builder()
        var reported: [(name: String, record: FileRecord?)] = []
        func found(_ name: String, _ record: FileRecord?) {
            if readsReportedPaths {
                reported.append((name, record))
            } else if let record {
                _ = scanned.add(name, record)
            }
        }
        /// Databases whose pages this snapshot decided (captured, kept or gone): their page names
        /// among the candidates are not read as files.
        var decidedDatabases: Set<String> = []
        /// A database's pages sort after names its own name is a prefix of ("auth.db.bak" before
        /// "auth.db/.sqlite-page/…"): they wait here, with the bytes of those the archive takes, so
        /// that the states and the archive are built in name order.
        /// (A page is a slice of its database's image: the image is held once, not copied page by page.)
        var pendingPages: [(name: String, record: FileRecord, page: ArraySlice<UInt8>?)] = []
        /// Takes the pending pages that sort before `name` (all of them when nil).
        func takePages(before name: String?) throws {
            var taken = 0
            for pending in pendingPages {
                if let name, !SessionState.precedes(pending.name, name) { break }
                found(pending.name, pending.record)
                if let page = pending.page {
                    try archiveWriter().addFile(
                        relativePath: SnapshotManifest.filePrefix + pending.name, contents: Array(page), modificationTime: 0)
                    if kind == .delta { _ = included.add(pending.name, pending.record) }
                }
                taken += 1
            }
            pendingPages.removeFirst(taken)
        }
        /// The pages the previous state had for `name`, kept as they were (`keep`) or gone.
        func settlePages(of name: String, keep: Bool) {
            for page in previous.names(inDirectory: SQLitePages.directory(of: name)) {
                if keep, let record = previous[page] { pendingPages.append((page, record, nil)) } else { found(page, nil) }
            }
            decidedDatabases.insert(name)
        }
        var unsettled: [String] = []
        /// The credentials file's bytes, when it was read and changed (or its identity is unknown).
        var credentials: [UInt8]?
        /// The creds row of the first database read, for a session without the file.
        var databaseCredentials: [UInt8]?
        var readDatabase = false
        /// The databases read in this snapshot: their companions are never part of the session.
        var databases: [String] = []
        /// Databases stored as pages in this snapshot: a whole-file record of theirs is dropped.
        var databasesAsPages: Set<String> = []
        var keptBelowUnreadable = false
        let now = Self.epochNanoseconds()
        /// Stops the snapshot when something modified then was written in the pause before the
        /// reads or during them.
        func expectPause(since modification: Int64) throws {
            if let pause, pause.isRecent(modification, readsStartedAt: now, now: Self.epochNanoseconds()) {
                throw Failure.writtenDuringReads(lastWrite: modification)
            }
        }
        for (name, fingerprint) in candidates {
            try takePages(before: name)
            let previousRecord = previous[name]
            if unreadableDirectories.contains(where: { name.utf8.starts(with: ($0 + "/").utf8) }) {
                keptBelowUnreadable = true
                found(name, previousRecord)
                continue
            }
            // A database's pages come from its capture (it sorts before them), never from a read.
            if let page = SQLitePages.page(name) {
                if !decidedDatabases.contains(page.database) { found(name, previousRecord) }
                continue
            }
            // The credentials of a session whose identity is not known yet (a store written before
            // identities were, or in the opaque format) are read once, to learn it.
            if kind == .delta, let fingerprint, let previousRecord, previousRecord.fingerprint == fingerprint,
                name != format.credentialsFile || previousIdentity != nil
            {
                found(name, previousRecord)
                continue
            }
            guard ArchiveWriter.accepts(relativePath: SnapshotManifest.filePrefix + name) else {
                skipped[name] = SkippedFile(name: FileName.displayed(name), reason: SkippedFile.pathTooLong)
                found(name, previousRecord)
                settlePages(of: name, keep: true)
                continue
            }
            let read: StableRead
            do {
                read = try reader.read("\(directory)/\(name)")
            } catch {
                if let file = SkippedFile(name: name, error) {
                    skipped[name] = file
                    found(name, previousRecord)
                    settlePages(of: name, keep: true)
                    continue
                }
                // Not a regular file (any more): no part of the session, as a scan would find.
                guard error.reason != .notRegularFile else {
                    found(name, nil)
                    settlePages(of: name, keep: false)
                    continue
                }
                throw error
            }
            switch read {
            case .stable(let file):
                // A database is captured inside one of its read transactions: its own commits never
                // tear it, and a pause between them is not waited for.
                if !file.isDatabase { try expectPause(since: file.state.modificationTime) }
                if file.isDatabase { databases.append(name) }
                if file.isDatabase, format.credentialsFile != nil, databaseCredentials == nil {
                    readDatabase = true
                    databaseCredentials = try SQLiteImage(file.bytes).credentials(limit: BaileysCredentials.maximumByteCount + 1)
                }
                if file.isDatabase, let pageSize = SQLitePages.pageSize(of: file.bytes),
                    ArchiveWriter.accepts(relativePath: SnapshotManifest.filePrefix + SQLitePages.name(of: name, page: 1))
                {
                    // Stored as pages: the whole-file record a snapshot before them had is gone.
                    found(name, nil)
                    databasesAsPages.insert(name)
                    let pageCount = file.bytes.count / pageSize
                    for index in 1...pageCount {
                        let pageName = SQLitePages.name(of: name, page: index)
                        let page = file.bytes[(index - 1) * pageSize..<index * pageSize]
                        let record = FileRecord(
                            size: Int64(pageSize), contentID: keyring.primary.contentID(of: Array(page)), fingerprint: nil)
                        let unchanged = kind == .delta && previous[pageName]?.contentID == record.contentID
                        pendingPages.append((pageName, record, unchanged ? nil : page))
                    }
                    // Pages past the end of a database that shrank.
                    for page in previous.names(inDirectory: SQLitePages.directory(of: name))
                    where (SQLitePages.page(page)?.index ?? 0) > pageCount {
                        found(page, nil)
                    }
                    decidedDatabases.insert(name)
                    continue
                }
                settlePages(of: name, keep: false)
                let settled = now - file.state.modificationTime > Self.fingerprintSettleTime
                let record = FileRecord(
                    size: Int64(file.bytes.count), contentID: keyring.primary.contentID(of: file.bytes),
                    fingerprint: settled && !file.isDatabase ? file.state : nil)
                found(name, record)
                if name == format.credentialsFile, previousIdentity == nil || previousRecord?.contentID != record.contentID {
                    credentials = file.bytes
                }
                if kind == .delta, previousRecord?.contentID == record.contentID { continue }
                try archiveWriter().addFile(
                    relativePath: SnapshotManifest.filePrefix + name, contents: file.bytes, modificationTime: 0)
                if kind == .delta { _ = included.add(name, record) }
            case .unstable, .invalidJSON:
                // A file that changed under the read is a writer at work; one that does not parse
                // may also be one left half-written long ago.
                let modified = if case .invalidJSON(let state) = read { state.modificationTime } else { Self.epochNanoseconds() }
                try expectPause(since: modified)
                unsettled.append(name)
                found(name, previousRecord)
                settlePages(of: name, keep: true)
            case .missing:
                found(name, nil)
                settlePages(of: name, keep: false)
            }
        }
        try takePages(before: nil)
        let examined = readsReportedPaths ? candidates.map(\.name) : nil
        var state = readsReportedPaths ? previous.applying(reported) : scanned.build()
        // After reported paths, only a reported name can have gone (they come sorted, each once):
        // no comparison of the whole state with the previous one.
        var deleted =
            readsReportedPaths
            ? reported.compactMap { $0.record == nil && previous[$0.name] != nil ? $0.name : nil }
            : previous.names(absentFrom: state)
        // The companions of a database are never files of the session. A snapshot taken before
        // the agent knew databases (or while `name` was not one yet) may have stored them: they go,
        // even when only the database was reported (a WAL write reports its database).
        let companions = databases.flatMap { database in SQLiteDatabase.companionSuffixes.map { database + $0 } }
        let staleCompanions = companions.filter { state[$0] != nil }.sorted(by: SessionState.precedes)
        if !staleCompanions.isEmpty {
            state = state.applying(staleCompanions.map { ($0, nil) })
            deleted = Array(Set(deleted + staleCompanions.filter { previous[$0] != nil })).sorted(by: SessionState.precedes)
        }
        // Dropped on purpose (a database's whole-file record now that it is stored as pages, its
        // companions): deletions, never a replacement in progress, although the files are there.
        let dropped = databasesAsPages.union(companions)
        // A file missing between the two renames of a replacement was not deleted: it keeps its
        // last good version until the replacement is done.
        // (`previous` has every deleted name: a backup missing too holds nothing.)
        let beingReplaced = deleted.filter { name in
            !dropped.contains(name) && SessionFiles.missingFile(
                "\(directory)/\(name)", backupHoldsItsLastVersion: state[name + ".bak"]?.contentID == previous[name]?.contentID
            ).isBeingReplaced(now: now)
        }
        if !beingReplaced.isEmpty {
            state = state.applying(beingReplaced.map { ($0, previous[$0]) })
            deleted.removeAll { beingReplaced.contains($0) }
            unsettled += beingReplaced
        }
        // Renames and deletions move the directory's mtime, not a file's.
        if let modified = SessionFiles.modificationTime(directory) { try expectPause(since: modified) }
        // A base holds every file of its state: one with a good version it cannot read again cannot be one.
        if kind == .base,
            keptBelowUnreadable
                || (unsettled + skipped.keys).contains(where: {
                    previous[$0] != nil || !previous.names(inDirectory: SQLitePages.directory(of: $0)).isEmpty
                })
        {
            throw Failure.baseIncomplete(unsettled: unsettled)
        }
        var sessionIdentity = previousIdentity
        var replacesRegisteredIdentity = false
        // A session that keeps its credentials in a database (`useSqliteAuthState`) has no file:
        // its identity comes from the creds row, and stays as it was while no database was read.
        if let credentialsFile = format.credentialsFile, state[credentialsFile] == nil {
            credentials = databaseCredentials
        }
        if let credentialsFile = format.credentialsFile,
            credentials != nil
                || (state[credentialsFile] == nil && previousIdentity?.authState != .missing
                    && (readDatabase
                        || !state.names.contains { SQLitePages.page($0) != nil || SQLiteDatabase.isDatabase("\(directory)/\($0)") }))
        {
            (sessionIdentity, replacesRegisteredIdentity) = format.identity(
                ofCredentials: credentials, keyring: keyring, previous: previousIdentity)
        }
        if kind == .delta, included.count == 0, deleted.isEmpty {
            return Outcome(
                manifest: nil, state: state, unsettled: unsettled, skipped: skipped, examined: examined, identity: sessionIdentity)
        }

        // The digest follows the changes from the previous state's (computed here once for a
        // state that does not keep one yet: a first snapshot, a whole scan).
        state.keepDigest()
        // A base's state is exactly its files: every file read whole went into the archive, and a
        // file mid-write that the previous state had stopped the base above.
        let manifest = SnapshotManifest(
            session: session.rawValue, id: id, kind: kind, parent: parent, createdAt: Date(),
            files: kind == .base ? state : included.build(), deleted: kind == .delta ? deleted : [],
            stateFileCount: state.count, stateByteCount: state.byteCount,
            stateDigest: state.digest(formatVersion: SnapshotManifest.currentFormatVersion), identity: sessionIdentity)
        let writer = try archiveWriter()
        try add(manifest, to: writer)
        try writer.finish()
        try archive!.encryption.finish()
        return Outcome(
            manifest: manifest, state: state, unsettled: unsettled, skipped: skipped, examined: examined, identity: sessionIdentity,
            replacesRegisteredIdentity: replacesRegisteredIdentity)
    }

    static func epochNanoseconds() -> Int64 {
        Int64(Date().timeIntervalSince1970 * 1_000_000_000)
    }

    /// The manifest as the archive's last entry. A delta's manifest (a few files) fits one
    /// chunk: encoded once and kept. A larger one (a base of 100,000 files is about 15 MB of
    /// JSON Lines) is streamed, encoded twice over (its size first, for the entry's header)
    /// rather than held.
    private func add(_ manifest: SnapshotManifest, to writer: ArchiveWriter) throws {
        var chunks: [[UInt8]] = []
        var isLarge = false
        try ManifestJSON.write(manifest) { chunk in
            if chunks.isEmpty { chunks.append(Array(chunk)) } else { isLarge = true }
        }
        guard isLarge else {
            try writer.addFile(relativePath: SnapshotManifest.entryName, contents: chunks.first ?? [], modificationTime: 0)
            return
        }
        try writer.addFile(
            relativePath: SnapshotManifest.entryName, size: try ManifestJSON.byteCount(of: manifest), modificationTime: 0
        ) { write in
            try ManifestJSON.write(manifest, to: write)
        }
    }

    /// The files behind reported paths, sorted: a path may name a file, or a subdirectory at
    /// any depth (created, or removed with everything the previous snapshot had below it). Nil
    /// when two of them are canonically equivalent ("é" as one code point and as "e" + U+0301,
    /// two files on Linux): the state is built by name, where Swift's String takes them for one,
    /// so the caller scans the whole directory instead; nil too when a directory among them may
    /// not be listed, which that scan names.
    private func expand(_ paths: Set<String>, in directory: String, previous: SessionState) throws -> [String]? {
        var names: [String] = []
        for path in paths
        where !path.unicodeScalars.split(separator: "/").contains(where: { SessionFiles.isIgnoredName(String($0)) }) {
            names += previous.names(inDirectory: path)
            if SessionFiles.isDirectory("\(directory)/\(path)") {
                // A directory the agent may not list, at any depth: the whole scan names it.
                var unreadable = false
                do {
                    names += try SessionFiles.scan(sessionDirectory: "\(directory)/\(path)") { _, _ in unreadable = true }
                        .map { path + "/" + $0.name }
                } catch {
                    guard case .system("opendir", let code) = error.reason, code == EACCES || code == EPERM else { throw error }
                    unreadable = true
                }
                if unreadable { return nil }
            } else if let database = SQLiteDatabase.database(ofCompanion: path),
                SQLiteDatabase.isDatabase("\(directory)/\(database)")
            {
                // A write to a database's WAL or journal is a change of the database.
                names.append(database)
            } else {
                names.append(path)
            }
        }
        names.sort(by: SessionState.precedes)
        // A name reported twice is adjacent to itself once sorted; any other pair a Set merges is a twin.
        var unique: [String] = []
        for name in names where unique.last.map({ SessionState.precedes($0, name) }) ?? true { unique.append(name) }
        return Set(unique).count == unique.count ? unique : nil
    }

    /// A tombstone: an archive with only a manifest saying the session is gone.
    func tombstone(session: SessionID, id: SnapshotID, parent: SnapshotID?, to sink: ByteSink) throws -> SnapshotManifest {
        let identity = SessionLayout.identity(
            session, objectName: SessionLayout.snapshotName(id, kind: .tombstone, parentTag: parent?.tag))
        let manifest = SnapshotManifest(
            session: session.rawValue, id: id, kind: .tombstone, parent: parent, createdAt: Date(), files: SessionState(),
            deleted: [], stateFileCount: 0, stateByteCount: 0,
            stateDigest: SessionState().digest(formatVersion: SnapshotManifest.currentFormatVersion))
        let encryption = EncryptingSink(key: keyring.primary, identity: identity, downstream: sink)
        let writer = try ArchiveWriter(sink: encryption, compressionLevel: compressionLevel)
        try add(manifest, to: writer)
        try writer.finish()
        try encryption.finish()
        return manifest
    }
}
