import Foundation
import Glibc
@testable import SessionArchive
@testable import SyncEngine
import Synchronization
import SystemSupport
import TestSupport
import Testing

/// Real inotify on real directories. Bounds are generous (seconds) so that two loaded cores do not
/// make them flaky; nothing here measures speed.
@Suite("SessionWatcher")
struct WatcherTests {
    @Test func changesInTwoSessionsAreCoalescedIntoOneNotificationEach() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "alice", files: ["creds.json"])
        try makeSession(root, "bob", files: [])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(500)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }
        await recorder.wait { $0.first == .rescanNeeded(.started) }

        try write(#"{"me":1}"#, to: root.file("alice/creds.json"))
        try write(#"{"me":2}"#, to: root.file("alice/creds.json"))
        try write("{}", to: root.file("alice/pre-key-1.json"))
        unlink(root.file("alice/pre-key-1.json"))
        // An atomic writer: temporary, then rename over the name.
        try write("{}", to: root.file("bob/session-x.json.tmp"))
        rename(root.file("bob/session-x.json.tmp"), root.file("bob/session-x.json"))
        try write("{}", to: root.file("bob/.hidden"))
        try write("{}", to: root.file("bob/notes.swp"))

        await recorder.wait { $0.changes(of: sessionID("alice")).count == 1 && $0.changes(of: sessionID("bob")).count == 1 }
        try await Task.sleep(for: .seconds(1))
        let events = recorder.events
        #expect(events.changes(of: sessionID("alice")) == [["creds.json", "pre-key-1.json"]])
        #expect(events.changes(of: sessionID("bob")) == [["session-x.json"]])
        #expect(events.count == 3)
    }

    @Test func aNewSessionIsPickedUpWithTheFilesWrittenRightAfterItsMkdir() async throws {
        let root = try TemporaryDirectory()
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(200)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        let names = (0..<30).map { "pre-key-\($0).json" }
        try makeSession(root, "new-session", files: names)
        await recorder.wait { Set(names).isSubset(of: $0.changedPaths(of: sessionID("new-session"))) }

        try write("{}", to: root.file("new-session/creds.json"))
        await recorder.wait { $0.changedPaths(of: sessionID("new-session")).contains("creds.json") }
        #expect(!recorder.events.contains { if case .rescanNeeded(let reason) = $0 { reason != .started } else { false } })
    }

    /// "café" in NFC and in NFD are two directories and one Swift `String`: the watcher's maps
    /// keyed by `String` reported the changes of both under one of the names.
    @Test func twoCanonicallyEquivalentSessionsAreReportedApart() async throws {
        let root = try TemporaryDirectory()
        let (composed, decomposed) = ("caf\u{E9}", "cafe\u{301}")
        try makeSession(root, composed, files: [])
        try makeSession(root, decomposed, files: [])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(300)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }
        await recorder.wait { $0.first == .rescanNeeded(.started) }

        try write("{}", to: root.file("\(composed)/a.json"))
        try write("{}", to: root.file("\(decomposed)/b.json"))
        let (composedID, decomposedID) = (try #require(SessionID(composed)), try #require(SessionID(decomposed)))
        await recorder.wait { !$0.changes(of: composedID).isEmpty && !$0.changes(of: decomposedID).isEmpty }
        #expect(recorder.events.changedPaths(of: composedID) == ["a.json"])
        #expect(recorder.events.changedPaths(of: decomposedID) == ["b.json"])
    }

    @Test func aRemovedSessionIsReportedOnceAndNoWatchCountsAsLost() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "gone", files: ["creds.json", "pre-key-1.json"])
        try makeSession(root, "stays", files: ["creds.json"])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(200)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        try FileManager.default.removeItem(atPath: root.file("gone"))
        await recorder.wait { $0.contains(.sessionRemoved(session: sessionID("gone"))) }
        try await Task.sleep(for: .milliseconds(600))
        // Its files' deletions may come as a change first, if the removal was slow enough to fall
        // quiet half-way; the removal itself is reported once, and nothing else.
        let events = recorder.events
        #expect(events.filter { $0 == .sessionRemoved(session: sessionID("gone")) }.count == 1)
        #expect(events.last == .sessionRemoved(session: sessionID("gone")))
        #expect(events.allSatisfy { event in
            switch event {
            case .rescanNeeded(.started), .sessionRemoved(sessionID("gone")), .changed(sessionID("gone"), _, _): true
            default: false
            }
        }, "\(events)")
    }

    /// A restore swaps a complete new directory in (with RENAME_EXCHANGE where it can): the session
    /// is changed, never removed, and its staging directories are never taken for sessions.
    @Test func aSessionReplacedByARestoreIsChangedNotRemoved() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "restored", files: ["creds.json"])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(300)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        try DirectorySwap.replace(root.file("restored")) { staging in
            for name in ["creds.json", "app-state-sync-key-1.json"] {
                try staging.writeFile(relativePath: name) { sink in
                    try Array("{}".utf8).withUnsafeBytes { try sink.write($0) }
                }
            }
        }
        await recorder.wait { !$0.changes(of: sessionID("restored")).isEmpty }
        try await Task.sleep(for: .milliseconds(800))
        #expect(recorder.events.allSatisfy { event in
            switch event {
            case .rescanNeeded(.started): true
            case .changed(let session, _, _): session == sessionID("restored")
            default: false
            }
        })
        #expect(recorder.events.changedPaths(of: sessionID("restored")).contains("app-state-sync-key-1.json"))

        // Watching goes on in the new directory (a new name: a change of creds.json could still be the restore's).
        try write("{}", to: root.file("restored/written-after-restore.json"))
        await recorder.wait { $0.changedPaths(of: sessionID("restored")).contains("written-after-restore.json") }
    }

    /// An upload deferred by its session's writer asks for the changes made since it started:
    /// they come at once, quiet period or not, and before the answer; other sessions wait theirs.
    @Test func reportingPendingChangesNowComesBeforeItsAnswer() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "busy", files: [])
        try makeSession(root, "other", files: [])
        let watcher = try SessionWatcher(
            root: root.path, configuration: .init(quietPeriod: .seconds(600), maxDelay: .seconds(600)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }
        await recorder.wait { $0.first == .rescanNeeded(.started) }

        try write("{}", to: root.file("other/creds.json"))
        for round in 1...20 {
            // Written, then asked at once: the answer must still follow the report of the write.
            try write("{\"round\":\(round)}", to: root.file("busy/creds.json"))
            try write("{}", to: root.file("busy/pre-key-\(round).json"))
            #expect(watcher.reportPending(of: sessionID("busy"), then: UInt64(round)))
            await recorder.wait { $0.contains(.caughtUp(token: UInt64(round))) }
            let answer = recorder.events.firstIndex(of: .caughtUp(token: UInt64(round)))!
            let before = Array(recorder.events[..<answer])
            #expect(before.changedPaths(of: sessionID("busy")).isSuperset(of: ["creds.json", "pre-key-\(round).json"]))
        }
        #expect(recorder.events.changes(of: sessionID("other")).isEmpty)
        // Nothing pending: the answer alone.
        #expect(watcher.reportPending(of: sessionID("busy"), then: 99))
        await recorder.wait { $0.contains(.caughtUp(token: 99)) }
        #expect(recorder.events.suffix(1).map(\.reported) == [.caughtUp(99)])
        watcher.stop()
        #expect(!watcher.reportPending(of: sessionID("busy"), then: 100))
    }

    @Test func temporariesAndDotDirectoriesAreIgnored() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "quiet", files: [])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(100)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        try makeSession(root, ".quiet.sync-agent-staging-0123456789abcdef", files: ["creds.json"])
        try makeSession(root, ".trash", files: ["x.json"])
        for name in ["a.tmp", "b.swp", "c.json~", ".#creds.json", ".hidden"] {
            try write("{", to: root.file("quiet/\(name)"))
        }
        try write("not a session", to: root.file("file-in-root"))
        // Events are handled in order and sessions reported oldest first: once a file written after
        // all that is reported, anything reported for the names above would have come already.
        try write("{}", to: root.file("quiet/sentinel.json"))
        await recorder.wait { $0.contains { if case .changed(sessionID("quiet"), _, _) = $0 { true } else { false } } }
        try await Task.sleep(for: .milliseconds(300))
        #expect(recorder.events.map(\.reported) == [.rescan(.started), .changed(sessionID("quiet"), ["sentinel.json"])])
    }

    @Test func filesOneSubdirectoryDownAreWatched() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "nested", files: [])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(200)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        mkdir(root.file("nested/keys"), 0o700)
        try write("{}", to: root.file("nested/keys/a.json"))
        await recorder.wait { $0.changedPaths(of: sessionID("nested")).contains("keys/a.json") }
        try write("{}", to: root.file("nested/keys/b.json"))
        await recorder.wait { $0.changedPaths(of: sessionID("nested")).contains("keys/b.json") }
    }

    /// Any depth: a directory created and filled before its watch is in place is scanned when the
    /// watch is added; later files in it are reported from its own watch.
    @Test func filesAtAnyDepthAreWatched() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "deep", files: [])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(200)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        // Created and filled in one go: the deeper levels exist before any watch on them.
        try FileManager.default.createDirectory(atPath: root.file("deep/a/b/c/d"), withIntermediateDirectories: true)
        try write("{}", to: root.file("deep/a/b/c/d/x.json"))
        try write("{}", to: root.file("deep/a/b/y.json"))
        await recorder.wait { $0.changedPaths(of: sessionID("deep")).isSuperset(of: ["a/b/c/d/x.json", "a/b/y.json"]) }
        try write("{}", to: root.file("deep/a/b/c/d/later.json"))
        await recorder.wait { $0.changedPaths(of: sessionID("deep")).contains("a/b/c/d/later.json") }
        // A removed subtree is reported by its top directory's name, and its watches go.
        try FileManager.default.removeItem(atPath: root.file("deep/a/b"))
        await recorder.wait { $0.changedPaths(of: sessionID("deep")).contains("a/b") }
        // A directory that comes back under a former file's name, and the reverse.
        try write("{}", to: root.file("deep/a/b"))
        await recorder.wait { $0.changes(of: sessionID("deep")).last?.contains("a/b") == true }
        unlink(root.file("deep/a/b"))
        try FileManager.default.createDirectory(atPath: root.file("deep/a/b/c"), withIntermediateDirectories: true)
        try write("{}", to: root.file("deep/a/b/c/z.json"))
        await recorder.wait { $0.changedPaths(of: sessionID("deep")).contains("a/b/c/z.json") }
    }

    @Test func theStartUpScanFindsFilesAtAnyDepth() throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "deep", files: ["creds.json"])
        try FileManager.default.createDirectory(atPath: root.file("deep/sub/deeper/deepest"), withIntermediateDirectories: true)
        try write("{}", to: root.file("deep/sub/x.json"))
        try write("{}", to: root.file("deep/sub/deeper/x.json"))
        try write("{}", to: root.file("deep/sub/deeper/deepest/x.json"))
        try write("{}", to: root.file("deep/sub/deeper/.hidden"))
        #expect(try SessionFiles.scan(sessionDirectory: root.file("deep")).map(\.name)
            == ["creds.json", "sub/deeper/deepest/x.json", "sub/deeper/x.json", "sub/x.json"])
    }

    @Test func aFileIsNotReportedUntilItIsClosed() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "writer", files: [])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(100)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        let descriptor = open(root.file("writer/creds.json"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        #expect(descriptor >= 0)
        _ = Glibc.write(descriptor, "{\"half\":", 8)
        try await Task.sleep(for: .milliseconds(700))
        #expect(recorder.events == [.rescanNeeded(.started)])

        _ = Glibc.write(descriptor, "1}", 2)
        close(descriptor)
        await recorder.wait { $0.map(\.reported).contains(.changed(sessionID("writer"), ["creds.json"])) }
    }

    /// Baileys' replacement: `name.tmp` written and closed, `name` renamed to `name.bak`, `name.tmp`
    /// renamed over `name` (and, without a backup, over an existing `name`): changes of `name` and
    /// `name.bak`, never of the temporary.
    @Test func aTemporaryRenamedOverANameIsAChangeOfTheName() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "baileys", files: ["creds.json", "pre-key-1.json"])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(100)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        try write("{\"next\":1}", to: root.file("baileys/creds.json.tmp"))
        #expect(rename(root.file("baileys/creds.json"), root.file("baileys/creds.json.bak")) == 0)
        #expect(rename(root.file("baileys/creds.json.tmp"), root.file("baileys/creds.json")) == 0)
        try write("{\"next\":1}", to: root.file("baileys/pre-key-1.json.tmp"))
        #expect(rename(root.file("baileys/pre-key-1.json.tmp"), root.file("baileys/pre-key-1.json")) == 0)
        await recorder.wait { $0.changedPaths(of: sessionID("baileys")) == ["creds.json", "creds.json.bak", "pre-key-1.json"] }
        #expect(recorder.events.changedPaths(of: sessionID("baileys")) == ["creds.json", "creds.json.bak", "pre-key-1.json"])
    }

    /// A SQLite writer keeps its files open: a write to a database's WAL (IN_MODIFY, no close) is a
    /// change of the database, never of the WAL; a write to a file that is no database's companion
    /// is reported when it is closed, as always.
    @Test func aWriteToADatabasesWALIsAChangeOfTheDatabase() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "sqlite", files: [])
        try write("SQLite format 3\u{0}" + String(repeating: "x", count: 100), to: root.file("sqlite/auth.db"))
        try write("", to: root.file("sqlite/auth.db-wal"))
        try write("", to: root.file("sqlite/notes-wal"))
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(100)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        let wal = try #require(FileHandle(forWritingAtPath: root.file("sqlite/auth.db-wal")))
        defer { try? wal.close() }
        try wal.write(contentsOf: Data("a committed frame".utf8))
        let other = try #require(FileHandle(forWritingAtPath: root.file("sqlite/notes-wal")))
        defer { try? other.close() }
        try other.write(contentsOf: Data("not SQLite's".utf8))
        await recorder.wait { $0.changedPaths(of: sessionID("sqlite")).contains("auth.db") }
        #expect(recorder.events.changedPaths(of: sessionID("sqlite")) == ["auth.db"])
    }

    /// Written every 50 ms for 2 s, the session never falls quiet for its 250 ms; only the maximum
    /// delay of 500 ms reports it before the writing ends, about four times.
    @Test func aSessionWrittenContinuouslyIsReportedEveryMaxDelay() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "busy", files: ["creds.json"])
        let watcher = try SessionWatcher(
            root: root.path, configuration: .init(quietPeriod: .milliseconds(250), maxDelay: .milliseconds(500)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        let writer = BackgroundWriter(path: root.file("busy/creds.json"), interval: .milliseconds(50))
        try await Task.sleep(for: .seconds(2))
        writer.stop()
        // Without the maximum delay this would be one notification, after the writing ended. Three
        // leaves room for a loaded machine; when they are consumed does not matter.
        await recorder.wait { $0.changes(of: sessionID("busy")).count >= 3 }
        #expect(recorder.events.allSatisfy { $0.reported == .rescan(.started) || $0.reported == .changed(sessionID("busy"), ["creds.json"]) })
    }

    /// Restores in a loop, by exchange and by two renames in turn, while the session is written all
    /// along: the watches follow every swap, so writes after the last one are reported, in the session
    /// directory and in its subdirectory.
    @Test func aSessionSwappedManyTimesWhileWrittenIsStillWatchedAfterTheLastSwap() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "restored", files: ["creds.json"])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .milliseconds(50)))
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }

        let writer = BackgroundWriter(path: root.file("restored/creds.json"), interval: .microseconds(200))
        for round in 0..<300 {
            for step in try restoreSteps(root, session: "restored", exchange: round % 2 == 0) { try step() }
        }
        writer.stop()
        try write("{}", to: root.file("restored/after-last-swap.json"))
        try write("{}", to: root.file("restored/keys/after-last-swap.json"))
        await recorder.wait {
            $0.changedPaths(of: sessionID("restored")).isSuperset(of: ["after-last-swap.json", "keys/after-last-swap.json"])
        }
        // Between the two renames the directory is missing, and a report falling due then says so.
        let unexpected = recorder.events.filter { event in
            switch event {
            case .rescanNeeded(.started), .rescanNeeded(.queueOverflow), .changed(sessionID("restored"), _, _), .sessionRemoved(sessionID("restored")): false
            default: true
            }
        }
        #expect(unexpected.isEmpty)
        #expect(recorder.events.last { $0 != .rescanNeeded(.queueOverflow) }.map { if case .changed = $0 { true } else { false } } == true)
    }

    @Test func stopFlushesPendingChangesFinishesTheStreamAndReleasesTheLoop() async throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "pending", files: [])
        let watcher = try SessionWatcher(root: root.path, configuration: .init(quietPeriod: .seconds(30), maxDelay: .seconds(60)))
        try write("{}", to: root.file("pending/creds.json"))
        watcher.stop()
        #expect(watcher.isLoopReleased)
        var events: [WatchEvent] = []
        for await event in watcher.events { events.append(event) }
        #expect(events.map(\.reported) == [.rescan(.started), .changed(sessionID("pending"), ["creds.json"])])
        watcher.stop()
    }

    @Test func sessionsPastTheWatchLimitAreComparedEveryRescanIntervalAndWatchedOnceAWatchIsFree() async throws {
        let root = try TemporaryDirectory()
        for session in ["a", "b", "c"] { try makeSession(root, session, files: ["creds.json"]) }
        var configuration = SessionWatcher.Configuration(quietPeriod: .milliseconds(50), maxDelay: .milliseconds(300), rescanInterval: .milliseconds(300))
        configuration.watchLimit = 3
        let watcher = try SessionWatcher(root: root.path, configuration: configuration)
        let recorder = EventRecorder(watcher)
        defer { watcher.stop() }
        await recorder.wait { $0.contains(.rescanNeeded(.started)) }
        #expect(recorder.events.first?.reported == .unwatched([sessionID("c")]))

        // Reported whole (no paths: compare everything), again and again, while it has no watch.
        await recorder.wait { $0.changes(of: sessionID("c")).filter(\.isEmpty).count >= 2 }
        #expect(recorder.events.changes(of: sessionID("a")).isEmpty)

        // A watch freed: the next comparison watches the session and says every session is watched.
        try FileManager.default.removeItem(atPath: root.file("a"))
        await recorder.wait { $0.map(\.reported).contains(.unwatched([])) }
        let watchedAt = recorder.events.count
        try write("{}", to: root.file("c/creds.json"))
        await recorder.wait { $0.dropFirst(watchedAt).contains { $0.reported == .changed(sessionID("c"), ["creds.json"]) } }
    }

    @Test func aMissingRootIsAClearError() throws {
        let root = try TemporaryDirectory()
        let error = #expect(throws: WatcherError.self) { try SessionWatcher(root: root.file("nowhere")) }
        #expect(error?.description.contains("nowhere") == true)
    }

    @Test func theWatchLimitErrorSaysWhatToRaise() {
        errno = ENOSPC
        let error = WatcherError.lastSystemError("inotify_add_watch", path: "/data/sessions/abc")
        #expect(error.reason == .watchLimitReached)
        #expect(error.description.contains("/proc/sys/fs/inotify/max_user_watches"))
        #expect(error.description.contains("sysctl fs.inotify.max_user_watches="))
    }
}

