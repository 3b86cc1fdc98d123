import ArgumentParser
import Crypto
import FoundationEssentials
import Glibc
import Logging
import S3Client
import SessionArchive
import SyncEngine
import Synchronization

/// Reads an environment variable, treating an empty value as unset.
func environment(_ names: String...) -> String? {
    let values = ProcessInfo.processInfo.environment
    return names.lazy.compactMap { values[$0] }.first { !$0.isEmpty }
}

/// A setting the agent cannot start with. Printed as one line: unlike a `ValidationError`,
/// ArgumentParser adds no usage text, which would mislead when the value came from the
/// environment rather than a flag.
struct ConfigurationError: Error, CustomStringConvertible {
    enum Reason {
        case unknownMode
        case unknownSessionFormat
        case missingKey
        case emptyKey
        case missingLocalStore
        case missingBucket
        case unreadableSessionsDirectory
        case unknownLogSetting
        case badListenAddress
        case cannotListen
    }

    let reason: Reason
    let description: String

    init(_ reason: Reason, _ description: String) {
        self.reason = reason
        self.description = description
    }
}

/// Where sessions live and where their snapshots go: the options every command shares.
/// Each flag has an environment variable; the flag wins.
struct StorageOptions: ParsableArguments {
    @Option(help: "Directory with one subdirectory per session id (env SESSIONS_DIR; default ./sessions).")
    var sessionsDir: String?

    @Option(help: "local, cloud or hybrid (env SESSION_STORAGE_TYPE; default local).")
    var mode: String?

    @Option(help: "Local snapshot store directory (env SYNC_AGENT_LOCAL_STORE; default ~/.local/state/sync-agent/store).")
    var localStore: String?

    @Option(help: "S3 bucket (env STORAGE_BUCKET).")
    var bucket: String?

    @Option(help: "Key prefix inside the bucket (env SYNC_AGENT_PREFIX).")
    var prefix: String?

    @Option(help: "S3 endpoint URL (env AWS_ENDPOINT_URL or MINIO_ENDPOINT); default AWS.")
    var endpoint: String?

    @Option(help: "S3 region (env AWS_REGION; default us-east-1).")
    var region: String?

    @Option(help: "path or virtual-hosted (default path for custom endpoints, virtual-hosted for AWS).")
    var addressing: String?

    @Option(help: "CA bundle for the S3 endpoint's TLS certificate (env SYNC_AGENT_CA_BUNDLE).")
    var caBundle: String?

    @Option(help: "File with encryption keys, one per line, the first one writes (repeatable; env SESSION_ENCRYPTION_KEY holds keys inline).")
    var keyFile: [String] = []

    @Option(help: "baileys (creds.json: the identity guard, the auth-state check on restore, session health) or opaque (files as bytes only) (env SYNC_AGENT_SESSION_FORMAT; default baileys).")
    var sessionFormat: String?

    var resolvedSessionsDir: String { sessionsDir ?? environment("SESSIONS_DIR") ?? "./sessions" }

    var resolvedMode: StorageMode {
        get throws {
            let text = mode ?? environment("SESSION_STORAGE_TYPE") ?? "local"
            guard let mode = StorageMode(rawValue: text.lowercased()) else {
                throw ConfigurationError(.unknownMode, "unknown mode \"\(text)\": use local, cloud or hybrid")
            }
            return mode
        }
    }

    var resolvedSessionFormat: SessionFormat {
        get throws {
            let text = sessionFormat ?? environment(SessionFormat.environmentVariable) ?? SessionFormat.baileys.rawValue
            guard let format = SessionFormat(rawValue: text.lowercased()) else {
                throw ConfigurationError(.unknownSessionFormat, "unknown session format \"\(FileName.displayed(text))\": use baileys or opaque")
            }
            return format
        }
    }

    var resolvedLocalStore: String {
        localStore ?? environment("SYNC_AGENT_LOCAL_STORE")
            ?? "\(FileManager.default.homeDirectoryForCurrentUser.path)/.local/state/sync-agent/store"
    }

