import ArgumentParser
import Logging
import SyncEngine

struct LocateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locate",
        abstract: "Print the object key prefix of a session (needs the key).",
        discussion: """
            Object keys name a session by a keyed id derived from the store's naming secret, which
            only the encryption key opens: this prints that prefix, for debugging a bucket. A session
            of an older store not moved yet is under its own name (format version 2). In hybrid mode,
            one line per store. Reads only.
            """)

    @OptionGroup var storage: StorageOptions
    @OptionGroup var logging: LoggingOptions
    @Argument(help: "A session id.", transform: SessionID.init(parsing:)) var session: SessionID

    func run() async throws {
        let logger = logging.makeLogger("sync-agent.locate")
        let opened = try await OpenedStorage.open(storage, logger: logger, access: .read)
        for store in [opened.primary] + (opened.mirror.map { [$0.remote] } ?? []) {
            let place = try await store.place(session)
            let layout = place.isKeyed ? "keyed" : "plain (format version 2)"
            print("\(store.store.location)\t\(place.prefix)\t\(layout)")
        }
    }
}
