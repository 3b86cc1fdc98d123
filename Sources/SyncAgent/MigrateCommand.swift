import ArgumentParser
import Logging
import SyncEngine

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move sessions stored by format version 2 (their names in the object keys) to keyed object names.",
        discussion: """
            A store written by an older sync-agent keeps each session under sessions/<session id>/.
            The first write to such a session (watch, backup) moves it; this command moves every
            session at once (or the ones named), in both stores in hybrid mode: each session's
            committed snapshots are copied byte for byte under its keyed id, its head follows, and
            the old keys are deleted. A move stopped at any point is finished by the next one.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @Flag(help: "Only print what would move; write nothing.") var dryRun = false
    @Argument(help: "Session ids; without any, every session in the store.", transform: SessionID.init(parsing:))
    var sessions: [SessionID] = []

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.migrate")
        let opened = try await OpenedStorage.open(storage, logger: logger, access: dryRun ? .read : .write)
        var failed = false
        var stores = [(opened.primary, opened.conditionalWrites)]
        if let mirror = opened.mirror { stores.append((mirror.remote, mirror.conditionalWrites)) }
        for (store, conditionalWrites) in stores {
            let naming = dryRun ? try await store.naming() : try await store.preparedNaming(conditionalWrites: conditionalWrites)
            for id in sessions.isEmpty ? try await store.sessions() : sessions {
                do {
                    guard let moved = try await store.move(id, naming: naming, conditionalWrites: conditionalWrites, dryRun: dryRun) else {
                        continue  // nothing at its plain place
                    }
                    let place = moved.place.map { "\($0)" } ?? "its keyed names (the first write makes the store's naming secret)"
                    print("\(id)\t\(dryRun ? "would move" : "moved") \(moved.copied.count) snapshot(s) to \(place) in \(store.store.location)")
                } catch {
                    failed = true
                    logger.error("could not move the session", metadata: ["session": "\(id)", "error": "\(error)"])
                }
            }
        }
        if failed { throw ExitCode(1) }
    }
}