    func validate() throws {
        _ = try resolvedMode
        _ = try resolvedSessionFormat
        if let addressing, S3Configuration.Addressing(rawValue: addressing) == nil {
            throw ValidationError("unknown addressing \"\(addressing)\": use path or virtual-hosted")
        }
    }

    /// Resolves every option and the keys, failing with one clear line for a bad value.
    /// `access`: only commands that commit snapshots create a missing local store and its key.
    func storageConfiguration(access: StoreAccess) throws -> StorageConfiguration {
        let mode = try resolvedMode
        if let value = ProcessInfo.processInfo.environment[Keyring.environmentVariable], value.trimmingWhitespace().isEmpty {
            // A deployment whose secret did not arrive: falling back to the local store's own key
            // would encrypt with a key nobody else has.
            throw ConfigurationError(.emptyKey, "\(Keyring.environmentVariable) is set but empty: set it to a key (make one with `sync-agent keygen`) or unset it")
        }
        if mode == .local && access != .create {
            var status = stat()
            let found = stat(resolvedLocalStore, &status) == 0 ? (status.st_mode & S_IFMT == S_IFDIR ? 0 : ENOTDIR) : errno
            guard found == 0 else {
                throw ConfigurationError(.missingLocalStore, "no local store at \(resolvedLocalStore): \(String(cString: strerror(found))) (watch and backup create one)")
            }
        }
        let keyValue = environment(Keyring.environmentVariable)
        let keyring: Keyring
        if keyFile.isEmpty && keyValue == nil {
            guard mode == .local else {
                throw ConfigurationError(.missingKey, "\(mode.rawValue) mode needs an encryption key: set SESSION_ENCRYPTION_KEY or pass --key-file (make one with `sync-agent keygen`)")
            }
            keyring = try StorageConfiguration.localKeyring(store: resolvedLocalStore, access: access)
        } else {
            keyring = try Keyring.load(keyFiles: keyFile, environmentValue: keyValue)
        }
        var s3: S3Configuration?
        if mode != .local {
            guard let bucket = bucket ?? environment("STORAGE_BUCKET") else {
                throw ConfigurationError(.missingBucket, "\(mode.rawValue) mode needs a bucket: pass --bucket or set STORAGE_BUCKET")
            }
            var configuration = try S3Configuration.resolve(
                bucket: bucket, endpoint: endpoint, region: region,
                addressing: addressing.flatMap(S3Configuration.Addressing.init(rawValue:)),
                environment: ProcessInfo.processInfo.environment)
            configuration.tls.caBundlePath = caBundle ?? environment("SYNC_AGENT_CA_BUNDLE")
            s3 = configuration
        }
        return StorageConfiguration(
            mode: mode, localStore: resolvedLocalStore, s3: s3,
            prefix: prefix ?? environment("SYNC_AGENT_PREFIX") ?? "", keyring: keyring)
    }
}

/// How log lines look: `text` for people (swift-log's stream format), `json` for collectors.
enum LogFormat: String {
    case text
    case json
}

/// The logging system is process-wide and can be bootstrapped once: the first command's
/// logger decides, and every command makes its logger through `LoggingOptions`.
private let loggingBootstrap = Mutex(false)

struct LoggingOptions: ParsableArguments {
    @Option(help: "trace, debug, info, notice, warning, error or critical (env SYNC_AGENT_LOG_LEVEL; default info).")
    var logLevel: String?

    @Option(help: "text or json, one line per event on standard error (env SYNC_AGENT_LOG_FORMAT; default text).")
    var logFormat: String?

    func validate() throws {
        _ = try resolved()
    }

    func resolved() throws -> (level: Logger.Level, format: LogFormat) {
        let levelText = logLevel ?? environment("SYNC_AGENT_LOG_LEVEL") ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else {
            throw ConfigurationError(.unknownLogSetting, "unknown log level \"\(levelText)\": use trace, debug, info, notice, warning, error or critical")
        }
        let formatText = logFormat ?? environment("SYNC_AGENT_LOG_FORMAT") ?? "text"
        guard let format = LogFormat(rawValue: formatText) else {
            throw ConfigurationError(.unknownLogSetting, "unknown log format \"\(formatText)\": use text or json")
        }
        return (level, format)
    }

