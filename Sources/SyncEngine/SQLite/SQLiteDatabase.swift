import CSQLite
import FoundationEssentials
import Glibc
import SessionArchive
import SystemSupport

/// SQLite databases in a session directory (Baileys' `useSqliteAuthState`, the community
/// adapters): which files are databases and which are their companions, how one is captured
/// consistently while its application writes it, and the checks a restored one passes.
enum SQLiteDatabase {
    /// The first 16 bytes of every SQLite database file.
    static let header: [UInt8] = Array("SQLite format 3".utf8) + [0]
    /// SQLite's own files beside a database `name`: `name-wal`, `name-shm`, `name-journal`. Never
    /// stored: their content is only meaningful with the database as it was when they were
    /// written, and a stale `-wal` beside a restored database would be replayed into it.
    static let companionSuffixes = ["-wal", "-shm", "-journal"]
    /// The companions whose writes are a commit: the WAL (WAL mode), the journal (rollback mode:
    /// deleted, truncated or zeroed when a transaction commits).
    static let commitSuffixes = ["-wal", "-journal"]

    static func startsWithHeader(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.starts(with: header)
    }

    /// Whether the regular file at `path` (a `FileName` string) starts with the SQLite header.
    static func isDatabase(_ path: String) -> Bool {
        let descriptor = FileName.withPlatformPath(path) { open($0, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK) }
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return false }
        var bytes = [UInt8](repeating: 0, count: header.count)
        let count = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
        return count == header.count && bytes == header
    }

    /// The database `name` is a companion of (its name without the suffix); nil when `name` has
    /// no companion suffix. Whether that database exists and is one is for the caller to check:
    /// a `-wal` beside no database is an ordinary file.
    static func database(ofCompanion name: String, suffixes: [String] = companionSuffixes) -> String? {
        for suffix in suffixes where name.hasSuffix(suffix) && name.utf8.count > suffix.utf8.count {
            return String(decoding: name.utf8.dropLast(suffix.utf8.count), as: UTF8.self)
        }
        return nil
    }

    /// The database whose content a write to `name` in `directory` commits to: the database of a
    /// WAL or a journal (a WAL commit appends to `-wal`; a rollback-mode commit ends by deleting,
    /// truncating or zeroing its `-journal`); nil for any other file. An in-place write to any
    /// other file, a database's main file included, is not looked at: it is seen when the file is
    /// closed or renamed, and checking a header at every write(2) of every file would cost the
    /// watcher a read per write. `name` is relative to `directory`.
    static func changedDatabase(_ name: String, in directory: String) -> String? {
        guard let database = database(ofCompanion: name, suffixes: commitSuffixes) else { return nil }
        return isDatabase("\(directory)/\(database)") ? database : nil
    }

    /// The database at `path` exactly as it is after its last committed transaction: the pages
    /// of the main file with the WAL's committed frames applied, as one image, read inside one
    /// read transaction of a read-only connection (a WAL reader does not block the writer; the
    /// transaction lasts as long as the copy). `.unstable` when the database is busy (a rollback-
    /// mode writer committing, a WAL being recovered): the writer's next commit brings another event.
    ///
    /// A WAL-mode database without its `-wal` is closed: its main file is all of it. A read-only
    /// connection would create the `-wal` and `-shm` (as the agent's user, and leave them), so
    /// the caller reads such a file as a plain file, stable and with no `-wal` appearing meanwhile.
    static func capture(_ path: String, maxSize: Int) throws(WatcherError) -> StableRead {
        var connection: OpaquePointer?
        let opened = FileName.withPlatformPath(path) { sqlite3_open_v2($0, &connection, SQLITE_OPEN_READONLY, nil) }
        defer { sqlite3_close_v2(connection) }
        guard opened == SQLITE_OK, let connection else {
            if !fileExists(path) { return .missing }
            throw failure(connection, path: path)
        }
        // A WAL reader may wait briefly for a writer's WAL restart; longer is a writer at work.
        sqlite3_busy_timeout(connection, 1000)
        var size: Int64 = 0
        let started = ContinuousClock.now
        // sqlite3_serialize reads every page through the pager inside one statement: one read
        // transaction, ended before it returns.
        let image = sqlite3_serialize(connection, "main", &size, 0)
        let held = started.duration(to: .now)
        defer { sqlite3_free(image) }
        EngineMetrics.sqliteReadTransaction(held)
        guard let image else {
            switch sqlite3_errcode(connection) & 0xff {
            case SQLITE_BUSY, SQLITE_LOCKED: return .unstable
            case SQLITE_CANTOPEN where !fileExists(path): return .missing
            default: throw failure(connection, path: path)
            }
        }
        guard size <= maxSize else { throw WatcherError(.fileTooLarge(limit: maxSize), path: path) }
        // The state is the caller's: the main file's, which it checks did not change identity.
        return .stable(
            StableFile(
                bytes: Array(UnsafeBufferPointer(start: image, count: Int(size))),
                state: FileState(size: 0, mode: 0, modificationTime: 0, inode: 0, device: 0), isDatabase: true))
    }

    /// Whether the database at `path` is a WAL-mode database (header byte 18 is 2) without its
    /// `-wal`: closed, its main file complete.
    static func isClosedWALDatabase(_ bytes: [UInt8], path: String) -> Bool {
        bytes.count > 19 && bytes[18] == 2 && !fileExists(path + "-wal")
    }

    static func fileExists(_ path: String) -> Bool {
        var status = stat()
        return FileName.withPlatformPath(path) { lstat($0, &status) } == 0
    }

    private static func failure(_ connection: OpaquePointer?, path: String) -> WatcherError {
        let code = connection.map { sqlite3_extended_errcode($0) } ?? SQLITE_CANTOPEN
        let message = connection.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(code))
        return WatcherError(.database(message), path: path)
    }
}

