import SessionCrypto
import Foundation
import Logging
import SyncEngine
import TestSupport
import Testing

/// After any prune, every snapshot that is left restores byte-identical to what was
/// snapshotted, and what is left is exactly what the policy asks for: the snapshots its rules
/// pick (computed here the naive way), the head's, and the chains they need.
///
/// Random histories on the filesystem store, whose object times the test sets (an S3 server
/// stamps its own): random writes, new files and deletions, bases forced now and then,
/// compaction after short chains, logouts (tombstones) and returns, snapshots minutes to days
/// apart. Each seed is one history and one policy; a failure names its seed.
@Suite("Prune: random histories")
struct PruneRestorePropertyTests {
    static let utc = TimeZone(identifier: "UTC")!

    @Test(arguments: 0..<12)
    func everyKeptSnapshotRestoresAndThePolicysChoicesAreKept(seed: UInt64) async throws {
        var random = SplitMix64(seed: seed)
        let workspace = try TemporaryDirectory()
        let sessionStore = SessionStore(
            store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
        let session = SessionID("property-\(seed)")!
        let directory = workspace.file("sessions/\(session.rawValue)")
        try FileManager.default.createDirectory(atPath: workspace.file("sessions"), withIntermediateDirectories: true)
        var compaction = CompactionPolicy()
        compaction.maxChainLength = Int.random(in: 1...4, using: &random)
        // The history stays whole until the prune under test.
        compaction.retention = RetentionPolicy(keepLast: 10_000)
        let replicator = SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: "property",
            conditionalWrites: true, policy: compaction, logger: Logger(label: "test"))

        /// What each snapshot holds; nil for a tombstone.
        var snapshotted: [SnapshotID: [String: [UInt8]]?] = [:]
        var written: [SnapshotID: Written] = [:]
        var time = Date(timeIntervalSince1970: 1_790_000_000)
        func stamp(_ id: SnapshotID, _ kind: SnapshotKind) async throws {
            time += TimeInterval.random(in: 300...(3 * 86_400), using: &random)
            written[id] = Written(kind: kind, time: time)
            let entry = try #require(try await sessionStore.snapshots(session).first { $0.id == id })
            try FileManager.default.setAttributes(
                [.modificationDate: time], ofItemAtPath: workspace.file("store/" + (try await sessionStore.snapshotKeys(session, [entry]))[0]))
        }

        for _ in 0..<Int.random(in: 10...22, using: &random) {
            if !FileManager.default.fileExists(atPath: directory) {
                try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory)
            } else if !snapshotted.isEmpty, Int.random(in: 0..<10, using: &random) == 0 {
                try FileManager.default.removeItem(atPath: directory)
                try await replicator.tombstone()
                let id = try #require(await replicator.latest)
                snapshotted[id] = .some(nil)
                try await stamp(id, .tombstone)
                continue
            }
            try changeSomeFiles(in: directory, using: &random)
            guard case .uploaded(let id, let kind, _, _) = try await replicator.sync(forceBase: Int.random(in: 0..<7, using: &random) == 0)
            else {
                Issue.record("seed \(seed): a change uploaded nothing")
                return
            }
            snapshotted[id] = .some(try directoryContents(directory))
            try await stamp(id, kind)
        }

        let policy = randomPolicy(using: &random)
        let outcome = try await SnapshotPruner(sessionStore: sessionStore).prune(session, policy: policy)
        let left = try await sessionStore.snapshots(session)
        #expect(Set(left.map(\.id)) == Self.expectedKept(written, policy: policy), "seed \(seed), \(policy)")
        #expect(Set(outcome.plan.kept.map(\.entry.id)) == Set(left.map(\.id)), "seed \(seed)")

