import Foundation
import Logging
import SessionCrypto
@testable import SyncEngine
import TestSupport
import Testing

/// Sessions that keep their state in a SQLite database (Baileys' `useSqliteAuthState`, the
/// community adapters), made by Python's `sqlite3` as an application makes them: captured whole
/// through libsqlite3 with the WAL's committed transactions, companions never stored, and a
/// restore that integrity-checks each database and reads the credentials from its creds row.
@Suite("SQLite sessions")
struct SQLiteSessionTests {
    let workspace: TemporaryDirectory
    let sessionStore: SessionStore
    let session = SessionID("sqlite")!
    var directory: String { workspace.file("sessions/\(session.rawValue)") }

    init() throws {
        workspace = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: workspace.file("sessions/\(session.rawValue)"), withIntermediateDirectories: true)
        sessionStore = SessionStore(store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
    }

    /// Runs `script` in Python with `sqlite3`, `os` and `sys` imported and `path` the database's path;
    /// its standard output.
    @discardableResult
    func python(_ script: String, database: String = "auth.db") async throws -> String {
        try await runProgram("/usr/bin/env", ["python3", "-c", "import os, sqlite3, sys\npath = sys.argv[1]\n" + script, "\(directory)/\(database)"])
    }

    /// A Baileys SQLite auth state whose writer died with its transactions in the WAL (no
    /// checkpoint: `os._exit` skips the close), `rows` key rows, and `credentials` in the creds row.
    func writeBaileysDatabase(rows: Int = 200, credentials: String = BaileysFixtures.credentials(pairedWith: "4917099998888")) async throws {
        let quoted = String(decoding: try JSONEncoder().encode(credentials), as: UTF8.self)
        try await python("""
            db = sqlite3.connect(path, isolation_level=None)
            db.execute('PRAGMA journal_mode = WAL'); db.execute('PRAGMA wal_autocheckpoint = 0')
            db.execute('CREATE TABLE IF NOT EXISTS creds (key TEXT PRIMARY KEY, value TEXT)')
            db.execute('CREATE TABLE IF NOT EXISTS signal_keys (type TEXT, id TEXT, value TEXT, PRIMARY KEY (type, id))')
            db.execute("INSERT OR REPLACE INTO creds VALUES ('__creds__', ?)", (\(quoted),))
            for i in range(\(rows)): db.execute("INSERT OR REPLACE INTO signal_keys VALUES ('pre-key', ?, ?)", (str(i), os.urandom(150).hex()))
            sys.stdout.flush(); os._exit(0)
            """)
    }

