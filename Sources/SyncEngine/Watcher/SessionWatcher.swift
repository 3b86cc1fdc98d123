import Dispatch
import FoundationEssentials
import Glibc
import Synchronization
import SystemSupport

/// What the watcher tells the engine. Sessions are `SessionID`s, equal by their bytes: two
/// directories whose names are canonically equivalent ("é" as one code point and as "e" + U+0301)
/// are two sessions, which `String` keys merged.
public enum WatchEvent: Sendable, Equatable {
    /// Files of the session changed: `paths` (relative to the session directory, "name" or
    /// "a/b/name" at any depth) were closed after writing, moved in or out, deleted, or had their
    /// mode changed. They are hints: a path may name a file or subdirectory that is gone again;
    /// the consumer reads the current state of each (or scans the session). Empty when only the
    /// directory itself changed (it was replaced, or created empty), or when two reported names
    /// were canonically equivalent (`addingReportedPaths`): the consumer scans the session.
    /// `since`: the first of these changes, where the replication lag starts.
    case changed(session: SessionID, paths: Set<String>, since: ContinuousClock.Instant)
    /// The session directory no longer exists (after the quiet period, so a directory replaced by
    /// a restore is reported as changed, not removed).
    case sessionRemoved(session: SessionID)
    /// Events may have been lost: compare every session directory, and every session in the store,
    /// with the last manifest. Pending changes are folded into it. The stream starts with
    /// `.rescanNeeded(.started)` once every watch is in place, so the start-up comparison misses
    /// nothing that happened before and events cover everything after.
    case rescanNeeded(RescanReason)
    /// A directory could not be watched for another reason than the watch limit. Its session is
    /// still reported when its directory changes, not when its files do; the next rescan tries again.
    case watchFailed(WatcherError)
    /// The sessions with a directory the watch limit left without a watch changed (empty: every
    /// directory is watched again). Each is reported changed, as a whole (no paths), every `rescanInterval`
    /// and at `stop()`, and its watches are tried again then. `cause` names the limit to raise.
    case unwatched(sessions: Set<SessionID>, cause: WatcherError?)
    /// Answers `reportPending(of:then:)`: every change made before that call is reported by now.
    case caughtUp(token: UInt64)
}

public enum RescanReason: Sendable, Equatable {
    case started
    /// The kernel's event queue overflowed (IN_Q_OVERFLOW).
    case queueOverflow
    /// The kernel dropped a watch the watcher did not remove (the file system was unmounted, or
    /// the sessions root itself was moved or deleted).
    case watchLost(path: String)
}

/// Watches a sessions root and every session directory in it with inotify, and reports changes
/// coalesced per session (see `ChangeDebouncer`).
///
/// Runs from `init` until `stop()` on a thread of its own, blocked in poll(2) on the inotify
/// descriptor and a wake-up socket, with a timeout only while a session is pending: no polling,
/// and Swift's cooperative pool never blocks.
public final class SessionWatcher: Sendable {
    public struct Configuration: Sendable {
        /// A session is reported once no event has come for this long...
        public var quietPeriod: Duration
        /// ...or this long after its first unreported event, whichever is first: what bounds a
        /// change's wait before its snapshot starts (then `WritePause`). The two are equal by
        /// default, so every change is gathered with those of the next 250 ms: a few of
        /// Baileys' writes a second per session then share a snapshot, and the replication lag
        /// stays under 0.4 s (a `maxDelay` of 5 s let a session written every few hundred
        /// milliseconds wait for seconds).
        public var maxDelay: Duration
        /// What inotify cannot report is looked at this often: the sessions past the watch
        /// limit are compared whole, the root surveyed for refused sessions that became
        /// acceptable.
        public var rescanInterval: Duration
        /// Tests only: a watch limit of the watcher's own (see `Inotify.init(watchLimit:)`).
        var watchLimit: Int?

