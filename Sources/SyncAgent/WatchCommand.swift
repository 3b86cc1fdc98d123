import ArgumentParser
import FoundationEssentials
import Glibc
import Logging
import Prometheus
import S3Client
import ServiceLifecycle
import SyncEngine

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Run beside a worker: snapshot every change of every session as it settles.",
        discussion: """
            Durations take a unit (250ms, 5s, 1m); a bare number is milliseconds, as in the
            environment variables. On SIGTERM or SIGINT the agent stops taking events, flushes
            every pending change within --shutdown-timeout, releases every session it flushed
            (the next acquire need not wait for its lease), and exits 0 when all were flushed,
            otherwise 1 naming the sessions left; also 1 when sessions were refused (symbolic
            links, names that cannot be session ids, unreadable directories) or files left out
            (over 64 MiB, unreadable), naming them.

            The endpoint (--listen) serves /healthz, /readyz (200 once the start-up comparison is
            done and the store answers, naming what is not backed up; 503 with the reason
            otherwise), /metrics (Prometheus) and /sessions (JSON, one entry per session, refused
            ones included). It binds before anything else happens:
            a bad address or a port in use stops the agent at once.

            The worker's control routes (POST /sessions/ID/flush, /release, /acquire, /logout,
            POST /sessions/release) answer on --control-socket, whose file permissions decide who
            may call them, and on --listen only with --control-token-file (Authorization: Bearer
            TOKEN); without a token they answer 403 there.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var agent: AgentOptions
    @OptionGroup var lease: LeaseOptions

    @Option(help: "A session's snapshot starts once no write has come for this long (default 250ms)...", transform: DurationSetting.nonNegative)
    var quietPeriod: Duration?
    @Option(
        help: "...or this long after its first change, whichever is first (env SESSION_BACKUP_INTERVAL; default 250ms).",
        transform: DurationSetting.positive)
    var maxDelay: Duration?
    @Option(
        help: "Then it waits until its session has had no write for this long, so as not to hold part of a writer's transaction; at most 5s (default 75ms).",
        transform: DurationSetting.nonNegative)
    var writePause: Duration?
    @Option(
        help: "How often what inotify cannot report is looked at: sessions past the watch limit, refused sessions (default 5s).",
        transform: DurationSetting.positive)
    var rescanInterval: Duration?
    @Option(help: "Time to flush pending changes on SIGTERM (env GRACEFUL_SHUTDOWN_TIMEOUT; default 10s).", transform: DurationSetting.nonNegative)
    var shutdownTimeout: Duration?
    @Option(help: "What to do with the snapshots of a session whose directory disappears.")
    var onDelete: DeletePolicy = .tombstone
    @Option(help: "Sessions uploading at once (default 8).")
    var concurrency = 8
    @Option(help: "HOST:PORT for /healthz, /readyz, /metrics and /sessions; port 0 picks a free one (env SYNC_AGENT_LISTEN; default 127.0.0.1:9797).")
    var listen: String?
    @Flag(help: "Serve no endpoint.")
    var noListen = false
    @Option(help: ArgumentHelp(
        "Also serve the endpoint on a Unix socket at PATH, the worker's control routes included (env SYNC_AGENT_CONTROL_SOCKET).",
        valueName: "path"))
    var controlSocket: String?
    @Option(help: "Who may connect to the control socket: owner (mode 0600) or group (0660, the agent's group) (default owner).")
    var controlSocketAccess: ControlSocket.Access = .owner
    @Option(help: ArgumentHelp(
        "Open the control routes on --listen to requests bearing the token in FILE (0600 or stricter, not a symlink; env SYNC_AGENT_CONTROL_TOKEN_FILE).",
        valueName: "file"))
    var controlTokenFile: String?
    @Option(help: "How often /readyz asks the store whether it answers (default 10s).", transform: DurationSetting.positive)
    var storeProbeInterval: Duration?
    @Option(help: ArgumentHelp(
        "Where each session's committed state is kept between runs, so a restart need not read every snapshot chain (env SYNC_AGENT_STATE_DIR; default .state in the local store in local and hybrid mode, otherwise $STATE_DIRECTORY/sync-agent or ~/.local/state/sync-agent/state).",
        valueName: "dir"))
    var stateDir: String?
    @OptionGroup(title: "Retention (also applied after each new base)") var retention: RetentionOptions
    @Option(
        help: "Also apply the retention policy to every session this often, e.g. 1h (env SYNC_AGENT_PRUNE_EVERY; default only after each new base).",
        transform: DurationSetting.positive)
    var pruneEvery: Duration?

    func validate() throws {
        guard concurrency > 0 else { throw ValidationError("--concurrency must be at least 1") }
        if noListen && listen != nil { throw ValidationError("--listen and --no-listen: pass one") }
        if noListen && controlTokenFile != nil {
            throw ValidationError("--control-token-file opens the control routes on --listen: not with --no-listen")
        }
        try rejectingUsageErrors {
            _ = try settings()
            _ = try agent.identity(sessionsDirectory: storage.resolvedSessionsDir)
            _ = try lease.resolvedLeaseTTL
        }
        _ = try listenAddress()
    }

    /// Where the endpoint listens; nil with --no-listen.
    func listenAddress() throws -> ListenAddress? {
        guard !noListen else { return nil }
        return try ListenAddress(parsing: listen ?? environment("SYNC_AGENT_LISTEN") ?? "127.0.0.1:9797")
    }

    /// The state cache's directory: never in the sessions directory, where it would be a session.
    func resolvedStateDirectory() throws -> String {
        let mode = try storage.resolvedMode
        let directory: String
        if let given = stateDir ?? environment("SYNC_AGENT_STATE_DIR") {
            directory = given
        } else if mode != .cloud {
            directory = storage.resolvedLocalStore + "/.state"
        } else if let systemd = environment("STATE_DIRECTORY")?.split(separator: ":").first {
            directory = "\(systemd)/sync-agent"
        } else {
            let home = FileManager.default.homeDirectoryForCurrentUser.path
            directory = "\(environment("XDG_STATE_HOME") ?? "\(home)/.local/state")/sync-agent/state"
        }
        let (absolute, sessions) = (Self.absolutePath(directory), Self.absolutePath(storage.resolvedSessionsDir))
        if absolute == sessions || absolute.hasPrefix(sessions == "/" ? "/" : sessions + "/") {
            throw UsageError(
                .insideSessionsDirectory,
                "the state directory \(absolute) (--state-dir, SYNC_AGENT_STATE_DIR) is inside the sessions directory \(sessions): give it a directory outside it")
        }
        return absolute
    }

    /// `path` from the root, its `.` and `..` components resolved by name.
    private static func absolutePath(_ path: String) -> String {
        var components: [Substring] = []
        let full = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        for component in full.split(separator: "/") where component != "." {
            if component == ".." { _ = components.popLast() } else { components.append(component) }
        }
        return "/" + components.joined(separator: "/")
    }

    func settings() throws -> (WatchSettings, shutdownTimeout: Duration) {
        var settings = WatchSettings()
        settings.onDelete = onDelete
        settings.concurrency = concurrency
        settings.sessionFormat = try storage.resolvedSessionFormat
        settings.watcher.quietPeriod = quietPeriod ?? .milliseconds(250)
        settings.watcher.maxDelay = try DurationSetting.resolve(maxDelay, variable: "SESSION_BACKUP_INTERVAL", allowsZero: false) ?? .milliseconds(250)
        if let rescanInterval { settings.watcher.rescanInterval = rescanInterval }
        if let writePause {
            // Past its 5 s of patience a snapshot is taken without a pause: a longer one would never be waited for.
            guard writePause < settings.writePause.patience else {
                throw UsageError(.durationTooLong, "--write-pause \(writePause): expected less than \(settings.writePause.patience)")
            }
            settings.writePause.length = writePause
        }
        if let storeProbeInterval { settings.storeProbeInterval = storeProbeInterval }
        settings.compaction.retention = try retention.compactionRetention()
        settings.stateDirectory = try resolvedStateDirectory()
        settings.pruneInterval = try DurationSetting.resolve(pruneEvery, variable: "SYNC_AGENT_PRUNE_EVERY", allowsZero: false)
        let timeout = try DurationSetting.resolve(shutdownTimeout, variable: "GRACEFUL_SHUTDOWN_TIMEOUT", allowsZero: true) ?? .seconds(10)
        return (settings, timeout)
    }

    func run() async throws {
        Allocator.preferReturningMemory()
        let logger = logging.makeLogger("sync-agent.watch")
        let (settings, shutdownTimeout) = try settings()
        let root = storage.resolvedSessionsDir
        guard FileManager.default.isReadableFile(atPath: root), (try? sessionDirectories(in: root)) != nil else {
            throw ConfigurationError(.unreadableSessionsDirectory, "cannot read the sessions directory \(root)")
        }
        // Before the stores: a port in use, a bad token file or a path that is not a socket must
        // stop the agent before it writes anything.
        let token = try (controlTokenFile ?? environment("SYNC_AGENT_CONTROL_TOKEN_FILE")).map(ControlToken.read(from:))
        var endpoints: [HTTPEndpoint] = []
        let opened: OpenedStorage
        let registry: PrometheusCollectorRegistry?
        do {
            if let address = try listenAddress() { endpoints.append(try await HTTPEndpoint.bind(address)) }
            if let path = controlSocket ?? environment("SYNC_AGENT_CONTROL_SOCKET") {
                endpoints.append(try await HTTPEndpoint.bind(ControlSocket(path: path, access: controlSocketAccess)))
            }
            registry = endpoints.isEmpty ? nil : bootstrapPrometheus()
            opened = try await OpenedStorage.open(storage, logger: logger, access: .create)
        } catch {
            for endpoint in endpoints { await endpoint.close() }
            throw error
        }
        let identity = try agent.identity(sessionsDirectory: root)
        let sync = SyncService(
            root: root, sessionStore: opened.primary, owner: identity.instance, mode: opened.configuration.mode,
            conditionalWrites: opened.conditionalWrites, settings: settings, mirror: opened.mirror,
            lease: LeaseHolder(agent: identity, ttl: try lease.resolvedLeaseTTL, leases: LeaseStore(opened.primary, conditionalWrites: opened.conditionalWrites)), logger: logger)
        logger.info("watching", metadata: [
            "sessions_dir": "\(root)", "agent": "\(identity.id)", "mode": "\(opened.configuration.mode.rawValue)",
            "store": "\(opened.primary.store.location)",
            "mirror": "\(opened.mirror.map { $0.remote.store.location } ?? "-")",
            "endpoint": "\(endpoints.first { $0.transport == .tcp }.map { "http://\($0.boundAddress)" } ?? "-")",
            "control_socket": "\(endpoints.first { $0.transport == .unixSocket }?.boundAddress ?? "-")",
        ])
        if token == nil, endpoints.contains(where: { $0.transport == .tcp }) {
            logger.info("control routes off on TCP: pass --control-token-file to open them there, or use --control-socket")
        }
        let sidecar = SidecarService(sync: sync, shutdownTimeout: shutdownTimeout)
        // Shut down in reverse order: the endpoint answers while the sidecar flushes.
        var services: [any Service] = []
        if let registry {
            let control = ControlRoutes(control: sync, token: token, logger: logger)
            let routes = AgentRoutes(sync: sync, registry: registry, control: control)
            services += endpoints.map { EndpointService(endpoint: $0, routes: routes) } as [any Service]
        }
        services.append(sidecar)
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
        guard let report = await sidecar.outcome.report else {
            logger.error("stopped before the engine said what it uploaded")
            throw ExitCode(1)
        }
        if !report.released.isEmpty {
            logger.info("released", metadata: ["sessions": "\(report.released.map(\.description))"])
        }
        guard report.isComplete else {
            if !report.unflushed.isEmpty {
                logger.error("stopped with changes not uploaded", metadata: ["sessions": "\(report.unflushed.map(\.description))"])
            }
            if !report.refused.isEmpty {
                logger.error("stopped with sessions not backed up", metadata: [
                    "sessions": "\(report.refused.map { "\($0.name) (\($0.refusal.rawValue))" })",
                ])
            }
            for (id, files) in report.skippedFiles.sorted(by: { $0.key < $1.key }) {
                logger.error("stopped with files not backed up", metadata: [
                    "session": "\(id)", "files": "\(files.map { "\($0.name) (\($0.reason))" })",
                ])
            }
            throw ExitCode(1)
        }
        logger.info("stopped; every change uploaded")
    }
}

/// Runs the sync engine under ServiceLifecycle: a graceful shutdown (SIGTERM, SIGINT)
/// cancels the watch, and the engine then flushes what is pending.
struct SidecarService: Service {
    actor Outcome {
        /// Nil until the engine stopped.
        var report: ShutdownReport?
        func set(_ report: ShutdownReport) { self.report = report }
    }

    let sync: SyncService
    let shutdownTimeout: Duration
    let outcome = Outcome()

    func run() async throws {
        try await cancelWhenGracefulShutdown { [sync, shutdownTimeout, outcome] in
            await outcome.set(try await sync.run(shutdownTimeout: shutdownTimeout))
        }
    }
}