        for entry in left {
            let root = workspace.file("restored-\(entry.id)")
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            let restored = try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root, target: entry.id.label)
            switch snapshotted[entry.id] {
            case .some(.some(let files)):
                #expect(restored.status == .restored, "seed \(seed), snapshot \(entry.id)")
                #expect(try directoryContents("\(root)/\(session.rawValue)") == files, "seed \(seed), snapshot \(entry.id)")
            case .some(.none):
                #expect(restored.status == .loggedOut, "seed \(seed), snapshot \(entry.id)")
            case .none:
                Issue.record("seed \(seed): snapshot \(entry.id) was never written")
            }
        }
    }

    /// Rewrites, creates (some in a subdirectory) and deletes a few files, as Baileys does.
    private func changeSomeFiles(in directory: String, using random: inout SplitMix64) throws {
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            let files = try directoryContents(directory).keys.sorted()
            switch Int.random(in: 0..<4, using: &random) {
            case 0 where files.count > 1:
                try FileManager.default.removeItem(atPath: "\(directory)/\(files.randomElement(using: &random)!)")
            case 1:
                try FileManager.default.createDirectory(atPath: "\(directory)/keys", withIntermediateDirectories: true)
                try write("{\"key\":\"\(UInt64.random(in: 0...UInt64.max, using: &random))\"}", to: "\(directory)/keys/k-\(Int.random(in: 0..<50, using: &random)).json")
            case 2:
                try write("{\"new\":\(UInt64.random(in: 0...UInt64.max, using: &random))}", to: "\(directory)/pre-key-\(Int.random(in: 1000..<1100, using: &random)).json")
            default:
                let name = files.randomElement(using: &random)!
                try write("{\"rewritten\":\(UInt64.random(in: 0...UInt64.max, using: &random))}", to: "\(directory)/\(name)")
            }
        }
        // At least one certain change, so every round uploads a snapshot.
        try write("{\"round\":\(UInt64.random(in: 0...UInt64.max, using: &random))}", to: "\(directory)/creds.json")
    }

    private func write(_ text: String, to path: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    private func randomPolicy(using random: inout SplitMix64) -> RetentionPolicy {
        var policy = RetentionPolicy()
        while policy == RetentionPolicy() {
            func maybe(_ range: ClosedRange<Int>) -> Int? {
                Bool.random(using: &random) ? Int.random(in: range, using: &random) : nil
            }
            policy.keepLast = maybe(1...6)
            policy.keepHourly = maybe(1...8)
            policy.keepDaily = maybe(1...5)
            policy.keepWeekly = maybe(1...3)
            policy.keepWithin = maybe(1...96).map { .seconds($0 * 3600) }
        }
        return policy
    }

    struct Written {
        var kind: SnapshotKind
        var time: Date
    }

    /// The policy applied the obvious way over the whole history (every snapshot of it restores):
    /// each rule on its own, the newest snapshot, then every chain back to its start.
    static func expectedKept(_ written: [SnapshotID: Written], policy: RetentionPolicy) -> Set<SnapshotID> {
        let newestFirst = written.keys.sorted(by: >)
        var chosen: Set<SnapshotID> = [newestFirst[0]]
        if let count = policy.keepLast { chosen.formUnion(newestFirst.prefix(count)) }
        func newestOfEach(_ count: Int?, _ period: (Date) -> String) {
            guard let count else { return }
            var periods: [String] = []
            for id in newestFirst where !periods.contains(period(written[id]!.time)) {
                periods.append(period(written[id]!.time))
                if periods.count <= count { chosen.insert(id) }
            }
        }
        let formatter = DateFormatter()
        formatter.timeZone = utc
        formatter.locale = Locale(identifier: "en_US_POSIX")
        var iso = Calendar(identifier: .iso8601)
        iso.timeZone = utc
        newestOfEach(policy.keepHourly) { formatter.dateFormat = "yyyy-MM-dd HH"; return formatter.string(from: $0) }
        newestOfEach(policy.keepDaily) { formatter.dateFormat = "yyyy-MM-dd"; return formatter.string(from: $0) }
        newestOfEach(policy.keepWeekly) { "\(iso.component(.yearForWeekOfYear, from: $0))-\(iso.component(.weekOfYear, from: $0))" }
        if let within = policy.keepWithin {
            let newest = written[newestFirst[0]]!.time
            chosen.formUnion(newestFirst.filter { written[$0]!.time >= newest - TimeInterval(within.components.seconds) })
        }
        let bySequence = Dictionary(uniqueKeysWithValues: written.keys.map { ($0.sequence, $0) })
        var kept = chosen
        for var id in chosen {
            while written[id]!.kind == .delta {
                id = bySequence[id.sequence - 1]!
                kept.insert(id)
            }
        }
        return kept
    }
}

/// A prune running beside the session's writer, as `prune` from cron beside `watch`.
@Suite("Prune beside a writer")
struct PruneBesideAWriterTests {
    @Test func theChainAWriterAppendsToIsNeverPrunedFromUnderIt() async throws {
        let workspace = try TemporaryDirectory()
        let sessionStore = SessionStore(
            store: try FileSystemStore(root: workspace.file("store")), keyring: Keyring(primary: .generate()))
        let session = SessionID("busy")!
        let directory = workspace.file("sessions/\(session.rawValue)")
        try FileManager.default.createDirectory(atPath: workspace.file("sessions"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("sessions/small"), toPath: directory)
        var compaction = CompactionPolicy()
        compaction.maxChainLength = 3
        let writer = SessionReplicator(
            session: session, directory: directory, sessionStore: sessionStore, owner: "watch",
            conditionalWrites: true, policy: compaction, logger: Logger(label: "test"))
        let pruner = SnapshotPruner(sessionStore: sessionStore)

        for round in 0..<40 {
            try Data("{\"round\":\(round)}".utf8).write(to: URL(fileURLWithPath: "\(directory)/creds.json"))
            async let synced = writer.sync(forceBase: round % 7 == 0)
            async let pruned = pruner.prune(session, policy: RetentionPolicy(keepLast: 1))
            _ = try await (synced, pruned)
            let root = workspace.file("restored-\(round)")
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            let outcome = try await SessionRestorer(sessionStore: sessionStore).restore(session, into: root)
            #expect(outcome.status == .restored, "round \(round)")
            #expect(try directoryContents("\(root)/\(session.rawValue)") == directoryContents(directory), "round \(round)")
        }
    }
}
