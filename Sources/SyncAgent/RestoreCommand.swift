import ArgumentParser
import FoundationEssentials
import Glibc
import Logging
import SessionArchive
import SyncEngine
import SystemSupport

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Bring session directories back from their newest snapshots, atomically.",
        discussion: """
            Run before the worker recovers its sessions. A directory is only ever replaced by a
            complete, verified snapshot; when the store cannot answer, it is left as it is.
            By default each session is acquired for this agent (--agent-id) before its directory
            is touched: taken at once when it is unclaimed, released, already this agent's or its
            holder's lease expired; a live holder is waited for (--wait-release), then the
            session fails with held_elsewhere (directory untouched) or, with --take-over, the
            holder is fenced. --no-acquire restores without claiming (a copy for inspection);
            --dry-run never acquires.
            Bad input (a malformed --sessions-from list, a snapshot or time a session does not
            have) stops the command before any directory is touched.
            Exit codes: 0 every session restored or up to date, 3 some failed, 4 all failed,
            1 a configuration error, 64 bad usage or input.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var agent: AgentOptions
    @OptionGroup var lease: LeaseOptions
    @Flag(help: "Restore every session the store has, except those that logged out.") var all = false
    @Option(help: ArgumentHelp(
        "Restore the sessions listed in FILE (- for standard input): one id per line, or a gateway's JSON, an array of objects with an \"id\" or {\"data\":{\"sessions\":[…]}}.",
        valueName: "file"))
    var sessionsFrom: String?
    @Flag(help: "Restore only sessions whose directory is absent or empty.") var ifMissing = false
    @Option(
        help: "Restore this snapshot (as `snapshots` prints it, e.g. 42.3) instead of the newest; one session only.",
        transform: SnapshotLabel.argument)
    var snapshot: SnapshotLabel?
    @Option(help: ArgumentHelp(
        "Restore each session as it was at TIME: its newest snapshot written then or before. ISO 8601 (2026-11-22T10:00:00Z, with an offset, or without a zone for UTC) or @UNIX-SECONDS.",
        valueName: "time"))
    var at: String?
    @Flag(help: "Say what would happen to each session: download and check its snapshots, write nothing.")
    var dryRun = false
    /// Each session restored at once holds a thread of its own while it unpacks (`runBlocking`),
    /// so this bounds the restore's threads.
    static let parallelRange = 1...64
    @Option(help: "Sessions restored at once, 1 to 64 (default 8).") var parallel = 8
    @Option(
        help: "How long to wait for a live holder to release a session or its lease to expire; 0 does not wait (default 30s).",
        transform: DurationSetting.nonNegative)
    var waitRelease: Duration = .seconds(30)
    @Flag(help: "After the wait, take sessions a live holder still has: it is fenced (its next commit fails).") var takeOver = false
    @Flag(help: "Restore without acquiring: no claim, the holder keeps writing (a copy for inspection, into another directory).")
    var noAcquire = false
    @Flag(help: "Print the report as JSON.") var json = false
    @Argument(help: "Session ids.", transform: SessionID.init(parsing:)) var sessions: [SessionID] = []

    func validate() throws {
        guard [all, sessionsFrom != nil, !sessions.isEmpty].filter({ $0 }).count == 1 else {
            throw ValidationError("name session ids, pass --all or pass --sessions-from (one of them)")
        }
        if noAcquire || dryRun {
            guard !takeOver else { throw ValidationError("--take-over acquires: not with --no-acquire or --dry-run") }
        }
        if snapshot != nil {
            guard sessions.count == 1 else { throw ValidationError("--snapshot restores one session: name exactly one") }
            guard at == nil else { throw ValidationError("--snapshot and --at both choose the snapshot: pass one of them") }
        }
        try rejectingUsageErrors {
            _ = try agent.identity(sessionsDirectory: storage.resolvedSessionsDir)
            _ = try lease.resolvedLeaseTTL
            if let at, Self.parseTime(at) == nil {
                throw UsageError(.notATime, "--at \(FileName.displayed(at)): expected a time from 1970 to 9999 in ISO 8601 (2026-11-22T10:00:00Z) or @UNIX-SECONDS")
            }
            guard Self.parallelRange.contains(parallel) else {
                throw UsageError(
                    .countOutOfRange,
                    "--parallel \(parallel): expected \(Self.parallelRange.lowerBound) to \(Self.parallelRange.upperBound) sessions at once")
            }
        }
    }

    /// RFC 3339 ("2026-11-22T10:00:00Z", an offset, fractional seconds), the same without a zone
    /// meaning UTC (a space for the "T" and no seconds allowed), or "@" and Unix seconds, from
    /// 1970 to the end of 9999. UTC, like prune's days and weeks: a restore must not depend on
    /// the machine's time zone.
    static func parseTime(_ text: String) -> Date? {
        // A snapshot's time is one of these: anything else (nan, inf, 1e308) is a typo, and
        // would overflow the arithmetic that compares it.
        // (Not a range of dates: NaN compares neither below nor above, so a range "contains" it.)
        let seconds = text.hasPrefix("@") ? Double(text.dropFirst()) : parseISO8601(text)?.timeIntervalSince1970
        guard let seconds, seconds.isFinite, (0...253_402_300_799).contains(seconds) else { return nil }
        return Date(timeIntervalSince1970: seconds)
    }

    /// `Date.ISO8601FormatStyle` after making the text RFC 3339: the style alone takes neither
    /// a time without seconds nor, in one style, both a "T" and a space; and a style without a
    /// time zone field parses "…+02:00" as UTC, ignoring the offset (FoundationEssentials, Swift 6.3).
    private static func parseISO8601(_ text: String) -> Date? {
        var characters = Array(text)
        guard characters.count >= 16 else { return nil }
        if characters[10] == " " { characters[10] = "T" }
        let time = characters[11...]
        let hasZone = time.last == "Z" || time.contains("+") || time.contains("-")
        if !hasZone {
            if characters.count == 16 { characters += ":00" }
            characters.append("Z")
        }
        let normalized = String(characters)
        for fractional in [false, true] {
            if let date = try? Date.ISO8601FormatStyle(includingFractionalSeconds: fractional).parse(normalized) { return date }
        }
        return nil
    }

    private var restorePoint: RestorePoint {
        if let snapshot { return .snapshot(snapshot) }
        if let time = at.flatMap(Self.parseTime) { return .time(time) }
        return .newest
    }

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.restore")
        let started = ContinuousClock.now
        let requested = try requestedSessions()
        let restore: SessionsRestore
        let plan: SessionsRestore.Plan
        do {
            let acquires = !noAcquire && !dryRun
            // Acquiring writes heads and the lease: an existing store, written.
            let opened = try await OpenedStorage.open(storage, logger: logger, access: acquires ? .write : .read)
            var acquiring: RestoreRequest.Acquiring?
            if acquires {
                let identity = try agent.identity(sessionsDirectory: storage.resolvedSessionsDir)
                acquiring = RestoreRequest.Acquiring(
                    lease: LeaseHolder(agent: identity, ttl: try lease.resolvedLeaseTTL, leases: LeaseStore(opened.primary)),
                    options: AcquireOptions(waitRelease: waitRelease, takeOver: takeOver),
                    conditionalWrites: try await opened.primary.store.probeConditionalWrites())
            }
            restore = SessionsRestore(
                sources: opened.sources, root: storage.resolvedSessionsDir,
                request: RestoreRequest(
                    sessions: requested.map { .named($0) } ?? .all, point: restorePoint, onlyIfMissing: ifMissing,
                    dryRun: dryRun, parallel: parallel, format: try storage.resolvedSessionFormat, acquiring: acquiring))
            plan = try await restore.plan()
        } catch StoreError.unavailable(let reason) {
            // The worker still gets a report to post, naming every session it asked for.
            logger.error("the store cannot be reached; nothing restored", metadata: ["error": "\(reason)"])
            var report = RestoreReport()
            for id in requested ?? [] { report.record(id, failure: StoreError.unavailable(reason)) }
            try finish(report, started: started)
            throw ExitCode(4)  // --all: not even the list of sessions could be had
        } catch let error as RestoreRequestError {
            for other in error.points.dropFirst() { writeStandardError("Error: \(other)\n") }
            throw rejectInput(error.points[0].description)
        }

        let progress = ProgressLine(dryRun ? "checking" : "restoring", total: plan.sessions.count)
        let result = try await restore.run(plan) { finished in
            let failed: Bool
            switch finished.outcome {
            case .success(let outcome):
                failed = false
                logger.log(level: progress.isShown ? .debug : .info, "restore", metadata: [
                    "session": "\(finished.session)", "status": "\(outcome.status.rawValue)",
                    "snapshot": "\(outcome.snapshot.map(String.init(describing:)) ?? "-")",
                    "files": "\(outcome.files)", "bytes": "\(outcome.bytes)", "duration": "\(finished.duration)",
                    "acquired": "\(outcome.acquired?.rawValue ?? "-")",
                ])
            case .failure(let error):
                failed = true
                logger.log(level: progress.isShown ? .debug : .error, "restore failed", metadata: ["session": "\(finished.session)", "error": "\(error)"])
            }
            await progress.finished(failed: failed)
        }
        await progress.end()
        for outcome in result.leftOut {
            logger.info(
                outcome.status == .loggedOut ? "not restoring a session that logged out" : "not restoring a session with no snapshot yet",
                metadata: ["session": "\(outcome.session)"])
        }
        try finish(result.report, started: started)
    }

    /// The ids asked for, or nil for --all (the store says which). A malformed list stops the
    /// command here, before the store is even opened.
    /// Far above a worker's sessions (a million ids of 16 bytes), far below a memory limit.
    static let sessionListLimit = 32 << 20

    private func requestedSessions() throws -> [SessionID]? {
        if all { return nil }
        guard let sessionsFrom else { return sessions }
        let source = sessionsFrom == "-" ? "standard input" : sessionsFrom
        // Standard input through a copy of its descriptor, so one owner closes whichever it is.
        let descriptor = sessionsFrom == "-" ? fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 0) : open(sessionsFrom, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw rejectInput("--sessions-from: cannot read \(FileName.displayed(sessionsFrom)): \(String(cString: strerror(errno)))")
        }
        let file = FileDescriptor(owning: descriptor, path: source)
        let read: [UInt8]?
        do {
            read = try readAll(FileDescriptorSource(file), limit: Self.sessionListLimit)
        } catch let error as SystemError {
            throw rejectInput("--sessions-from: cannot read \(FileName.displayed(source)): \(String(cString: strerror(error.errno)))")
        }
        guard let bytes = read else {
            throw rejectInput("--sessions-from \(FileName.displayed(source)): longer than \(Self.sessionListLimit >> 20) MiB")
        }
        do {
            return try SessionList.parse(bytes)
        } catch {
            throw rejectInput("--sessions-from \(source): \(error)")
        }
    }

    private func finish(_ report: RestoreReport, started: ContinuousClock.Instant) throws {
        if json {
            try printJSON(report)
        } else {
            let rows = report.recoveredSessions.map { entry in
                [entry.sessionId, entry.status, entry.snapshot ?? "-", "\(entry.files)", byteCount(entry.bytes), ""]
            } + report.failedSessions.map { entry in
                [entry.sessionId, "failed (\(entry.reason))", "-", "-", "-", entry.error]
            }
            printTable(["SESSION", "STATUS", "SNAPSHOT", "FILES", "BYTES", "ERROR"], rows)
            let counts = Dictionary(grouping: report.recoveredSessions, by: \.status).mapValues(\.count)
                .sorted { $0.key < $1.key }.map { "\($0.value) \($0.key.replacing("_", with: " "))" }
            print((counts + ["\(report.failedSessions.count) failed"]).joined(separator: ", ") + " in \(seconds(since: started))")
        }
        if !report.failedSessions.isEmpty {
            throw ExitCode(report.recoveredSessions.isEmpty ? 4 : 3)
        }
    }
}
