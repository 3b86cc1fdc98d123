import Foundation
import SyncEngine
import Testing

/// `RetentionPolicy.plan`, the pure part of pruning: listings in, keep and delete sets out.
@Suite("Retention policy")
struct RetentionPolicyTests {
    let session = SessionID("retention")!
    /// 2026-11-02 is a Monday.
    let monday = ISO8601DateFormatter().date(from: "2026-11-02T00:00:00Z")!

    /// Snapshots 1, 2, 3… of generation 1, each following the one before, of the given kinds,
    /// at the given hours after `monday`.
    func history(_ kinds: [SnapshotKind], hours: [Double]) -> [SnapshotEntry] {
        zip(kinds, hours).enumerated().map { index, snapshot in
            let sequence = UInt64(index + 1)
            return entry(id(sequence), snapshot.0, after: sequence > 1 ? id(sequence - 1) : nil, hours: snapshot.1)
        }
    }

    /// A snapshot id whose tag says its sequence, generation and write attempt, so tests can name it again.
    func id(_ sequence: UInt64, generation: UInt64 = 1, attempt: UInt64 = 0) -> SnapshotID {
        let hex = String(sequence << 16 | generation << 8 | attempt, radix: 16)
        return SnapshotID(sequence: sequence, generation: generation, tag: SnapshotTag(String(repeating: "0", count: 16 - hex.count) + hex)!)
    }

    func entry(_ id: SnapshotID, _ kind: SnapshotKind, after parent: SnapshotID?, hours: Double = 0) -> SnapshotEntry {
        SnapshotEntry(id: id, kind: kind, parentTag: parent?.tag, size: 100, lastModified: monday.addingTimeInterval(hours * 3600))
    }

    func head(latest: UInt64, kind: SnapshotKind = .delta, generation: UInt64 = 1) -> SessionHead {
        SessionHead(generation: generation, owner: "test", latest: id(latest), latestKind: kind, base: nil, updatedAt: monday)
    }

    func plan(_ policy: RetentionPolicy, _ entries: [SnapshotEntry], head: SessionHead) throws -> (kept: [UInt64], deleted: [UInt64], orphans: [UInt64]) {
        let plan = try policy.plan(entries, head: head, session: session)
        return (plan.kept.map(\.entry.id.sequence), plan.deleted.map(\.id.sequence), plan.orphans.map(\.id.sequence))
    }

    @Test func keepingADeltaKeepsItsChainBackToTheBase() throws {
        let entries = history([.base, .delta, .delta, .base, .delta, .delta], hours: [0, 1, 2, 3, 4, 5])
        let result = try plan(RetentionPolicy(keepLast: 1), entries, head: head(latest: 6))
        #expect(result.kept == [4, 5, 6])
        #expect(result.deleted == [3, 2, 1], "newest first, so an interrupted prune leaves whole chains")

        // The fourth newest is delta 3: its chain (1, 2) stays with it.
        let longer = try RetentionPolicy(keepLast: 4).plan(entries, head: head(latest: 6), session: session)
        #expect(longer.kept.map(\.entry.id.sequence) == [1, 2, 3, 4, 5, 6])
        #expect(longer.kept.first { $0.entry.id.sequence == 1 }?.reasons == [.chain])
        #expect(longer.kept.first { $0.entry.id.sequence == 6 }?.reasons == [.newest, .last])
    }

    /// The identity hold keeps its snapshot and that snapshot's chain whatever the rules; a hold
    /// naming a snapshot that is gone (or another write attempt at its sequence) keeps nothing.
    @Test func theSnapshotAnIdentityHoldNamesIsKeptWithItsChain() throws {
        let entries = history([.base, .delta, .delta, .base, .delta, .base], hours: [0, 1, 2, 3, 4, 5])
        var held = head(latest: 6, kind: .base)
        held.identityHold = IdentityHold(snapshot: id(2), since: monday)
        let kept = try RetentionPolicy(keepLast: 1).plan(entries, head: held, session: session).kept
        #expect(kept.map(\.entry.id.sequence) == [1, 2, 6])
        #expect(kept.first { $0.entry.id.sequence == 2 }?.reasons == [.lastRegisteredIdentity])
        #expect(kept.first { $0.entry.id.sequence == 1 }?.reasons == [.chain])

        held.identityHold = IdentityHold(snapshot: id(2, attempt: 1), since: monday)
        #expect(try plan(RetentionPolicy(keepLast: 1), entries, head: held).kept == [6])
    }