    /// Logs go to standard error, so standard output carries only a command's result
    /// (the `--json` reports). `validate()` has checked the settings.
    func makeLogger(_ label: String) -> Logger {
        let (level, format) = (try? resolved()) ?? (.info, .text)
        loggingBootstrap.withLock { bootstrapped in
            guard !bootstrapped else { return }
            bootstrapped = true
            switch format {
            case .text: LoggingSystem.bootstrap(TextLogHandler.standardError)
            case .json: LoggingSystem.bootstrap(JSONLogHandler.standardError)
            }
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

/// The stores of one run, opened and checked: a missing bucket or bad credentials stop the
/// command here, before it writes anything.
struct OpenedStorage {
    let configuration: StorageConfiguration
    /// Where sessions are committed (and restored from, but in hybrid mode).
    let primary: SessionStore
    let conditionalWrites: Bool
    /// Hybrid mode: the S3 copy behind the local store.
    let mirror: SessionMirror?

    /// `access`: what the command does with the local store. Commands that create it are the
    /// ones that commit snapshots: they probe whether the stores enforce conditional writes (a write).
    static func open(_ options: StorageOptions, logger: Logger, access: StoreAccess) async throws -> OpenedStorage {
        let writes = access == .create
        let configuration = try options.storageConfiguration(access: access)
        let (primaryStore, mirrorStore) = try configuration.openStores(access: access, logger: logger)
        let primary = SessionStore(store: primaryStore, keyring: configuration.keyring)
        try await primary.probe()
        let conditional = writes ? try await primaryStore.probeConditionalWrites() : true
        if !conditional {
            logger.warning("the store ignores conditional writes: fencing is off, two agents on one session could overwrite each other", metadata: ["store": "\(primaryStore.location)"])
        }
        var mirror: SessionMirror?
        if let mirrorStore {
            let remote = SessionStore(store: mirrorStore, keyring: configuration.keyring)
            var mirrorConditional = true
            do {
                try await remote.probe()
                if writes { mirrorConditional = try await mirrorStore.probeConditionalWrites() }
            } catch StoreError.unavailable(let reason) {
                // Hybrid mode exists for this: commit locally now, catch S3 up later.
                logger.warning("S3 is unreachable; committing to the local store and catching up later", metadata: ["reason": "\(reason)"])
            }
            mirror = SessionMirror(local: primary, remote: remote, conditionalWrites: mirrorConditional)
        }
        return OpenedStorage(configuration: configuration, primary: primary, conditionalWrites: conditional, mirror: mirror)
    }

    /// The store to restore a session from: in hybrid mode, the newer copy.
    func restoreSource(for session: SessionID) async throws -> SessionStore {
        guard let mirror else { return primary }
        return try await mirror.newest(session)
    }

    /// Every session either store holds.
    func storedSessions() async throws -> [SessionID] {
        var sessions = Set(try await primary.sessions())
        if let mirror { sessions.formUnion(try await mirror.remote.sessions()) }
        return sessions.sorted()
    }
}

/// "host/pid/random": who claimed a session, as a fenced agent's message names it.
func agentIdentity() -> String {
    let host = ProcessInfo.processInfo.hostName
    return "\(host)/\(getpid())/\(UInt32.random(in: 0...UInt32.max))"
}

/// The session id an argument names, in either spelling (`SessionID(printed:)`); one that names
/// none is shown escaped (`FileName.displayed`), so the message stays one line.
func sessionID(argument name: String) throws -> SessionID {
    guard let id = SessionID(printed: name) else { throw ValidationError("\"\(FileName.displayed(name))\" is not a valid session id") }
    return id
}

/// The session directories under the root, as `watch` sees them (`SessionDirectories`).
func sessionDirectories(in root: String) throws -> SessionDirectories {
    do {
        return try SessionDirectories(root: root)
    } catch {
        throw ConfigurationError(.unreadableSessionsDirectory, "cannot read the sessions directory: \(error)")
    }
}

/// Prints a `--json` report on standard output.
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