/// The event handling driven directly with synthetic inotify records, for what cannot be made to
/// happen on demand (a queue overflow, a watch dropped by the kernel).
@Suite("WatchLoop with synthetic events")
struct WatcherEventHandlingTests {
    @Test func recordsDecodeAsTheKernelLaysThemOut() {
        let events = [
            InotifyEvent(watch: 1, mask: [.closeWrite], cookie: 0, name: "creds.json"),
            InotifyEvent(watch: 2, mask: [.create, .isDirectory], cookie: 0, name: String(repeating: "n", count: 255)),
            InotifyEvent(watch: 3, mask: [.deleteSelf], cookie: 0, name: nil),
            InotifyEvent(watch: -1, mask: [.queueOverflow], cookie: 0, name: nil),
            InotifyEvent(watch: 1, mask: [.movedFrom], cookie: 77, name: "abcdefghijklmnop"),
        ]
        let bytes = Inotify.encode(events)
        #expect(bytes.withUnsafeBytes { Inotify.decode($0) } == events)
        // A record cut short is dropped, never read past.
        #expect(bytes.dropLast(3).withUnsafeBytes { Inotify.decode($0) } == Array(events.dropLast()))
    }

    /// A write in place matters only to a database's WAL or journal: any other is dropped as it
    /// is decoded (the busiest event of all), and the close that follows it is what reports it.
    @Test func writesInPlaceAreKeptOnlyForCommitFiles() {
        let kept = [
            InotifyEvent(watch: 1, mask: [.modify], cookie: 0, name: "auth.db-wal"),
            InotifyEvent(watch: 1, mask: [.modify], cookie: 0, name: "auth.db-journal"),
            InotifyEvent(watch: 1, mask: [.closeWrite], cookie: 0, name: "creds.json"),
            InotifyEvent(watch: 1, mask: [.modify, .isDirectory], cookie: 0, name: "keys"),
        ]
        let dropped = [
            InotifyEvent(watch: 1, mask: [.modify], cookie: 0, name: "creds.json"),
            InotifyEvent(watch: 1, mask: [.modify], cookie: 0, name: "auth.db-shm"),
            InotifyEvent(watch: 1, mask: [.modify], cookie: 0, name: "wal"),
            InotifyEvent(watch: 1, mask: [.modify], cookie: 0, name: nil),
        ]
        #expect(Inotify.encode(dropped + kept + dropped).withUnsafeBytes { Inotify.decode($0) } == kept)
    }

