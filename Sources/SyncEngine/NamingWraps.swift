import SessionCrypto
import SystemSupport

/// The store's naming secret as the store holds it: one object `naming/<key id>` per key, each
/// an encrypted container (bound to session id "" and its own key) whose plaintext is the
/// secret's 32 bytes (FORMAT.md, "Keyed names").
enum NamingWraps {
    static let prefix = "naming/"
    /// A wrap is 41 + 21 + 32 bytes; anything much larger is not one.
    static let maxWrapSize: Int64 = 1 << 10

    static func key(_ id: KeyID) -> String { prefix + id.description }

    static func identity(_ id: KeyID) -> ObjectIdentity { ObjectIdentity(sessionID: "", objectName: key(id)) }

    /// The secret, from the wraps of every configured key the store has one for (they must agree);
    /// nil when the store holds no wrap at all (a store of format version 2, or an empty one).
    static func load(from store: any ObjectStore, keyring: Keyring) async throws -> (naming: StoreNaming, wrapped: Set<KeyID>)? {
        let listed = try await store.list(prefix: prefix).map { String($0.key.dropFirst(prefix.count)) }
        guard !listed.isEmpty else { return nil }
        var wrapped = Set<KeyID>()
        var found: StoreNaming?
        for key in keyring.keys where listed.contains(key.id.description) && !wrapped.contains(key.id) {
            guard let object = try await store.get(Self.key(key.id), maxSize: maxWrapSize) else { continue }
            let secret: [UInt8]
            do {
                secret = try decrypt(object.bytes, keyring: Keyring(primary: key), identity: identity(key.id))
            } catch {
                throw SnapshotError.corrupt("the store's naming secret \(Self.key(key.id)) in \(store.location): \(error)")
            }
            guard let naming = StoreNaming(secret: secret) else {
                throw SnapshotError.corrupt("the store's naming secret \(Self.key(key.id)) in \(store.location) is not \(StoreNaming.secretByteCount) bytes")
            }
            if let found, !found.sameSecret(as: naming) {
                throw SnapshotError.corrupt(
                    "the store \(store.location) holds two naming secrets (\(prefix)\(wrapped.map(\.description).sorted().joined(separator: ", ")) and \(Self.key(key.id)) differ): "
                        + "writers with different keys started on an empty store; keep one store per keyring")
            }
            found = naming
            wrapped.insert(key.id)
        }
        guard let found else {
            throw SnapshotError.wrongKey(
                "the store \(store.location) names its sessions with a secret wrapped for key id(s) \(listed.sorted().joined(separator: ", ")), "
                    + "none of which is configured")
        }
        return (found, wrapped)
    }

    /// The secret, made and stored when the store has none, and wrapped for the primary key when
    /// that key has no wrap yet (after a rotation). Only writers call it: a reader never writes.
    static func loadOrCreate(in store: any ObjectStore, keyring: Keyring, conditionalWrites: Bool) async throws -> StoreNaming {
        while true {
            if let (naming, wrapped) = try await load(from: store, keyring: keyring) {
                if !wrapped.contains(keyring.primary.id) {
                    try await put(naming, in: store, keyring: keyring, conditionalWrites: conditionalWrites)
                }
                return naming
            }
            try await put(.generate(), in: store, keyring: keyring, conditionalWrites: conditionalWrites)
            // Read back: another writer may have made the store's secret first.
        }
    }

    /// A wrap for the primary key; another writer's wrap that landed first stands (read back).
    private static func put(_ naming: StoreNaming, in store: any ObjectStore, keyring: Keyring, conditionalWrites: Bool) async throws {
        let id = keyring.primary.id
        let bytes = encrypt(naming.wrapPayload, key: keyring.primary, identity: identity(id))
        do {
            try await store.put(key(id), body: .bytes(bytes), condition: conditionalWrites ? .ifAbsent : nil)
        } catch StoreError.preconditionFailed {
            return
        }
    }
}