        public init(
            quietPeriod: Duration = .milliseconds(250), maxDelay: Duration = .milliseconds(250), rescanInterval: Duration = .seconds(5)
        ) {
            self.quietPeriod = quietPeriod
            self.maxDelay = maxDelay
            self.rescanInterval = rescanInterval
        }
    }

    public let root: String
    public let events: AsyncStream<WatchEvent>
    /// The wake-up socket's sending end; nil once stopped.
    private let wakeUp: Mutex<FileDescriptor?>
    private let requests = WatchRequests()
    private let finished = DispatchSemaphore(value: 0)
    private let loop: LoopOwner

    /// Watches `root` and the sessions in it, then starts reporting. Throws when the root cannot be
    /// watched (missing, not a directory, unreadable, or the inotify limits reached).
    public init(root: String, configuration: Configuration = Configuration()) throws(WatcherError) {
        self.root = root
        let (events, continuation) = AsyncStream.makeStream(of: WatchEvent.self)
        self.events = events
        let (receiving, sending) = try FileDescriptor.wakeUpSocketPair()
        let loop = try WatchLoop(
            root: root, configuration: configuration, wakeUp: receiving, requests: requests,
            emit: { continuation.yield($0) }, finish: { continuation.finish() })
        self.loop = LoopOwner(loop)
        wakeUp = Mutex(sending)
        let owner = self.loop
        let finished = self.finished
        // A thread to itself: the loop blocks in poll(2), never on Swift's task pool.
        do {
            try startLoopThread(named: "sync-agent-watch") {
                owner.loop?.run()
                // Closes the inotify descriptor and the wake-up socket's receiving end.
                owner.loop = nil
                finished.signal()
            }
        } catch {
            throw WatcherError(.system(operation: "pthread_create", errno: error.errno), path: root)
        }
    }

    deinit {
        stop()
    }

    /// Reports every pending change at once, finishes `events`, and returns once the thread has
    /// ended and closed its descriptors. Idempotent.
    public func stop() {
        guard let sending = wakeUp.withLock({ $0.take() }) else { return }
        requests.state.withLock { $0.stopping = true }
        sending.writeByte()
        finished.wait()
    }

    /// Reports `session`'s pending changes now, quiet period or not, then `.caughtUp(token)`.
    /// The watcher first reads every event queued, and inotify queues an event before the
    /// write(2) or rename(2) behind it returns: every change made before this call is reported
    /// before that answer. False once stopped: no answer comes (the stream ends instead).
    public func reportPending(of session: SessionID, then token: UInt64) -> Bool {
        wakeUp.withLock { sending in
            guard let sending else { return false }
            requests.state.withLock { $0.reportsDue.append((session, token)) }
            sending.writeByte()
            return true
        }
    }

    /// Whether the thread has ended and released the loop, for tests.
    var isLoopReleased: Bool { loop.loop == nil }
}

/// What callers ask of the watcher thread, which reads it when the wake-up socket says so.
final class WatchRequests: Sendable {
    struct State {
        var stopping = false
        var reportsDue: [(session: SessionID, token: UInt64)] = []
    }
    let state = Mutex(State())
}

/// Hands the loop to its thread. Only that thread touches the loop once it started, and `stop()`
/// reads `loop` only after the thread signalled its end.
private final class LoopOwner: @unchecked Sendable {
    var loop: WatchLoop?
    init(_ loop: WatchLoop) { self.loop = loop }
}

extension FileDescriptor {
    static func wakeUpSocketPair() throws(WatcherError) -> (FileDescriptor, FileDescriptor) {
        do {
            return try FileDescriptor.socketPair(type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), path: "wake-up socket")
        } catch {
            throw WatcherError(.system(operation: error.operation, errno: error.errno), path: "wake-up socket")
        }
    }

    func writeByte() {
        var byte: UInt8 = 1
        _ = write(raw, &byte, 1)
    }

    /// Reads every byte waiting (the socket never blocks).
    func drain() {
        var bytes = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &bytes, { read(raw, $0.baseAddress, $0.count) }) > 0 {}
    }
}