/// A private, read-only, in-memory copy of a database image (a captured or restored database
/// file), for the checks a restore and `verify` run. No file is opened, so no `-wal` or `-shm`
/// appears beside a staged database.
final class SQLiteImage {
    private let connection: OpaquePointer

    /// Bytes that are no database open all the same: `integrityProblem` then says what is wrong.
    init(_ bytes: [UInt8]) throws(SnapshotError) {
        var opened: OpaquePointer?
        guard sqlite3_open_v2(":memory:", &opened, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK, let opened else {
            sqlite3_close_v2(opened)
            throw SnapshotError.io("cannot open an in-memory SQLite database")
        }
        connection = opened
        guard let memory = sqlite3_malloc64(UInt64(max(bytes.count, 1)))?.assumingMemoryBound(to: UInt8.self) else {
            throw SnapshotError.io("cannot allocate \(bytes.count) bytes for a SQLite image")
        }
        bytes.withUnsafeBufferPointer { memory.update(from: $0.baseAddress!, count: bytes.count) }
        // An in-memory database cannot be in WAL mode (bytes 18 and 19 are 2): the copy is
        // marked as a rollback-journal database, which changes nothing of its content.
        if bytes.count > 19, memory[18] == 2 { memory[18] = 1 }
        if bytes.count > 19, memory[19] == 2 { memory[19] = 1 }
        let flags = UInt32(SQLITE_DESERIALIZE_FREEONCLOSE | SQLITE_DESERIALIZE_READONLY)
        guard sqlite3_deserialize(connection, "main", memory, Int64(bytes.count), Int64(bytes.count), flags) == SQLITE_OK else {
            throw SnapshotError.io("SQLite cannot take an image of \(bytes.count) bytes: \(String(cString: sqlite3_errmsg(connection)))")
        }
    }

    /// The image of the database `name` in `snapshot`, which must pass `PRAGMA integrity_check`
    /// (`corrupt` when it does not).
    convenience init(checking bytes: [UInt8], name: String, snapshot: SnapshotID, session: SessionID) throws(SnapshotError) {
        try self.init(bytes)
        if let problem = integrityProblem() {
            throw .corrupt(
                "the database \(FileName.displayed(name)) in snapshot \(snapshot) of session \(session) fails SQLite's integrity check: \(problem)")
        }
    }

    deinit { sqlite3_close_v2(connection) }

    /// What `PRAGMA integrity_check` finds first; nil when it says "ok".
    func integrityProblem() -> String? {
        var problem: String?
        let ran = query("PRAGMA integrity_check") { statement in
            let row = Self.text(statement, 0)
            if row != "ok", problem == nil { problem = row }
        }
        if let error = ran { return error }
        return problem
    }

    /// The session's credentials JSON, up to `limit` bytes: Baileys' `creds` table (`key`
    /// `__creds__`), or else the `creds` row of a `(id, value)` table (the community adapters).
    /// Nil when the database holds neither.
    func credentials(limit: Int) -> [UInt8]? {
        var found: [UInt8]?
        func take(_ statement: OpaquePointer) {
            guard found == nil, let bytes = sqlite3_column_blob(statement, 0) else { return }
            let count = min(Int(sqlite3_column_bytes(statement, 0)), limit)
            found = Array(UnsafeRawBufferPointer(start: bytes, count: count))
        }
        _ = query("SELECT value FROM creds WHERE key = '__creds__'", row: take)
        if let found { return found }
        var tables: [String] = []
        _ = query("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name") { tables.append(Self.text($0, 0)) }
        for table in tables where found == nil {
            var columns: Set<String> = []
            let quoted = "\"" + table.split(separator: "\"", omittingEmptySubsequences: false).joined(separator: "\"\"") + "\""
            _ = query("PRAGMA table_info(\(quoted))") { columns.insert(Self.text($0, 1)) }
            guard columns.isSuperset(of: ["id", "value"]) else { continue }
            _ = query("SELECT value FROM \(quoted) WHERE id = 'creds'", row: take)
        }
        return found
    }

    private static func text(_ statement: OpaquePointer, _ column: Int32) -> String {
        sqlite3_column_text(statement, column).map { String(cString: $0) } ?? ""
    }

    /// Runs `sql`, calling `row` for each row; the error message when it fails.
    private func query(_ sql: String, row: (OpaquePointer) -> Void) -> String? {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(connection, sql, -1, &statement, nil) == SQLITE_OK, let statement else {
            return String(cString: sqlite3_errmsg(connection))
        }
        defer { sqlite3_finalize(statement) }
        while true {
            switch sqlite3_step(statement) {
            case SQLITE_ROW: row(statement)
            case SQLITE_DONE: return nil
            default: return String(cString: sqlite3_errmsg(connection))
            }
        }
    }
}

/// Keeps a file read from a snapshot whole when it is a SQLite database (its first 16 bytes are
/// the header), for the integrity check; anything else only passes through to `downstream`.
final class DatabaseCapture: ByteSink {
    var downstream: ByteSink?
    private var bytes: [UInt8] = []
    private var isDatabase = true