    @Test func theHeadsSnapshotIsKeptWhateverTheRules() throws {
        // Every other snapshot is older than a week before the newest one.
        let entries = history([.base, .base, .base], hours: [0, 1, 500])
        let result = try plan(RetentionPolicy(keepWithin: .seconds(60)), entries, head: head(latest: 3, kind: .base))
        #expect(result.kept == [3])
        #expect(result.deleted == [2, 1])
    }

    @Test func hourlyDailyAndWeeklyKeepTheNewestOfEachPeriodThatHasOne() throws {
        // Bases at: Mon 00:00, Mon 00:30, Mon 05:00, Tue 01:00, Tue 01:10, Wed 12:00, next Mon 00:00, next Mon 02:00.
        let hours: [Double] = [0, 0.5, 5, 25, 25 + 1.0 / 6, 60, 168, 170]
        let entries = history(Array(repeating: .base, count: hours.count), hours: hours)
        let last = head(latest: 8, kind: .base)
        #expect(try plan(RetentionPolicy(keepHourly: 3), entries, head: last).kept == [6, 7, 8])
        #expect(try plan(RetentionPolicy(keepDaily: 3), entries, head: last).kept == [5, 6, 8])
        #expect(try plan(RetentionPolicy(keepWeekly: 2), entries, head: last).kept == [6, 8])
        #expect(try plan(RetentionPolicy(keepDaily: 100), entries, head: last).kept == [3, 5, 6, 8])
        // Rules add up.
        #expect(try plan(RetentionPolicy(keepLast: 2, keepWeekly: 2), entries, head: last).kept == [6, 7, 8])
    }

    @Test func keepWithinCountsFromTheNewestSnapshotNotFromNow() throws {
        let entries = history([.base, .delta, .base, .delta], hours: [0, 10, 20, 30])
        // 12 hours before the newest (30) reaches back to 20; snapshot 10 (a delta) is then
        // not needed by anything kept, and neither is its base.
        #expect(try plan(RetentionPolicy(keepWithin: .seconds(12 * 3600)), entries, head: head(latest: 4)).kept == [3, 4])
        #expect(try plan(RetentionPolicy(keepWithin: .seconds(21 * 3600)), entries, head: head(latest: 4)).kept == [1, 2, 3, 4])
    }

    @Test func keepChainsIsTheCompactionDefault() throws {
        let entries = history([.base, .delta, .base, .delta, .base, .delta], hours: [0, 1, 2, 3, 4, 5])
        let result = try plan(.compactionDefault, entries, head: head(latest: 6))
        #expect(result.kept == [3, 4, 5, 6])
    }

    @Test func objectsAtOrAboveTheHeadAreNeverTouchedAndUncommittedOnesBelowItGo() throws {
        var entries = history([.base, .delta, .base], hours: [0, 1, 2])
        // Generation 2 claimed the session and committed 4 and 5.
        entries.append(entry(id(4, generation: 2), .delta, after: id(3)))
        entries.append(entry(id(5, generation: 2), .delta, after: id(4, generation: 2)))
        // The fenced generation 1's delta at 4, and a writer of generation 2 that lost the race for 4.
        let fenced = entry(id(4), .delta, after: id(3))
        let lostRace = entry(id(4, generation: 2, attempt: 1), .delta, after: id(3))
        // At the head's sequence, a retry whose head write may still land (no conditional writes);
        // above it, a writer committing right now; and a newer generation's object below it.
        let retry = entry(id(5, generation: 2, attempt: 1), .base, after: id(4, generation: 2))
        let committing = entry(id(6, generation: 2), .delta, after: id(5, generation: 2))
        let newerGeneration = entry(id(3, generation: 3), .base, after: id(2))
        entries += [fenced, lostRace, retry, committing, newerGeneration]
        var current = head(latest: 5, generation: 2)
        current.latest = id(5, generation: 2)
        let plan = try RetentionPolicy(keepLast: 1).plan(entries, head: current, session: session)
        #expect(plan.kept.map(\.entry.id) == [id(3), id(4, generation: 2), id(5, generation: 2)])
        #expect(plan.deleted.map(\.id.sequence) == [2, 1])
        #expect(plan.orphans == [lostRace, fenced])
    }