/// A directory under watch: a session directory, or a subdirectory of it at any depth.
struct WatchedDirectory: Hashable {
    var session: SessionID
    /// The path below the session directory ("a/b"); nil for the session directory itself.
    var subdirectory: String?

    /// The directory `name` inside this one.
    func child(_ name: String) -> WatchedDirectory {
        WatchedDirectory(session: session, subdirectory: path(of: name))
    }

    /// The path of the entry `name` inside this directory, relative to the session directory.
    func path(of name: String) -> String {
        subdirectory.map { $0 + "/" + name } ?? name
    }

    /// Whether this is `other` or lies below it.
    func isWithin(_ other: WatchedDirectory) -> Bool {
        guard session == other.session else { return false }
        guard let top = other.subdirectory else { return true }
        guard let subdirectory else { return false }
        return subdirectory.utf8.elementsEqual(top.utf8) || subdirectory.utf8.starts(with: (top + "/").utf8)
    }

    /// Bytewise (as `SessionID` is): String's == takes canonically equivalent names ("é" and
    /// "e\u{301}", two directories on Linux) for one.
    static func == (first: WatchedDirectory, second: WatchedDirectory) -> Bool {
        guard first.session == second.session else { return false }
        switch (first.subdirectory, second.subdirectory) {
        case (nil, nil): return true
        case (let one?, let other?): return one.utf8.elementsEqual(other.utf8)
        default: return false
        }
    }
}

/// The watcher's state and event handling, confined to the watcher thread (tests drive it directly).
final class WatchLoop {
    /// `.attributes`: a session directory the agent could not watch (its mode) is tried again when
    /// its mode or owner changes; nothing else would watch it before a restart.
    static let rootMask: InotifyMask = [
        .create, .delete, .movedFrom, .movedTo, .attributes, .deleteSelf, .moveSelf, .onlyDirectory,
    ]
    static let sessionMask: InotifyMask = [
        .closeWrite, .movedTo, .movedFrom, .delete, .create, .attributes, .deleteSelf, .moveSelf, .modify,
        .onlyDirectory, .dontFollow, .excludeUnlinked,
    ]

    let root: String
    let inotify: Inotify
    private let wakeUp: FileDescriptor?
    private let requests: WatchRequests
    private var debouncer: ChangeDebouncer
    /// Directories the watch limit left unwatched, compared every `rescanInterval` instead.
    private var unwatched: UnwatchedDirectories
    /// The `unwatched.version` last reported.
    private var reportedUnwatched = 0
    private var watchLimitError: WatcherError?
    private let emit: (WatchEvent) -> Void
    private let finish: () -> Void
    private var rootWatch: Int32 = -1
    private var directoryByWatch: [Int32: WatchedDirectory] = [:]
    private(set) var watchByDirectory: [WatchedDirectory: Int32] = [:]
    /// Session directories seen and not yet found gone: only those can be reported removed.
    private var knownSessions: Set<SessionID> = []

    init(
        root: String, configuration: SessionWatcher.Configuration, wakeUp: FileDescriptor?, requests: WatchRequests = WatchRequests(),
        emit: @escaping (WatchEvent) -> Void, finish: @escaping () -> Void = {}
    ) throws(WatcherError) {
        self.root = root
        inotify = try Inotify(watchLimit: configuration.watchLimit)
        self.wakeUp = wakeUp
        self.requests = requests
        debouncer = ChangeDebouncer(quietPeriod: configuration.quietPeriod, maxDelay: configuration.maxDelay)
        unwatched = UnwatchedDirectories(interval: configuration.rescanInterval)
        self.emit = emit
        self.finish = finish
        rootWatch = try inotify.addWatch(root, mask: Self.rootMask)
        for session in try SessionFiles.sessionIDs(inRoot: root) {
            reconcile(WatchedDirectory(session: session), at: .now)
        }
        debouncer.discardAll()
        // Set from the start, so a dashboard sees 0 rather than no series.
        EngineMetrics.unwatchedDirectories(0)
        reportUnwatched()
        emit(.rescanNeeded(.started))
    }

