import Synchronization
import SyncEngine

/// Another store, with one-shot faults armed by a test: the store failing a read, or a write
/// that lands but whose reply is lost; and one-shot actions run right after a read answered
/// (another writer moving on between two reads of a reader).
final class InjectedFaultsStore: ObjectStore {
    enum Fault: Equatable {
        /// The next read of a key ending so fails as if the store were down.
        case failRead(keySuffix: String)
        /// The next write of a key ending so is stored, then fails as if its reply were lost.
        case loseReply(keySuffix: String)
    }

    let store: any ObjectStore
    private let armed = Mutex<[Fault]>([])
    private let afterReads = Mutex<[(keySuffix: String, action: @Sendable () async -> Void)]>([])

    init(store: any ObjectStore) { self.store = store }

    func arm(_ fault: Fault) { armed.withLock { $0.append(fault) } }

    /// Runs `action` once, after the next read of a key ending with `keySuffix` has its answer.
    func afterRead(keySuffix: String, _ action: @escaping @Sendable () async -> Void) {
        afterReads.withLock { $0.append((keySuffix, action)) }
    }

    private func runAfterRead(_ key: String) async {
        let action = afterReads.withLock { actions in
            actions.firstIndex { key.hasSuffix($0.keySuffix) }.map { actions.remove(at: $0).action }
        }
        await action?()
    }

    /// Disarms the first armed fault whose key suffix `suffix` finds and that `key` ends with,
    /// and fails with `message`.
    private func fire(_ key: String, _ message: String, suffix: (Fault) -> String?) throws(StoreError) {
        let fired = armed.withLock { armed in
            guard let index = armed.firstIndex(where: { suffix($0).map(key.hasSuffix) ?? false }) else { return false }
            armed.remove(at: index)
            return true
        }
        if fired { throw .unavailable("injected: \(message)") }
    }

    private func afterPut(_ key: String) throws(StoreError) {
        try fire(key, "the write was stored, its reply lost") { if case .loseReply(let suffix) = $0 { suffix } else { nil } }
    }

    private func beforeGet(_ key: String) throws(StoreError) {
        try fire(key, "the store failed one read") { if case .failRead(let suffix) = $0 { suffix } else { nil } }
    }

    var location: String { store.location }

    func put(_ key: String, body: ObjectBody, condition: WriteCondition?) async throws(StoreError) -> String {
        let etag = try await store.put(key, body: body, condition: condition)
        try afterPut(key)
        return etag
    }

    func get(_ key: String, maxSize: Int64) async throws(StoreError) -> StoredObject? {
        try beforeGet(key)
        let object = try await store.get(key, maxSize: maxSize)
        await runAfterRead(key)
        return object
    }

    func download(_ key: String, toFileAt path: String, maxSize: Int64) async throws(StoreError) -> StoredObjectInfo? {
        try beforeGet(key)
        return try await store.download(key, toFileAt: path, maxSize: maxSize)
    }

    func head(_ key: String) async throws(StoreError) -> StoredObjectInfo? { try await store.head(key) }

    func list(prefix: String) async throws(StoreError) -> [StoredObjectInfo] { try await store.list(prefix: prefix) }

    func delete(_ keys: [String]) async throws(StoreError) { try await store.delete(keys) }

    func probeConditionalWrites() async throws(StoreError) -> Bool { try await store.probeConditionalWrites() }
}
