import SessionCrypto
import Foundation
import Logging
@testable import SyncEngine
import TestSupport
import Testing

/// The Baileys session format: `creds.json` parsed within its bound, the keyed identity each
/// manifest records, the guard that keeps a lost registered identity, and the auth-state check
/// before a restore swaps a session in.
@Suite("Session identity (Baileys)")
struct SessionIdentityTests {
    let workspace: TemporaryDirectory
    let sessionsRoot: String
    let sessionStore: SessionStore
    let session = SessionID("4915112345678")!
    var directory: String { "\(sessionsRoot)/\(session.rawValue)" }
    /// The account's number, which `me.id` holds; not the session's id, so a test can look for it in messages.
    static let phone = "4917099998888"

    init() throws {
        workspace = try TemporaryDirectory()
        sessionsRoot = workspace.file("sessions")
        try FileManager.default.createDirectory(atPath: "\(sessionsRoot)/\(session.rawValue)", withIntermediateDirectories: true)
        sessionStore = SessionStore(
            store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
    }

    func replicator(retention: RetentionPolicy = .compactionDefault) -> SessionReplicator {
        var policy = CompactionPolicy()
        policy.retention = retention
        return SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: "agent-a", conditionalWrites: true,
            format: .baileys, policy: policy, logger: Logger(label: "test"))
    }