    func run() {
        guard let wakeUp else { return }
        var descriptors = [
            pollfd(fd: inotify.descriptor.raw, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wakeUp.raw, events: Int16(POLLIN), revents: 0),
        ]
        running: while true {
            descriptors[0].revents = 0
            descriptors[1].revents = 0
            let ready = poll(&descriptors, 2, pollTimeout(at: .now))
            if ready < 0 && errno != EINTR {
                emit(.watchFailed(.lastSystemError("poll", path: root)))
                break
            }
            var reportsDue: [(session: SessionID, token: UInt64)] = []
            var stopping = false
            if ready > 0 && descriptors[1].revents != 0 {
                wakeUp.drain()
                (stopping, reportsDue) = requests.state.withLock { state in
                    defer { state.reportsDue = [] }
                    return (state.stopping, state.reportsDue)
                }
            }
            if ready > 0 && descriptors[0].revents != 0 || !reportsDue.isEmpty || stopping {
                do {
                    // Asked to catch up or to stop: everything queued until now. Otherwise one read,
                    // so that a flood of events cannot keep the loop from its other work.
                    let catchingUp = !reportsDue.isEmpty || stopping
                    handle(try catchingUp ? inotify.readQueued() : inotify.readEvents(), at: .now)
                } catch {
                    emit(.watchFailed(error))
                    break running
                }
            }
            if stopping { break }
            for (session, token) in reportsDue {
                report(debouncer.take(session).map { [$0] } ?? [])
                emit(.caughtUp(token: token))
            }
            report(debouncer.takeDue(at: .now))
            compare(unwatched.takeDue(at: .now), at: .now)
        }
        // What changed in unwatched directories since their last comparison is flushed too.
        compare(unwatched.sorted, at: .now)
        report(debouncer.takeAll())
        finish()
    }

    /// Tries the watches of unwatched directories again, and reports each session still without
    /// one as changed as a whole, which its comparison with the last manifest sorts out.
    private func compare(_ directories: [WatchedDirectory], at now: ContinuousClock.Instant) {
        guard !directories.isEmpty else { return }
        for directory in directories {
            // Reconciled (listed, its files reported) only once watched, or gone: listing a directory
            // still unwatched at each comparison would have every file read again, not compared.
            if !watch(directory) || !unwatched.directories.contains(directory) { reconcile(directory, at: now) }
        }
        reportUnwatched()
        for session in unwatched.sessions.sorted() where SessionFiles.isDirectory(path(of: WatchedDirectory(session: session))) {
            emit(.changed(session: session, paths: [], since: now))
        }
    }

    /// Tells the consumer when the unwatched directories changed.
    private func reportUnwatched() {
        guard unwatched.version != reportedUnwatched else { return }
        reportedUnwatched = unwatched.version
        EngineMetrics.unwatchedDirectories(unwatched.directories.count)
        let sessions = unwatched.sessions
        emit(.unwatched(sessions: sessions, cause: sessions.isEmpty ? nil : watchLimitError))
    }