    /// Catching up reads everything queued when asked, by its bytes: a read whose every record is
    /// a dropped write in place decodes to nothing, and is not the end of the queue (a close
    /// behind 3,000 such records came after the answer, until this was counted in bytes).
    @Test func catchingUpReadsPastReadsOfOnlyWritesInPlace() throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "busy", files: ["a.json", "b.json"])
        let inotify = try Inotify()
        _ = try inotify.addWatch(root.file("busy"), mask: WatchLoop.sessionMask)
        let files = try ["a.json", "b.json"].map { FileHandle(forWritingAtPath: root.file("busy/\($0)"))! }
        // Alternating, so that the kernel cannot merge them: 3,000 records, more than one read.
        for round in 0..<3_000 { try files[round % 2].write(contentsOf: Data("{}".utf8)) }
        for file in files { try file.close() }
        #expect(try inotify.readEvents().isEmpty, "a whole read of writes in place")
        let events = try inotify.readQueued()
        #expect(Set(events.filter { $0.mask.contains(.closeWrite) }.compactMap(\.name)) == ["a.json", "b.json"])
        #expect(try inotify.readQueued().isEmpty)
    }

    @Test func aQueueOverflowDropsPendingChangesAndAsksForARescan() throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "a", files: ["creds.json"])
        let recorded = Mutex<[WatchEvent]>([])
        let loop = try WatchLoop(
            root: root.path, configuration: .init(), wakeUp: nil, emit: { event in recorded.withLock { $0.append(event) } })
        let watch = try #require(loop.watchByDirectory[WatchedDirectory(session: sessionID("a"))])

        loop.handle(decoded([InotifyEvent(watch: watch, mask: .closeWrite, cookie: 0, name: "creds.json")]), at: .now)
        try makeSession(root, "b", files: [])
        loop.handle(decoded([InotifyEvent(watch: -1, mask: .queueOverflow, cookie: 0, name: nil)]), at: .now)

        #expect(recorded.withLock { $0 } == [.rescanNeeded(.started), .rescanNeeded(.queueOverflow)])
        // The rescan re-established the watches, including the session created meanwhile.
        #expect(Set(loop.watchByDirectory.keys) == [WatchedDirectory(session: sessionID("a")), WatchedDirectory(session: sessionID("b"))])
    }

    @Test func aWatchDroppedByTheKernelAsksForARescanAndIsReplaced() throws {
        let root = try TemporaryDirectory()
        try makeSession(root, "a", files: [])
        let recorded = Mutex<[WatchEvent]>([])
        let loop = try WatchLoop(
            root: root.path, configuration: .init(), wakeUp: nil, emit: { event in recorded.withLock { $0.append(event) } })
        let watch = try #require(loop.watchByDirectory[WatchedDirectory(session: sessionID("a"))])
        loop.inotify.removeWatch(watch)

        loop.handle(decoded([InotifyEvent(watch: watch, mask: .ignored, cookie: 0, name: nil)]), at: .now)
        #expect(recorded.withLock { $0 } == [.rescanNeeded(.started), .rescanNeeded(.watchLost(path: root.file("a")))])
        let replacement = try #require(loop.watchByDirectory[WatchedDirectory(session: sessionID("a"))])
        #expect(replacement != watch)
    }

    /// A restore swaps the session directory in (RENAME_EXCHANGE, or two renames where the file system
    /// refuses it), then removes the previous one. The kernel queues each step's records once the step
    /// is done, and the watcher looks at the directory as it is when it handles them: whichever steps
    /// it had read before the next one ran, and however the records were split between reads, the
    /// session and its subdirectory end up watched in the new directories and no watch counts as lost.
    @Test(arguments: [true, false])
    func aSwappedSessionIsWatchedInItsNewDirectoryWhateverTheWatcherReadWhen(exchange: Bool) throws {
        let stepCount = exchange ? 2 : 3
        for stepsRead in 0..<(1 << stepCount) {
            for oneRecordPerRead in [false, true] {
                let root = try TemporaryDirectory()
                try makeSession(root, "restored", files: ["creds.json"])
                mkdir(root.file("restored/keys"), 0o700)
                let recorded = Mutex<[WatchEvent]>([])
                let loop = try WatchLoop(
                    root: root.path, configuration: .init(), wakeUp: nil, emit: { event in recorded.withLock { $0.append(event) } })

                let steps = try restoreSteps(root, session: "restored", exchange: exchange)
                #expect(steps.count == stepCount)
                for (index, step) in steps.enumerated() {
                    try step()
                    if stepsRead & (1 << index) != 0 { try readAndHandle(loop, oneRecordPerRead: oneRecordPerRead) }
                }
                try readAndHandle(loop, oneRecordPerRead: oneRecordPerRead)

                try write("{}", to: root.file("restored/after-swap.json"))
                try write("{}", to: root.file("restored/keys/after-swap.json"))
                let events = try loop.inotify.readEvents()
                let context = Comment(rawValue: "steps read \(stepsRead), one record per read: \(oneRecordPerRead)")
                for directory in [WatchedDirectory(session: sessionID("restored")), WatchedDirectory(session: sessionID("restored"), subdirectory: "keys")] {
                    let watch = try #require(loop.watchByDirectory[directory], context)
                    #expect(events.contains { $0.watch == watch && $0.name == "after-swap.json" && $0.mask.contains(.closeWrite) }, context)
                }
                #expect(loop.watchByDirectory.count == 2, context)
                #expect(recorded.withLock { $0 } == [.rescanNeeded(.started)], context)
            }
        }
    }

    @Test func theWatchLimitIsReportedOnceAndUnwatchedSessionsAreComparedEveryRescanInterval() throws {
        let root = try TemporaryDirectory()
        for session in ["a", "b", "c", "d"] { try makeSession(root, session, files: ["creds.json"]) }
        let recorded = Mutex<[WatchEvent]>([])
        var configuration = SessionWatcher.Configuration(quietPeriod: .milliseconds(50), maxDelay: .seconds(1))
        // The root and two sessions.
        configuration.watchLimit = 3
        let loop = try WatchLoop(
            root: root.path, configuration: configuration, wakeUp: nil, emit: { event in recorded.withLock { $0.append(event) } })
        #expect(Set(loop.watchByDirectory.keys) == [WatchedDirectory(session: sessionID("a")), WatchedDirectory(session: sessionID("b"))])
        // One event for all of them, naming the setting to raise; no rescan per directory.
        #expect(recorded.withLock { $0 }.map(\.reported) == [.unwatched([sessionID("c"), sessionID("d")]), .rescan(.started)])
        guard case .unwatched(_, let cause) = recorded.withLock({ $0.first }) else { return }
        #expect(cause?.reason == .watchLimitReached)
        #expect(cause?.description.contains("sysctl fs.inotify.max_user_watches=524288") == true)
    }

    private func readAndHandle(_ loop: WatchLoop, oneRecordPerRead: Bool) throws {
        let events = try loop.inotify.readEvents()
        if oneRecordPerRead {
            for event in events { loop.handle([event], at: .now) }
        } else {
            loop.handle(events, at: .now)
        }
    }

    private func decoded(_ events: [InotifyEvent]) -> [InotifyEvent] {
        Inotify.encode(events).withUnsafeBytes { Inotify.decode($0) }
    }
}