    func write(_ text: String, to name: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: "\(directory)/\(name)"))
    }

    func writeSession(credentials: String) throws {
        try write(credentials, to: "creds.json")
        for (name, contents) in BaileysFixtures.keyFiles { try write(contents, to: name) }
    }

    func restorer() -> SessionRestorer {
        var restorer = SessionRestorer(sessionStore: sessionStore)
        restorer.format = .baileys
        return restorer
    }

    func freshRoot() throws -> String {
        let root = workspace.file("restored-\(randomHex(4))")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return root
    }

    func uploaded(_ result: SyncResult) throws -> SnapshotID {
        guard case .uploaded(let id, _, _, _) = result else { throw ProgramFailure("nothing uploaded: \(result)") }
        return id
    }

    // MARK: - The model

    @Test func pairedAndNeverPairedCredentialsParseAndTheirDefectsNameAFieldNeverAValue() throws {
        let paired = try BaileysCredentials.parse(Array(BaileysFixtures.credentials(pairedWith: Self.phone).utf8))
        #expect(paired.isPaired)
        #expect(!(try BaileysCredentials.parse(Array(BaileysFixtures.credentials().utf8))).isPaired)

        let cases: [(bytes: [UInt8]?, reason: BaileysCredentials.Defect.Reason, says: String)] = [
            (nil, .missing, "creds.json is missing"),
            ([], .unparsable, "empty"),
            (Array("{\"noiseKey\":".utf8), .unparsable, "does not parse"),
            (Array(#"{"a":1}"#.utf8), .incomplete, "noiseKey"),
            (Array(BaileysFixtures.credentials().replacing(#""keyId":1"#, with: #""keyId":"x""#).utf8), .incomplete, "signedPreKey.keyId"),
            (Array(BaileysFixtures.credentials(pairedWith: Self.phone).replacing(#""account":"#, with: #""accountGone":"#).utf8), .incomplete, "no account"),
            ([UInt8](repeating: 0x20, count: BaileysCredentials.maximumByteCount + 1), .tooLarge, "larger than 1 MiB"),
        ]
        for (bytes, reason, says) in cases {
            let error = #expect(throws: BaileysCredentials.Defect.self) { try BaileysCredentials.parse(bytes) }
            #expect(error?.reason == reason, "\(says)")
            #expect(error?.description.contains(says) == true, "\(error?.description ?? "")")
            #expect(error?.description.contains(Self.phone) == false)
        }
    }

    @Test func olderBaileysByteArraysParseToo() throws {
        let bytes = "[" + (0..<32).map(String.init).joined(separator: ",") + "]"
        let credentials = BaileysFixtures.credentials()
        let old = try #require(credentials.firstRange(of: #/"noiseKey":\{"private":\{"type":"Buffer","data":"[^"]*"\}/#))
        let text = credentials.replacingCharacters(in: old, with: #""noiseKey":{"private":{"type":"Buffer","data":\#(bytes)}"#)
        _ = try BaileysCredentials.parse(Array(text.utf8))
    }

    @Test func theFingerprintIsKeyedAndTellsIdentitiesApart() throws {
        let credentials = Array(BaileysFixtures.credentials(pairedWith: Self.phone).utf8)
        let key = EncryptionKey.generate()
        let identity = try #require(SessionFormat.baileys.identity(ofCredentials: credentials, key: key))
        #expect(identity.authState == .valid && identity.registered)
        #expect(identity.fingerprint == SessionFormat.baileys.identity(ofCredentials: credentials, key: key)?.fingerprint)
        #expect(identity.fingerprint != SessionFormat.baileys.identity(ofCredentials: credentials, key: .generate())?.fingerprint)
        let other = Array(BaileysFixtures.credentials(pairedWith: Self.phone).utf8)
        #expect(identity.fingerprint != SessionFormat.baileys.identity(ofCredentials: other, key: key)?.fingerprint)
        #expect(identity.keyID == key.id.description)
        #expect(SessionFormat.opaque.identity(ofCredentials: credentials, key: key) == nil)
    }

    // MARK: - The guard and retention

    /// The reported incident: a disk-full truncates a registered `creds.json` to 0 bytes, Baileys
    /// mints a new unregistered identity over it. The snapshot of the new one is taken and the
    /// session flagged; ten bases pruned to the last one later, the registered one is still there
    /// and restores.
    @Test func aLostRegisteredIdentityIsFlaggedAndKeptThroughTenPrunedBases() async throws {
        try writeSession(credentials: BaileysFixtures.credentials(pairedWith: Self.phone))
        let writer = replicator(retention: RetentionPolicy(keepLast: 1))
        let registered = try uploaded(try await writer.sync())
        #expect(await writer.identity?.registered == true)

        try write("", to: "creds.json")  // truncated: never captured, the last good version stays
        #expect(try await writer.sync() == .unchanged(unsettled: ["creds.json"]))
        try write(BaileysFixtures.credentials(), to: "creds.json")
        _ = try uploaded(try await writer.sync())
        #expect(await writer.identity?.registered == false)
        let hold = try #require(try await sessionStore.head(session)?.head.identityHold)
        #expect(hold.snapshot == registered)
        // The head's time is stored to the second.
        #expect(abs(try #require(await writer.health.identityChangedAt).timeIntervalSince(hold.since)) < 1)

        for round in 0..<10 {
            try write(#"{"round":\#(round)}"#, to: "app-state-sync-version-critical_block.json")
            _ = try uploaded(try await writer.sync(forceBase: true))
        }
        let snapshots = try await sessionStore.snapshots(session)
        #expect(snapshots.map(\.id).contains(registered))
        #expect(snapshots.count == 2)

        let root = try freshRoot()
        let outcome = try await restorer().restore(session, into: root, target: registered.label)
        #expect(outcome.registered == true)
        #expect(try BaileysCredentials.parse(Array(Data(contentsOf: URL(fileURLWithPath: "\(root)/\(session.rawValue)/creds.json")))).isPaired)

        // An operator's decision ends the hold; the policy alone decides again.
        let pruner = SnapshotPruner(sessionStore: sessionStore)
        let forgotten = try await pruner.prune(session, policy: RetentionPolicy(keepLast: 1), forgetIdentity: true)
        #expect(forgotten.forgottenIdentity == registered)
        #expect(try await sessionStore.snapshots(session).count == 1)
        #expect(try await sessionStore.head(session)?.head.identityHold == nil)
    }

    @Test func aDeletedCredentialsFileOrAnotherIdentityIsFlaggedAndALogoutEndsTheHold() async throws {
        try writeSession(credentials: BaileysFixtures.credentials(pairedWith: Self.phone))
        let writer = replicator()
        let first = try uploaded(try await writer.sync())
        try FileManager.default.removeItem(atPath: "\(directory)/creds.json")
        _ = try uploaded(try await writer.sync())
        #expect(try await sessionStore.head(session)?.head.identityHold?.snapshot == first)
        #expect(await writer.identity?.authState == .missing)

        // Re-linked (another registered identity), then replaced by yet another one.
        try write(BaileysFixtures.credentials(pairedWith: Self.phone), to: "creds.json")
        let relinked = try uploaded(try await writer.sync())
        #expect(try await sessionStore.head(session)?.head.identityHold?.snapshot == first)
        try write(BaileysFixtures.credentials(pairedWith: Self.phone), to: "creds.json")
        _ = try uploaded(try await writer.sync())
        #expect(try await sessionStore.head(session)?.head.identityHold?.snapshot == relinked)

        // The same identity rewritten (a counter moved) is no change.
        let current = try String(contentsOfFile: "\(directory)/creds.json", encoding: .utf8)
        try write(current.replacing(#""accountSyncCounter":0"#, with: #""accountSyncCounter":1"#), to: "creds.json")
        let rewritten = try uploaded(try await writer.sync())
        #expect(try await sessionStore.head(session)?.head.identityHold?.snapshot == relinked)
        #expect(try await sessionStore.manifest(session, try #require(try await sessionStore.snapshots(session).last { $0.id == rewritten }))?.identity?.registered == true)

        try await writer.tombstone()
        #expect(try await sessionStore.head(session)?.head.identityHold == nil)
    }

    @Test func credentialsAreParsedOnlyWhenTheyChange() async throws {
        try writeSession(credentials: BaileysFixtures.credentials(pairedWith: Self.phone))
        let writer = replicator()
        _ = try uploaded(try await writer.sync())
        let identity = await writer.identity
        // A delta of other files carries the identity without reading creds.json: unreadable now, it would fail to parse.
        try write(#"{"other":1}"#, to: "pre-key-3.json")
        chmod("\(directory)/creds.json", 0)
        defer { chmod("\(directory)/creds.json", 0o600) }
        let delta = try uploaded(try await writer.sync(changedPaths: ["pre-key-3.json"]))
        let entry = try #require(try await sessionStore.snapshots(session).first { $0.id == delta })
        #expect(try await sessionStore.manifest(session, entry)?.identity == identity)
    }

    /// A store written in the opaque format (or before identities were recorded): the first look
    /// with the Baileys format reads `creds.json` once, and the next snapshot records the identity.
    @Test func anIdentityUnknownToTheStoreIsLearntAtTheFirstLook() async throws {
        try writeSession(credentials: BaileysFixtures.credentials(pairedWith: Self.phone))
        let opaque = SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: "agent-a", conditionalWrites: true,
            logger: Logger(label: "test"))
        _ = try uploaded(try await opaque.sync())
        #expect(await opaque.identity == nil)

        let writer = replicator()
        #expect(try await writer.sync() == .unchanged(unsettled: []))
        #expect(await writer.identity?.registered == true)
        try write(#"{"other":1}"#, to: "pre-key-3.json")
        let delta = try uploaded(try await writer.sync(changedPaths: ["pre-key-3.json"]))
        let entry = try #require(try await sessionStore.snapshots(session).first { $0.id == delta })
        #expect(try await sessionStore.manifest(session, entry)?.identity?.registered == true)
    }

    /// After a key rotation the fingerprints differ, so the writer compares under the key the
    /// previous one was keyed with: the same identity is no change, another one is.
    @Test func aKeyRotationIsNoIdentityChange() async throws {
        try writeSession(credentials: BaileysFixtures.credentials(pairedWith: Self.phone))
        _ = try uploaded(try await replicator().sync())
        let rotated = SessionStore(
            store: sessionStore.store, keyring: Keyring(primary: .generate(), additional: [sessionStore.keyring.primary]))
        var policy = CompactionPolicy()
        policy.retention = .compactionDefault
        let writer = SessionReplicator(
            session: session, directory: directory, sessionStore: rotated, owner: "agent-b", conditionalWrites: true,
            format: .baileys, policy: policy, logger: Logger(label: "test"))
        let current = try String(contentsOfFile: "\(directory)/creds.json", encoding: .utf8)
        try write(current.replacing(#""accountSyncCounter":0"#, with: #""accountSyncCounter":1"#), to: "creds.json")
        let same = try uploaded(try await writer.sync())
        #expect(try await rotated.head(session)?.head.identityHold == nil)
        #expect(await writer.identity?.keyID == rotated.keyring.primary.id.description)

        try write(BaileysFixtures.credentials(pairedWith: Self.phone), to: "creds.json")
        _ = try uploaded(try await writer.sync())
        #expect(try await rotated.head(session)?.head.identityHold?.snapshot == same)
    }

    // MARK: - The auth-state check on restore

    @Test func aSnapshotWhoseCredentialsAreBrokenIsNotSwappedInAndTheNewestPassingOneIsNamed() async throws {
        try writeSession(credentials: BaileysFixtures.credentials(pairedWith: Self.phone))
        let writer = replicator()
        let good = try uploaded(try await writer.sync())
        try write(#"{"noiseKey":null}"#, to: "creds.json")  // JSON, so captured: not what Baileys can use
        let broken = try uploaded(try await writer.sync())

        let root = try freshRoot()
        try FileManager.default.createDirectory(atPath: "\(root)/\(session.rawValue)", withIntermediateDirectories: false)
        try Data("the worker's last state".utf8).write(to: URL(fileURLWithPath: "\(root)/\(session.rawValue)/creds.json"))
        for dryRun in [true, false] {
            let plan = try await restorer().plan(session, into: root)
            let error = await #expect(throws: AuthStateError.self) { try await restorer().restore(plan, into: root, dryRun: dryRun) }
            #expect(error?.snapshot == broken)
            #expect(error?.passing == good)
            #expect(error?.description.contains("--snapshot \(good)") == true)
            #expect(error?.description.contains(Self.phone) == false)
        }
        #expect(try directoryTree("\(root)/\(session.rawValue)") == ["creds.json": Array("the worker's last state".utf8)])
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == [session.rawValue])

        let outcome = try await restorer().restore(session, into: root, target: good.label)
        #expect(outcome.status == .restored && outcome.registered == true)
        // Opaque: today's behaviour, bytes only.
        let opaque = try await SessionRestorer(sessionStore: sessionStore).restore(session, into: try freshRoot())
        #expect(opaque.status == .restored && opaque.registered == nil)
    }

    @Test func aNeverPairedSessionRestoresAndSaysSo() async throws {
        try writeSession(credentials: BaileysFixtures.credentials())
        _ = try uploaded(try await replicator().sync())
        let outcome = try await restorer().restore(session, into: try freshRoot())
        #expect(outcome.status == .restored)
        #expect(outcome.registered == false)
    }
}