    /// Milliseconds until the next session is due, rounded up; -1 (wait for ever) when none is pending.
    private func pollTimeout(at now: ContinuousClock.Instant) -> Int32 {
        guard let deadline = [debouncer.nextDeadline, unwatched.nextPoll].compactMap({ $0 }).min() else { return -1 }
        let (seconds, attoseconds) = max(deadline - now, .zero).components
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: milliseconds)
    }

    func handle(_ events: [InotifyEvent], at now: ContinuousClock.Instant) {
        var rescan: RescanReason?
        for event in events {
            if event.mask.contains(.queueOverflow) {
                rescan = .queueOverflow
            } else if event.watch == rootWatch {
                if !event.mask.isDisjoint(with: [.deleteSelf, .moveSelf, .unmount, .ignored]) {
                    rescan = .watchLost(path: root)
                } else if let session = event.name.flatMap({ SessionID($0) }),
                    !event.mask.contains(.attributes) || watchByDirectory[WatchedDirectory(session: session)] == nil
                {
                    // An attribute change matters only to a session without a watch: reconciling a
                    // watched one would read all its files again for nothing.
                    reconcile(WatchedDirectory(session: session), at: now)
                }
            } else if let directory = directoryByWatch[event.watch] {
                if event.mask.contains(.ignored) {
                    unmap(event.watch)
                    rescan = .watchLost(path: path(of: directory))
                } else {
                    handle(event, in: directory, at: now)
                }
            }
            // Anything else belongs to a watch already dropped (its IN_IGNORED included): the
            // directory was reconciled then, from what was at its name.
        }
        if let rescan { resynchronize(rescan) }
        reportUnwatched()
    }

    private func handle(_ event: InotifyEvent, in directory: WatchedDirectory, at now: ContinuousClock.Instant) {
        if !event.mask.isDisjoint(with: [.deleteSelf, .moveSelf, .unmount]) {
            reconcile(directory, at: now)
            return
        }
        guard let name = event.name, !SessionFiles.isIgnoredName(name) else { return }
        if event.mask.contains(.isDirectory) {
            // A subdirectory, at any depth, came or went.
            reconcile(directory.child(name), at: now)
            return
        }
        // IN_CREATE alone is a file being written: it is reported when closed. A SQLite database's
        // writer keeps it open: a write to its WAL or journal is a commit (IN_MODIFY), and
        // reports the database.
        if event.mask.isDisjoint(with: [.closeWrite, .movedTo, .movedFrom, .delete, .attributes]) {
            guard event.mask.contains(.modify),
                let database = SQLiteDatabase.changedDatabase(name, in: path(of: directory))
            else { return }
            debouncer.record(directory.session, paths: [directory.path(of: database)], at: now)
            return
        }
        debouncer.record(directory.session, paths: [directory.path(of: name)], at: now)
    }

    /// Brings the watches for `directory` in line with what is on disk now: watched (and scanned,
    /// with its subdirectories at any depth, so files and directories created before their watch
    /// existed are reported) if it is a directory, unwatched with everything below it if not.
    /// Records the session as changed either way.
    private func reconcile(_ directory: WatchedDirectory, at now: ContinuousClock.Instant) {
        var present: Set<NameKey> = []
        if watchTree(directory, present: &present, at: now) {
            // Watches below it of directories that are gone (a missed or pending event). One pass
            // over the watches per reconciled tree, not per directory in it: a start-up reconciles
            // every session.
            for stale in watchByDirectory.keys where stale.isWithin(directory) && stale != directory {
                if !present.contains(NameKey(stale.subdirectory!)) { unwatch(stale) }
            }
        } else if let subdirectory = directory.subdirectory {
            unwatchTree(directory)
            debouncer.record(directory.session, paths: [subdirectory], at: now)
        } else {
            // A name in the root that never was a session directory (a plain file) is nothing to report.
            unwatched.resolvedSession(directory.session)
            guard knownSessions.remove(directory.session) != nil else { return }
            unwatchTree(directory)
            debouncer.record(directory.session, paths: [], at: now)
        }
    }

    /// Watches `directory` and every directory below it, and records their files as changed
    /// (listed after each watch is in place, so that nothing falls between the two); the paths
    /// of the subdirectories found go into `present`. False when `directory` is not a directory
    /// (any more).
    private func watchTree(_ directory: WatchedDirectory, present: inout Set<NameKey>, at now: ContinuousClock.Instant) -> Bool {
        guard watch(directory) else { return false }
        if directory.subdirectory == nil { knownSessions.insert(directory.session) }
        var paths: [String] = []
        for entry in (try? SessionFiles.entries(of: path(of: directory))) ?? [] where !SessionFiles.isIgnoredName(entry.name) {
            switch entry.kind {
            case .file:
                paths.append(directory.path(of: entry.name))
            case .directory:
                let child = directory.child(entry.name)
                if watchTree(child, present: &present, at: now) { present.insert(NameKey(child.subdirectory!)) }
            case .other:
                continue
            }
        }
        debouncer.record(directory.session, paths: paths, at: now)
        return true
    }

    /// Watches `directory` if it is one; false when it is not (any more).
    private func watch(_ directory: WatchedDirectory) -> Bool {
        let path = path(of: directory)
        guard SessionFiles.isDirectory(path) else { return false }
        let watch: Int32
        do {
            watch = try inotify.addWatch(path, mask: Self.sessionMask)
        } catch {
            if case .system(_, let code) = error.reason, code == ENOENT || code == ENOTDIR { return false }
            if error.reason == .watchLimitReached {
                // Compared every rescanInterval instead; one line says so (the consumer's), not one per directory.
                watchLimitError = watchLimitError ?? error
                unwatched.failed(directory, at: .now)
            } else if let subdirectory = directory.subdirectory, case .system(_, let code) = error.reason,
                code == EACCES || code == EPERM
            {
                // A subdirectory the agent may not read is part of its session, which names it as
                // not backed up when it compares it; its parent's attribute event brings it back.
                debouncer.record(directory.session, paths: [subdirectory], at: .now)
            } else {
                emit(.watchFailed(error))
            }
            return true
        }
        unwatched.resolved(directory)
        if let previous = watchByDirectory[directory], previous != watch { unwatch(directory) }
        // The same inode under a new name (a rename we have not handled yet): it now belongs here.
        if let other = directoryByWatch[watch], other != directory { watchByDirectory[other] = nil }
        directoryByWatch[watch] = directory
        watchByDirectory[directory] = watch
        EngineMetrics.watchedDirectories(directoryByWatch.count)
        return true
    }

    /// Unwatches `directory` and every watched directory below it.
    private func unwatchTree(_ directory: WatchedDirectory) {
        for watched in watchByDirectory.keys where watched.isWithin(directory) { unwatch(watched) }
    }

    private func unwatch(_ directory: WatchedDirectory) {
        unwatched.resolved(directory)
        guard let watch = watchByDirectory[directory] else { return }
        inotify.removeWatch(watch)
        unmap(watch)
    }

    private func unmap(_ watch: Int32) {
        if let directory = directoryByWatch.removeValue(forKey: watch), watchByDirectory[directory] == watch {
            watchByDirectory[directory] = nil
        }
        EngineMetrics.watchedDirectories(directoryByWatch.count)
    }

    /// After lost events: re-establishes the root watch and one watch per session directory, drops
    /// the watches of directories that are gone, and asks the consumer to compare everything.
    private func resynchronize(_ reason: RescanReason) {
        do {
            rootWatch = try inotify.addWatch(root, mask: Self.rootMask)
            let sessions = Set(try SessionFiles.sessionIDs(inRoot: root))
            for directory in watchByDirectory.keys where !sessions.contains(directory.session) { unwatch(directory) }
            knownSessions.formIntersection(sessions)
            for session in sessions.sorted() { reconcile(WatchedDirectory(session: session), at: .now) }
        } catch {
            emit(.watchFailed(error))
        }
        debouncer.discardAll()
        emit(.rescanNeeded(reason))
    }

    private func report(_ sessions: [ChangeDebouncer.Due]) {
        for (session, paths, since) in sessions {
            let exists = SessionFiles.isDirectory(path(of: WatchedDirectory(session: session)))
            emit(exists ? .changed(session: session, paths: paths, since: since) : .sessionRemoved(session: session))
        }
    }

    private func path(of directory: WatchedDirectory) -> String {
        root + "/" + directory.session.rawValue + (directory.subdirectory.map { "/" + $0 } ?? "")
    }
}

extension WatchedDirectory {
    init(session: SessionID) { self.init(session: session, subdirectory: nil) }
}