@Suite("ChangeDebouncer")
struct ChangeDebouncerTests {
    let start = ContinuousClock.now

    func at(_ milliseconds: Int) -> ContinuousClock.Instant { start + .milliseconds(milliseconds) }

    @Test func aSessionIsDueAfterTheQuietPeriodWithAllItsPaths() {
        var debouncer = ChangeDebouncer(quietPeriod: .milliseconds(250), maxDelay: .seconds(5))
        #expect(debouncer.nextDeadline == nil)
        debouncer.record(sessionID("a"), paths: ["x"], at: at(0))
        debouncer.record(sessionID("a"), paths: ["y"], at: at(200))
        debouncer.record(sessionID("b"), paths: [], at: at(100))
        #expect(debouncer.nextDeadline == at(350))
        #expect(debouncer.takeDue(at: at(349)).isEmpty)
        #expect(debouncer.takeDue(at: at(350)).map(\.session.rawValue) == ["b"])
        #expect(debouncer.nextDeadline == at(450))
        let due = debouncer.takeDue(at: at(450))
        #expect(due.map(\.session.rawValue) == ["a"])
        #expect(due.first?.paths == ["x", "y"])
        #expect(due.first?.since == at(0), "the lag starts at the session's first change")
        #expect(debouncer.nextDeadline == nil)
    }

