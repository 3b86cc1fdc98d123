import ArgumentParser
import FoundationEssentials
import Glibc
import Logging
import S3Client
import SessionArchive
import SessionCrypto
import SyncEngine
import Synchronization
import SystemSupport

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
        case missingKey
        case emptyKey
        case missingLocalStore
        case missingBucket
        case unreadableSessionsDirectory
        case badListenAddress
        case cannotListen
        case badControlSocket
        case badControlToken
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

    @Option(help: "Where snapshots go (env SESSION_STORAGE_TYPE; default local).")
    var mode: StorageMode?

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

    @Option(help: "How bucket URLs are written (default path for custom endpoints, virtual-hosted for AWS).")
    var addressing: S3Configuration.Addressing?

    @Option(help: "CA bundle for the S3 endpoint's TLS certificate (env SYNC_AGENT_CA_BUNDLE).")
    var caBundle: String?

    @Option(help: "File with encryption keys, one per line, the first one writes (repeatable; env SESSION_ENCRYPTION_KEY holds keys inline).")
    var keyFile: [String] = []

    @Option(help: "What a session's files are: baileys (creds.json: the identity guard, the auth-state check on restore, session health) or opaque (bytes only) (env SYNC_AGENT_SESSION_FORMAT; default baileys).")
    var sessionFormat: SessionFormat?

    var resolvedSessionsDir: String { sessionsDir ?? environment("SESSIONS_DIR") ?? "./sessions" }

    var resolvedMode: StorageMode {
        get throws(UsageError) { try StorageMode.resolve(mode, variable: "SESSION_STORAGE_TYPE") ?? .local }
    }

    var resolvedSessionFormat: SessionFormat {
        get throws(UsageError) { try SessionFormat.resolve(sessionFormat, variable: SessionFormat.environmentVariable) ?? .baileys }
    }

    var resolvedLocalStore: String {
        localStore ?? environment("SYNC_AGENT_LOCAL_STORE")
            ?? "\(FileManager.default.homeDirectoryForCurrentUser.path)/.local/state/sync-agent/store"
    }

    func validate() throws {
        try rejectingUsageErrors {
            _ = try resolvedMode
            _ = try resolvedSessionFormat
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
        return StorageConfiguration(mode: mode, localStore: resolvedLocalStore, keyring: keyring)
    }
}

/// How log lines look: `text` for people (swift-log's stream format), `json` for collectors.
enum LogFormat: String, CaseIterable, ExpressibleByArgument {
    case text
    case json
}

/// The logging system is process-wide and can be bootstrapped once: the first command's
/// logger decides, and every command makes its logger through `LoggingOptions`.
private let loggingBootstrap = Mutex(false)

struct LoggingOptions: ParsableArguments {
    @Option(help: "The least severe events logged (env SYNC_AGENT_LOG_LEVEL; default info).")
    var logLevel: Logger.Level?

    @Option(help: "One line per event on standard error, for people or for collectors (env SYNC_AGENT_LOG_FORMAT; default text).")
    var logFormat: LogFormat?

    func validate() throws {
        try rejectingUsageErrors { _ = try resolved() }
    }

    func resolved() throws(UsageError) -> (level: Logger.Level, format: LogFormat) {
        (try Logger.Level.resolve(logLevel, variable: "SYNC_AGENT_LOG_LEVEL") ?? .info,
         try LogFormat.resolve(logFormat, variable: "SYNC_AGENT_LOG_FORMAT") ?? .text)
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

/// The session directories under the root, as `watch` sees them (`SessionDirectories`).
func sessionDirectories(in root: String) throws -> SessionDirectories {
    do {
        return try SessionDirectories(root: root)
    } catch {
        throw ConfigurationError(.unreadableSessionsDirectory, "cannot read the sessions directory: \(error)")
    }
}