    /// After a prune, the walk from the head meets a deleted snapshot; it carries on below it.
    /// An object at the deleted one's sequence is certainly not it (another tag): an orphan.
    @Test func theWalkCrossesAPrunedGapAndWhatIsAtTheGapIsAnOrphan() throws {
        var entries = history([.base, .delta, .base, .delta, .base, .delta], hours: [0, 1, 2, 3, 4, 5])
            .filter { ![3, 4].contains($0.id.sequence) }
        let leftover = entry(id(4, attempt: 1), .delta, after: id(3))
        entries.append(leftover)
        let committed = try #require(try SessionStore.committed(entries, head: head(latest: 6), session: session)).snapshots
        #expect(committed.keys.sorted() == [1, 2, 5, 6])
        #expect(committed.values.allSatisfy { $0 != leftover })
        let plan = try RetentionPolicy(keepLast: 1, keepWeekly: 1).plan(entries, head: head(latest: 6), session: session)
        #expect(plan.kept.map(\.entry.id.sequence) == [5, 6])
        #expect(plan.deleted.map(\.id.sequence) == [2, 1])
        #expect(plan.orphans == [leftover])
    }

    /// A writer paused mid-upload (fenced since, or beside a prune) whose object lands below a
    /// gap a prune left: the walk must not take it for the committed snapshot of its sequence, as
    /// it was written after the snapshot naming the gap; and it goes as an orphan.
    @Test func anUploadLandingLateBelowAPrunedGapIsNeitherCommittedNorKept() throws {
        var entries = history([.base, .delta, .base, .delta, .base, .delta], hours: [0, 1, 2, 3, 4, 5])
            .filter { ![3, 4].contains($0.id.sequence) }
        let late = entry(id(2, attempt: 1), .delta, after: id(1), hours: 30)
        entries.append(late)
        let committed = try #require(try SessionStore.committed(entries, head: head(latest: 6), session: session))
        #expect(committed.snapshots[2]?.id == id(2))
        let plan = try RetentionPolicy(keepDaily: 7).plan(entries, head: head(latest: 6), session: session)
        #expect(plan.kept.map(\.entry.id) == [id(5), id(6)])
        #expect(plan.orphans == [late])

        // Without a listed time, an object below the gap is taken on trust, and left to an operator.
        var untimed = late
        untimed.lastModified = nil
        let trusted = entries.filter { $0 != late } + [untimed]
        #expect(try SessionStore.committed(trusted, head: head(latest: 6), session: session)?.snapshots[2] == untimed)
        #expect(try RetentionPolicy(keepLast: 1).plan(trusted, head: head(latest: 6), session: session).orphans.isEmpty)
    }

    @Test func aSnapshotWhoseChainIsBrokenIsNeverPickedInsteadOfARestorableOne() throws {
        // Base 3 went (an interrupted prune): delta 4 cannot be restored.
        let entries = history([.base, .delta, .base, .delta, .base, .delta], hours: [0, 1, 2, 3, 4, 5]).filter { $0.id.sequence != 3 }
        // The three newest that restore: 6, 5 and 2 (with its base 1); delta 4 is passed over.
        let result = try plan(RetentionPolicy(keepLast: 3), entries, head: head(latest: 6))
        #expect(result.kept == [1, 2, 5, 6])
        #expect(result.deleted == [4])
    }

    @Test func aHeadWhoseSnapshotDoesNotRestoreStopsThePrune() throws {
        let entries = history([.base, .delta, .delta], hours: [0, 1, 2]).filter { $0.id.sequence != 2 }
        #expect(throws: SnapshotError.self) { try plan(RetentionPolicy(keepLast: 1), entries, head: head(latest: 3)) }
        #expect(throws: SnapshotError.self) { try plan(RetentionPolicy(keepLast: 1), entries, head: head(latest: 4)) }
    }

    @Test func aLoggedOutSessionKeepsItsTombstone() throws {
        let entries = history([.base, .delta, .tombstone], hours: [0, 1, 2])
        let result = try plan(RetentionPolicy(keepLast: 1), entries, head: head(latest: 3, kind: .tombstone))
        #expect(result.kept == [3])
        #expect(result.deleted == [2, 1])
    }

    @Test func aSessionWithoutACommittedSnapshotIsLeftAlone() throws {
        let entries = history([.base], hours: [0])
        var uncommitted = head(latest: 1)
        uncommitted.latest = nil
        let plan = try RetentionPolicy(keepLast: 1).plan(entries, head: uncommitted, session: session)
        #expect(plan == RetentionPlan())
    }
}