    @Test func aSessionNeverQuietIsDueAtTheMaximumDelay() {
        var debouncer = ChangeDebouncer(quietPeriod: .milliseconds(250), maxDelay: .milliseconds(1000))
        for milliseconds in stride(from: 0, through: 950, by: 50) {
            debouncer.record(sessionID("busy"), paths: ["creds.json"], at: at(milliseconds))
            #expect(debouncer.takeDue(at: at(milliseconds)).isEmpty)
        }
        #expect(debouncer.nextDeadline == at(1000))
        #expect(debouncer.takeDue(at: at(1000)).map(\.session.rawValue) == ["busy"])
        // The next change starts a new maximum delay.
        debouncer.record(sessionID("busy"), paths: ["creds.json"], at: at(1010))
        #expect(debouncer.nextDeadline == at(1260))
    }

    @Test func unwatchedDirectoriesAreDueEveryIntervalFromTheFirstFailureUntilNoneIsLeft() {
        var unwatched = UnwatchedDirectories(interval: .seconds(5))
        #expect(unwatched.nextPoll == nil)
        unwatched.failed(WatchedDirectory(session: sessionID("b")), at: at(0))
        unwatched.failed(WatchedDirectory(session: sessionID("a"), subdirectory: "keys"), at: at(1000))
        #expect(unwatched.nextPoll == at(5000))
        #expect(unwatched.sessions == [sessionID("a"), sessionID("b")])
        #expect(unwatched.takeDue(at: at(4999)).isEmpty)
        #expect(unwatched.takeDue(at: at(6000)) == [WatchedDirectory(session: sessionID("a"), subdirectory: "keys"), WatchedDirectory(session: sessionID("b"))])
        // From when the comparison ran, so a late one never makes the next ones pile up.
        #expect(unwatched.nextPoll == at(11000))
        unwatched.resolved(WatchedDirectory(session: sessionID("b")))
        unwatched.resolvedSession(sessionID("a"))
        #expect(unwatched.directories.isEmpty)
        #expect(unwatched.nextPoll == nil)
    }