    /// The whole file, when it is a database.
    var database: [UInt8]? { isDatabase && SQLiteDatabase.startsWithHeader(bytes) ? bytes : nil }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        if isDatabase {
            bytes += chunk
            let checked = min(bytes.count, SQLiteDatabase.header.count)
            if !SQLiteDatabase.header.starts(with: bytes[0..<checked]) {
                isDatabase = false
                bytes = []
            }
        }
        try downstream?.write(chunk)
    }
}

/// A database stored as its pages (FORMAT.md, "SQLite databases"): page `i` (from 1) of the
/// database `name` is the session file `name/.sqlite-page/<i as 10 digits>`, so a snapshot's
/// delta carries the pages that changed, each with its own content id, and bases, compaction and
/// `verify` treat pages as files. No real file can have such a name: dot-names are never part of
/// a session, and `name` is a regular file.
enum SQLitePages {
    static let directoryName = ".sqlite-page"
    static let digits = 10

    /// Where the pages of `database` are named: `database/.sqlite-page`.
    static func directory(of database: String) -> String { database + "/" + directoryName }

    static func name(of database: String, page index: Int) -> String {
        let number = String(index)
        return directory(of: database) + "/" + String(repeating: "0", count: max(0, digits - number.utf8.count)) + number
    }

    /// The database and page index (from 1) a page's name names; nil for any other name.
    static func page(_ name: String) -> (database: String, index: Int)? {
        let marker = Array(("/" + directoryName + "/").utf8)
        let bytes = Array(name.utf8)
        guard bytes.count > marker.count + digits else { return nil }
        let number = bytes.suffix(digits)
        let databaseEnd = bytes.count - digits - marker.count
        guard bytes[databaseEnd..<(bytes.count - digits)].elementsEqual(marker), number.allSatisfy({ (0x30...0x39).contains($0) }),
            let index = Int(String(decoding: number, as: UTF8.self)), index >= 1
        else { return nil }
        return (String(decoding: bytes[..<databaseEnd], as: UTF8.self), index)
    }

    /// The page size an image's header gives (big-endian at offset 16; 1 means 65,536), when the
    /// image is a whole number of such pages; nil otherwise (it is then stored as one file).
    static func pageSize(of image: [UInt8]) -> Int? {
        guard image.count >= 100 else { return nil }
        let raw = Int(image[16]) << 8 | Int(image[17])
        let size = raw == 1 ? 65536 : raw
        guard size >= 512, size & (size - 1) == 0, image.count % size == 0 else { return nil }
        return size
    }
}