    func replicator(format: SessionFormat = .baileys) -> SessionReplicator {
        SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: "test", conditionalWrites: true,
            format: format, policy: CompactionPolicy(), logger: Logger(label: "test"))
    }

    func restorer(format: SessionFormat = .baileys) -> SessionRestorer {
        var restorer = SessionRestorer(sessionStore: sessionStore)
        restorer.format = format
        return restorer
    }

    /// An existing, empty sessions root to restore into.
    func freshRoot() throws -> String {
        let root = workspace.file("restored-\(randomHex(4))")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return root
    }

    func rowCount(_ path: String) async throws -> String {
        try await runProgram(
            "/usr/bin/env",
            ["python3", "-c", "import sqlite3, sys; db = sqlite3.connect('file:' + sys.argv[1] + '?immutable=1', uri=True); print(db.execute('PRAGMA integrity_check').fetchone()[0], db.execute('SELECT count(*) FROM signal_keys').fetchone()[0])", path]
        ).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func aWALDatabaseIsCapturedWithItsCommittedTransactionsAndRestoredAsOneFile() async throws {
        try await writeBaileysDatabase()
        try Data(#"{"a":1}"#.utf8).write(to: URL(fileURLWithPath: "\(directory)/app-state.json"))
        // The transactions are in the WAL only: a copy of auth.db alone would miss them.
        #expect(FileManager.default.fileExists(atPath: "\(directory)/auth.db-wal"))
        #expect(FileManager.default.fileExists(atPath: "\(directory)/auth.db-shm"))
        _ = try await replicator().sync()

        let root = try freshRoot()
        let outcome = try await restorer().restore(session, into: root)
        #expect(outcome.status == .restored)
        #expect(outcome.registered == true)
        let restored = "\(root)/\(session.rawValue)"
        #expect(try FileManager.default.contentsOfDirectory(atPath: restored).sorted() == ["app-state.json", "auth.db"])
        #expect(try await rowCount("\(restored)/auth.db") == "ok 200")
        #expect(try await SnapshotVerifier(sessionStore: sessionStore).verify(session).allSatisfy(\.isOK))
        let mode = try FileManager.default.attributesOfItem(atPath: "\(restored)/auth.db")[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    /// A session backed up before its database was one (an agent before SQLite support, or a file
    /// that became a database): the whole-file records of the database and of its companions go
    /// at once, by a delta that only saw the database reported and by a base alike, and every
    /// snapshot restores one database with no stale WAL beside it.
    @Test func wholeFileRecordsOfADatabaseAndItsCompanionsGoOnceItIsStoredAsPages() async throws {
        for forceBase in [false, true] {
            try? FileManager.default.removeItem(atPath: directory)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let writer = replicator()
            // Before: `auth.db` an empty file, `auth.db-wal` an ordinary file beside it.
            try Data().write(to: URL(fileURLWithPath: "\(directory)/auth.db"))
            try Data("old wal".utf8).write(to: URL(fileURLWithPath: "\(directory)/auth.db-wal"))
            _ = try await writer.sync()
            try FileManager.default.removeItem(atPath: "\(directory)/auth.db")
            try FileManager.default.removeItem(atPath: "\(directory)/auth.db-wal")
            try await writeBaileysDatabase()

            let result = try await writer.sync(forceBase: forceBase, changedPaths: forceBase ? nil : ["auth.db"])
            guard case .uploaded(_, _, _, let unsettled) = result else { throw ProgramFailure("not uploaded (base: \(forceBase)): \(result)") }
            #expect(unsettled.isEmpty, "base: \(forceBase)")
            let root = try freshRoot()
            #expect(try await restorer().restore(session, into: root).status == .restored)
            #expect(try FileManager.default.contentsOfDirectory(atPath: "\(root)/\(session.rawValue)").sorted() == ["auth.db"])
            #expect(try await rowCount("\(root)/\(session.rawValue)/auth.db") == "ok 200")
            // Nothing left waiting: the session settles (after a compaction's base, maybe).
            var next = try await writer.sync()
            if case .uploaded(_, .base, _, []) = next { next = try await writer.sync() }
            #expect(next == .unchanged(unsettled: []), "base: \(forceBase): \(next)")
        }
    }

    @Test func aWriteToTheWALIsAChangeOfTheDatabase() async throws {
        try await writeBaileysDatabase(rows: 2000)
        let writer = replicator()
        guard case .uploaded(_, .base, let baseBytes, _) = try await writer.sync() else { throw ProgramFailure("no base") }
        try await python("""
            db = sqlite3.connect(path, isolation_level=None)
            db.execute('PRAGMA wal_autocheckpoint = 0')
            db.execute("INSERT INTO signal_keys VALUES ('session', 'new', 'v')")
            sys.stdout.flush(); os._exit(0)
            """)
        // The main file did not change; its WAL did, and the watcher reports the database for it.
        #expect(SQLiteDatabase.changedDatabase("auth.db-wal", in: directory) == "auth.db")
        #expect(SQLiteDatabase.changedDatabase("auth.db-journal", in: directory) == "auth.db")
        #expect(SQLiteDatabase.changedDatabase("other.json", in: directory) == nil)
        let result = try await writer.sync(changedPaths: ["auth.db-wal"])
        guard case .uploaded(_, .delta, let deltaBytes, _) = result else { throw ProgramFailure("the WAL's change was not uploaded: \(result)") }
        // One row: the pages it changed, not the database (about 700 kB here).
        #expect(deltaBytes * 20 < baseBytes, "a delta of \(deltaBytes) bytes beside a base of \(baseBytes)")
        let root = try freshRoot()
        _ = try await restorer().restore(session, into: root)
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(root)/\(session.rawValue)") == ["auth.db"])
        #expect(try await rowCount("\(root)/\(session.rawValue)/auth.db") == "ok 2001")
    }

    /// The identity comes from the creds row, and stays while only other files change.
    @Test func theSessionsIdentityIsReadFromTheCredsRow() async throws {
        try await writeBaileysDatabase(rows: 3)
        let writer = replicator()
        _ = try await writer.sync()
        #expect(await writer.identity?.authState == .valid)
        #expect(await writer.identity?.registered == true)
        try Data(#"{"b":2}"#.utf8).write(to: URL(fileURLWithPath: "\(directory)/other.json"))
        _ = try await writer.sync(changedPaths: ["other.json"])
        #expect(await writer.identity?.registered == true)
        // A creds row Baileys could not use replaces the registered identity, as a broken creds.json does.
        try await python("""
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("UPDATE creds SET value = '{}' WHERE key = '__creds__'")
            sys.stdout.flush(); os._exit(0)
            """)
        _ = try await writer.sync(changedPaths: ["auth.db-wal"])
        #expect(await writer.identity?.authState == .incomplete)
    }

    @Test func twoDatabasesAndACompanionWithoutItsDatabase() async throws {
        try await writeBaileysDatabase(rows: 5)
        try await python("""
            db = sqlite3.connect(path, isolation_level=None)
            db.execute('PRAGMA journal_mode = WAL')
            db.execute('CREATE TABLE signal_keys (type TEXT, id TEXT, value TEXT)')
            db.execute("INSERT INTO signal_keys VALUES ('a', 'b', 'c')")
            sys.stdout.flush(); os._exit(0)
            """, database: "second.db")
        // Not SQLite's: a file that only ends like a companion is an ordinary file.
        try Data("not a journal".utf8).write(to: URL(fileURLWithPath: "\(directory)/notes-journal"))
        _ = try await replicator().sync()
        let root = try freshRoot()
        _ = try await restorer().restore(session, into: root)
        let restored = "\(root)/\(session.rawValue)"
        #expect(try FileManager.default.contentsOfDirectory(atPath: restored).sorted() == ["auth.db", "notes-journal", "second.db"])
        #expect(try await rowCount("\(restored)/auth.db") == "ok 5")
        #expect(try await rowCount("\(restored)/second.db") == "ok 1")
    }

    /// A database whose page names would not fit an archive path is stored whole (as snapshots
    /// written before pages hold every database), and restored and verified as such. (Closed: a
    /// path this long is past SQLite's 512 bytes, so it is read as a plain file.)
    @Test func aDatabaseWhosePagesCannotBeNamedIsStoredWhole() async throws {
        try await python("""
            db = sqlite3.connect(path); db.execute('PRAGMA journal_mode = WAL'); db.execute('CREATE TABLE signal_keys (id)')
            db.executemany('INSERT INTO signal_keys VALUES (?)', [(i,) for i in range(50)]); db.commit(); db.close()
            """, database: "short.db")
        let deep = (1...3).map { String(repeating: "\($0)", count: 250) }.joined(separator: "/")
        try FileManager.default.createDirectory(atPath: "\(directory)/\(deep)", withIntermediateDirectories: true)
        let name = deep + "/" + String(repeating: "d", count: 240) + ".db"
        try FileManager.default.moveItem(atPath: "\(directory)/short.db", toPath: "\(directory)/\(name)")
        _ = try await replicator(format: .opaque).sync()
        let root = try freshRoot()
        let outcome = try await restorer(format: .opaque).restore(session, into: root)
        #expect(outcome.files == 1)
        let restored = "\(root)/\(session.rawValue)/\(name)"
        #expect(try readBytes(restored) == readBytes("\(directory)/\(name)"))
        #expect(try await SnapshotVerifier(sessionStore: sessionStore).verify(session).allSatisfy(\.isOK))
    }

    @Test func aCorruptDatabaseIsNotSwappedIn() async throws {
        try await writeBaileysDatabase(rows: 400)
        // Checkpointed and closed, then a b-tree page overwritten: the header still says SQLite.
        try await python("db = sqlite3.connect(path); db.execute('PRAGMA wal_checkpoint(TRUNCATE)'); db.execute('PRAGMA journal_mode = DELETE'); db.close()")
        let handle = try #require(FileHandle(forWritingAtPath: "\(directory)/auth.db"))
        try handle.seek(toOffset: 4096 * 3)
        try handle.write(contentsOf: Data(repeating: 0x5a, count: 4096))
        try handle.close()
        _ = try await replicator().sync()

        let root = try freshRoot()
        try FileManager.default.createDirectory(atPath: "\(root)/\(session.rawValue)", withIntermediateDirectories: false)
        try Data("the worker's state".utf8).write(to: URL(fileURLWithPath: "\(root)/\(session.rawValue)/keep"))
        let error = await #expect(throws: SnapshotError.self) { try await restorer().restore(session, into: root) }
        guard case .corrupt(let reason) = error else { throw ProgramFailure("not corrupt: \(String(describing: error))") }
        #expect(reason.contains("integrity check"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == [session.rawValue])
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(root)/\(session.rawValue)") == ["keep"])

        // `verify` runs the same check on the database the snapshot rebuilds.
        let checks = try await SnapshotVerifier(sessionStore: sessionStore).verify(session)
        guard case .corrupt(let defect) = checks.last?.defect else { throw ProgramFailure("verify found \(checks)") }
        #expect(defect.contains("integrity check"))
    }

    @Test func brokenCredentialsInTheCredsRowFailTheAuthStateCheck() async throws {
        try await writeBaileysDatabase(credentials: #"{"noiseKey":null}"#)
        _ = try await replicator().sync()
        let root = try freshRoot()
        let error = await #expect(throws: AuthStateError.self) { try await restorer().restore(session, into: root) }
        #expect(error?.defect.contains("creds row of auth.db") == true)
        #expect(!FileManager.default.fileExists(atPath: "\(root)/\(session.rawValue)"))
        // Opaque: bytes only, the database is still integrity-checked.
        let opaque = try await restorer(format: .opaque).restore(session, into: root)
        #expect(opaque.status == .restored)
    }

    @Test func anAdapterTableWithACredsIdHoldsTheCredentials() async throws {
        let quoted = String(decoding: try JSONEncoder().encode(BaileysFixtures.credentials()), as: UTF8.self)
        try await python("""
            db = sqlite3.connect(path, isolation_level=None)
            db.execute('PRAGMA journal_mode = WAL')
            db.execute('CREATE TABLE auth (id TEXT PRIMARY KEY, value TEXT)')
            db.execute("INSERT INTO auth VALUES ('creds', ?)", (\(quoted),))
            db.execute("INSERT INTO auth VALUES ('pre-key-1', '{}')")
            db.close()
            """)
        _ = try await replicator().sync()
        let outcome = try await restorer().restore(session, into: try freshRoot())
        #expect(outcome.status == .restored)
        #expect(outcome.registered == false)
    }
}