    /// A Set<String> would keep one of two canonically equivalent names ("é" as one code point
    /// and as "e" + U+0301: two files on Linux) and lose the other's change; the session is
    /// reported with no paths instead, which has it scanned whole.
    @Test func canonicallyEquivalentPathsAskForAWholeScan() {
        var debouncer = ChangeDebouncer(quietPeriod: .milliseconds(250), maxDelay: .seconds(5))
        debouncer.record(sessionID("a"), paths: ["keys/\u{E9}.json", "creds.json"], at: at(0))
        debouncer.record(sessionID("a"), paths: ["keys/e\u{301}.json"], at: at(10))
        debouncer.record(sessionID("b"), paths: ["keys/\u{E9}.json", "keys/\u{E9}.json"], at: at(10))
        let due = debouncer.takeDue(at: at(300))
        #expect(due.map(\.session.rawValue) == ["a", "b"])
        #expect(due.map(\.paths) == [[], ["keys/\u{E9}.json"]])
        #expect(Set(["x"]).addingReportedPaths(["e\u{301}", "\u{E9}"]) == nil)
        #expect(Set(["x"]).addingReportedPaths(["x", "y"]) == ["x", "y"])
    }

    @Test func canonicallyEquivalentSessionsArePendingApart() throws {
        var debouncer = ChangeDebouncer(quietPeriod: .milliseconds(250), maxDelay: .seconds(5))
        let composed = try #require(SessionID("caf\u{E9}"))
        let decomposed = try #require(SessionID("cafe\u{301}"))
        debouncer.record(composed, paths: ["a.json"], at: at(0))
        debouncer.record(decomposed, paths: ["b.json"], at: at(10))
        let due = debouncer.takeDue(at: at(300))
        #expect(due.map(\.session) == [decomposed, composed], "by their bytes: \"e\" before \"\u{E9}\"")
        #expect(due.map(\.paths) == [["b.json"], ["a.json"]])
    }

    @Test func takeAllReturnsEveryPendingSession() {
        var debouncer = ChangeDebouncer(quietPeriod: .seconds(10), maxDelay: .seconds(10))
        debouncer.record(sessionID("b"), paths: ["1"], at: at(0))
        debouncer.record(sessionID("a"), paths: ["2"], at: at(5))
        #expect(debouncer.takeAll().map(\.session.rawValue) == ["a", "b"])
        #expect(debouncer.nextDeadline == nil)
    }
}

/// Collects a watcher's events as they come.
final class EventRecorder: Sendable {
    private let recorded = Mutex<[WatchEvent]>([])

    /// Records until the watcher stops and its stream finishes.
    init(_ watcher: SessionWatcher) {
        let stream = watcher.events
        Task { [self] in
            for await event in stream { recorded.withLock { $0.append(event) } }
        }
    }

    var events: [WatchEvent] { recorded.withLock { $0 } }

    /// Waits until `condition` holds for the events so far; records an issue after `timeout`. This
    /// task and the recording one share Swift's cooperative pool with every other test of the run,
    /// which can hold both of them up for many seconds on two loaded cores: the timeout only bounds
    /// a failing test, so it is long.
    func wait(
        timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation,
        _ condition: ([WatchEvent]) -> Bool
    ) async {
        let deadline = ContinuousClock.now + timeout
        while !condition(events) {
            guard ContinuousClock.now < deadline else {
                Issue.record("condition not met within \(timeout); events: \(events)", sourceLocation: sourceLocation)
                return
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

extension WatchEvent {
    /// What an event reports, without when the change was made: tests compare the former.
    enum Reported: Equatable {
        case changed(SessionID, Set<String>)
        case removed(SessionID)
        case rescan(RescanReason)
        case watchFailed
        case unwatched(Set<SessionID>)
        case caughtUp(UInt64)
    }

    var reported: Reported {
        switch self {
        case .changed(let session, let paths, _): .changed(session, paths)
        case .sessionRemoved(let session): .removed(session)
        case .rescanNeeded(let reason): .rescan(reason)
        case .watchFailed: .watchFailed
        case .unwatched(let sessions, _): .unwatched(sessions)
        case .caughtUp(let token): .caughtUp(token)
        }
    }
}

extension [WatchEvent] {
    func changes(of session: SessionID) -> [Set<String>] {
        compactMap { if case .changed(session, let paths, _) = $0 { paths } else { nil } }
    }

    func changedPaths(of session: SessionID) -> Set<String> {
        changes(of: session).reduce(into: []) { $0.formUnion($1) }
    }
}

/// The session of a directory name valid as one ("alice").
func sessionID(_ name: String) -> SessionID {
    SessionID(name)!
}

/// Creates `root/session` and writes `{}` to each file right after the mkdir.
func makeSession(_ root: TemporaryDirectory, _ session: String, files: [String]) throws {
    guard mkdir(root.file(session), 0o700) == 0 else { throw ProgramFailure("mkdir \(session)") }
    for name in files { try write("{}", to: root.file("\(session)/\(name)")) }
}

/// The renames of a restore (`DirectorySwap`, without its fsyncs, so that a test can run many and
/// act between them), each a step to run: a complete new directory for `session` (files "creds.json"
/// and "keys/app-state-sync-key-1.json") is swapped in, by RENAME_EXCHANGE or by two renames, then
/// the previous one is removed.
func restoreSteps(_ root: TemporaryDirectory, session: String, exchange: Bool) throws -> [() throws -> Void] {
    let parent = try FileDescriptor.openDirectory(root.path)
    let ready = ".\(session).sync-agent-ready-0123456789abcdef"
    let old = ".\(session).sync-agent-old-0123456789abcdef"
    try makeSession(root, ready, files: ["creds.json"])
    try makeSession(root, ready + "/keys", files: ["app-state-sync-key-1.json"])
    if exchange {
        return [
            {
                let exchanged = try parent.exchange(ready, session)
                #expect(exchanged, "RENAME_EXCHANGE is refused here")
            },
            { try parent.removeTree(at: ready) },
        ]
    }
    return [
        { try parent.rename(session, to: old) },
        { try parent.rename(ready, to: session) },
        { try parent.removeTree(at: old) },
    ]
}

/// Rewrites a file in place (never creating it) every `interval` from a thread of its own, until
/// stopped: on Swift's cooperative pool, which the other tests of a run load, the writes could stall
/// for seconds.
final class BackgroundWriter: Sendable {
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init(path: String, interval: Duration) {
        let thread = Thread { [self] in
            var index = 0
            while !stopping.load(ordering: .relaxed) {
                // Fails between the two renames of a swap without RENAME_EXCHANGE (the directory is missing).
                let descriptor = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
                if descriptor >= 0 {
                    let text = Array("{\"n\":\(index)}".utf8)
                    _ = Glibc.write(descriptor, text, text.count)
                    close(descriptor)
                }
                index += 1
                Thread.sleep(forTimeInterval: Double(interval.components.attoseconds) / 1e18 + Double(interval.components.seconds))
            }
            finished.signal()
        }
        thread.name = "test writer"
        thread.start()
    }

    /// Returns once the thread wrote for the last time.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        finished.wait()
    }
}
