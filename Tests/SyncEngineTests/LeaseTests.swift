import Foundation
import Logging
import SessionCrypto
@testable import SyncEngine
import TestSupport
import Testing

/// The lease decision alone, with the clock passed in.
@Suite("Lease expiry")
struct LeaseExpiryTests {
    let start = ContinuousClock.now

    func lease(instance: String = "host/1/1", renewal: UInt64, ttl: Duration = .seconds(30)) -> AgentLease {
        AgentLease(
            agent: "worker-1:/sessions", instance: instance, renewal: renewal,
            ttlMilliseconds: ttl.components.seconds * 1000, renewedAt: Date(timeIntervalSince1970: 0))
    }

    @Test func noLeaseIsExpired() {
        var expiry = LeaseExpiry()
        #expect(expiry.observe(nil, at: start) == .expired)
    }

    @Test func aLeaseSeenUnchangedForAWholeTTLOnTheAcquirersClockExpires() {
        var expiry = LeaseExpiry()
        // Its renewedAt (the holder's clock, 1970 here) plays no part.
        #expect(expiry.observe(lease(renewal: 7), at: start) == .alive(expiresAt: start + .seconds(30)))
        #expect(expiry.observe(lease(renewal: 7), at: start + .seconds(29)) == .alive(expiresAt: start + .seconds(30)))
        #expect(expiry.observe(lease(renewal: 7), at: start + .seconds(30)) == .expired)
    }

    @Test func aRenewalOrANewProcessStartsTheTTLAgain() {
        var expiry = LeaseExpiry()
        _ = expiry.observe(lease(renewal: 7), at: start)
        #expect(expiry.observe(lease(renewal: 8), at: start + .seconds(20)) == .alive(expiresAt: start + .seconds(50)))
        // The same renewal number from a restarted process (its counter starts again) is a change.
        #expect(
            expiry.observe(lease(instance: "host/2/9", renewal: 8), at: start + .seconds(40)) == .alive(expiresAt: start + .seconds(70)))
        #expect(expiry.observe(lease(instance: "host/2/9", renewal: 8), at: start + .seconds(70)) == .expired)
    }

    @Test func aLeaseThatWentAwayAndCameBackIsWatchedAfresh() {
        var expiry = LeaseExpiry()
        _ = expiry.observe(lease(renewal: 3), at: start)
        #expect(expiry.observe(nil, at: start + .seconds(1)) == .expired)
        #expect(expiry.observe(lease(renewal: 3), at: start + .seconds(2)) == .alive(expiresAt: start + .seconds(32)))
    }

    /// The store's own times (the holder's lease against the acquirer's write of its own) show a
    /// lease long dead at the first look, past the TTL and the margin for their precision.
    @Test func aLeaseTheStoreWroteLongBeforeTheAcquirersOwnIsExpiredAtOnce() {
        var expiry = LeaseExpiry()
        #expect(expiry.observe(lease(renewal: 4), staleBy: .seconds(31), at: start) == .alive(expiresAt: start + .seconds(30)))
        #expect(expiry.observe(lease(renewal: 4), staleBy: .seconds(32), at: start) == .expired)
        // A holder's clock, or the acquirer's wall clock, plays no part: only the store's two times.
        #expect(expiry.observe(lease(renewal: 5), staleBy: .seconds(-3600), at: start) == .alive(expiresAt: start + .seconds(30)))
    }

    @Test func anOverlongTTLIsCapped() {
        var expiry = LeaseExpiry()
        #expect(expiry.observe(lease(renewal: 1, ttl: .seconds(86_400)), at: start) == .alive(expiresAt: start + LeaseExpiry.maxTTL))
    }

    @Test func whoHasASessionAsAnAcquireSeesIt() {
        var head = SessionHead(generation: 3, owner: "a/1/1", latest: nil, latestKind: nil, base: nil, updatedAt: Date())
        #expect(head.holding(for: "b") == .obtainable(.unclaimed))  // written before leases
        head.agent = "a"
        #expect(head.holding(for: "b") == .heldBy("a"))
        #expect(head.holding(for: "a") == .obtainable(.sameHolder))
        head.released = .init(snapshot: nil, at: Date())
        #expect(head.holding(for: "b") == .obtainable(.released))
        head.released = nil
        head.latestKind = .tombstone
        #expect(head.holding(for: "b") == .obtainable(.unclaimed))
        let claimed = head.claimed(owner: "b/2/2", agent: "b", at: Date())
        #expect(claimed.generation == 4 && claimed.agent == "b" && claimed.owner == "b/2/2" && claimed.released == nil)
    }

    @Test func theDefaultAgentIDIsTheHostAndTheSessionsDirectoryAndAlwaysAValidID() {
        #expect(AgentIdentity.defaultID(host: "worker-1", sessionsDirectory: "/data/./sessions/") == "worker-1:/data/sessions")
        for path in ["/data/line\nbreak", "/" + String(repeating: "long/", count: 100)] {
            let id = AgentIdentity.defaultID(host: "worker-1", sessionsDirectory: path)
            #expect(id.hasPrefix("worker-1:sha256:") && id.utf8.count == "worker-1:sha256:".utf8.count + 16, "\(id)")
            #expect(AgentIdentity.defect(ofID: id) == nil)
        }
        #expect(AgentIdentity.defect(ofID: "") != nil && AgentIdentity.defect(ofID: "a\tb") != nil)
    }

    @Test func theLeaseKeyNamesNoAgentAndDependsOnTheNamingSecret() {
        let (one, two) = (StoreNaming.generate(), StoreNaming.generate())
        let key = LeaseStore.key(agent: "worker-1:/sessions", naming: one)
        #expect(key.hasPrefix("agents/") && key.hasSuffix("/lease") && key.utf8.count == "agents/".utf8.count + 32 + "/lease".utf8.count)
        #expect(!key.contains("worker"))
        #expect(key == LeaseStore.key(agent: "worker-1:/sessions", naming: one))
        #expect(key != LeaseStore.key(agent: "worker-2:/sessions", naming: one))
        #expect(key != LeaseStore.key(agent: "worker-1:/sessions", naming: two))
    }
}

/// Moves between two agents on one store, through the engine: release, acquire, leases, fencing.
extension SyncServiceTests {
    func leaseHolder(_ agent: String, ttl: Duration = .seconds(2)) -> LeaseHolder {
        LeaseHolder(
            agent: AgentIdentity(id: agent, instance: "\(agent)/\(UInt32.random(in: 0...UInt32.max))"), ttl: ttl,
            leases: LeaseStore(sessionStore, conditionalWrites: true))
    }

    /// An upload queued before a release that runs after it commits nothing: the released head
    /// stays as the release wrote it, naming the final snapshot.
    @Test func aReleasedReplicatorCommitsNothingMore() async throws {
        try makeSession("s1", files: ["creds.json": "{\"v\":1}"])
        let replicator = SessionReplicator(
            session: SessionID("s1")!, directory: "\(sessionsRoot)/s1", sessionStore: sessionStore, owner: "a/1/1", agent: "a",
            conditionalWrites: true, logger: Logger(label: "test"))
        _ = try await replicator.sync()
        let released = try await replicator.release()
        try makeSession("s1", files: ["creds.json": "{\"v\":2}"])
        #expect(try await replicator.sync() == .unchanged(unsettled: []))
        let head = try #require(try await sessionStore.head(SessionID("s1")!))
        #expect(head.head.latest == released.latest)
        #expect(head.head.released != nil && head.head.released?.snapshot == released.released?.snapshot)
    }

    func acquirer(_ lease: LeaseHolder, wait: Duration, takeOver: Bool = false) -> SessionAcquirer {
        SessionAcquirer(
            sessionStore: sessionStore, lease: lease, options: AcquireOptions(waitRelease: wait, takeOver: takeOver), conditionalWrites: true)
    }

    func restored(_ session: String) async throws -> String {
        let into = workspace.file("restored-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(atPath: into, withIntermediateDirectories: true)
        _ = try await SessionRestorer(sessionStore: sessionStore).restore(SessionID(session)!, into: into)
        return try String(contentsOfFile: "\(into)/\(session)/creds.json", encoding: .utf8)
    }

    /// A write made just before the release call is in the snapshot the release names, whatever
    /// the debounce; nothing written after it is uploaded; a second release answers the same.
    @Test func releaseCommitsWhatWasWrittenBeforeItAndThenStopsWriting() async throws {
        let sync = service(lease: leaseHolder("a")) { $0.watcher.quietPeriod = .seconds(2); $0.watcher.maxDelay = .seconds(10) }
        try makeSession("s1", files: ["creds.json": "{\"v\":1}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        try makeSession("s1", files: ["creds.json": "{\"v\":2}"])
        let released = try await sync.release(SessionID("s1")!, timeout: .seconds(120))
        #expect(try await restored("s1") == "{\"v\":2}")
        let head = try #require(try await sessionStore.head(SessionID("s1")!)?.head)
        #expect(head.released?.snapshot.map { "\($0)" } == released.snapshot)
        #expect(head.agent == "a")
        try await waitFor(sync, "s1", "released") { $0.state == .released }

        try makeSession("s1", files: ["creds.json": "{\"v\":3}"])
        try await Task.sleep(for: .seconds(3))
        #expect(try await sessionStore.head(SessionID("s1")!)?.head == head)
        #expect(try await sync.release(SessionID("s1")!, timeout: .seconds(1)) == released)
        await #expect(throws: SessionControlError.self) { _ = try await sync.flush(SessionID("s1")!, timeout: .seconds(1)) }
        running.cancel()
        let report = try await running.value
        #expect(report.isComplete, "a released session is handed over, not left unflushed")
    }

    @Test func aReleasedSessionIsAcquiredAtOnceAndTheSameAgentNeverWaits() async throws {
        let a = leaseHolder("a", ttl: .seconds(60))
        let sync = service(lease: a)
        try makeSession("s1", files: ["creds.json": "{\"v\":1}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        let started = ContinuousClock.now
        _ = try await sync.release(SessionID("s1")!, timeout: .seconds(120))
        #expect(try await acquirer(leaseHolder("b"), wait: .seconds(60)).acquire(SessionID("s1")!) == .released)
        // B restarted (another process of the same agent) takes it at once, though B's lease is alive.
        #expect(try await acquirer(leaseHolder("b"), wait: .seconds(60)).acquire(SessionID("s1")!) == .sameHolder)
        #expect(ContinuousClock.now - started < .seconds(30), "no acquire waited for a lease")
        #expect(try await sessionStore.head(SessionID("s1")!)?.head.agent == "b")
        running.cancel()
        _ = try await running.value
    }

    /// A live holder keeps the session past the wait (held_elsewhere, nothing changed); a take-over
    /// fences it: its next commit fails, it shows `fenced` and commits nothing more.
    @Test func aLiveHolderKeepsItsSessionUnlessTakenOverAndThenIsFenced() async throws {
        // A TTL longer than B's wait: a live holder whatever the machine's load (this process's
        // pool, where A renews, can be held for seconds by other tests); that renewals keep a
        // lease alive past its TTL is `LeaseExpiry`'s test.
        let sync = service(lease: leaseHolder("a", ttl: .seconds(60)))
        try makeSession("s1", files: ["creds.json": "{\"v\":1}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        let before = try await sessionStore.head(SessionID("s1")!)

        let b = leaseHolder("b")
        let error = await #expect(throws: SessionControlError.self) {
            _ = try await acquirer(b, wait: .seconds(3)).acquire(SessionID("s1")!)
        }
        #expect(error?.reason == .heldElsewhere)
        #expect(try await sessionStore.head(SessionID("s1")!)?.etag == before?.etag)

        #expect(try await acquirer(b, wait: .zero, takeOver: true).acquire(SessionID("s1")!) == .takenOver)
        let taken = try #require(try await sessionStore.head(SessionID("s1")!))
        try makeSession("s1", files: ["creds.json": "{\"v\":2}"])
        try await waitFor(sync, "s1", "fenced") { $0.state == .fenced }
        try makeSession("s1", files: ["creds.json": "{\"v\":3}"])
        try await Task.sleep(for: .seconds(2))
        #expect(try await sessionStore.head(SessionID("s1")!)?.etag == taken.etag, "the fenced holder committed nothing")
        running.cancel()
        _ = try await running.value
    }

    /// A holder that stops renewing (killed) loses its sessions after a TTL on the acquirer's clock;
    /// restarted with its old identity and an old copy, it is fenced and overwrites nothing.
    @Test func aDeadHoldersLeaseExpiresAndItsRestartIsFenced() async throws {
        let dead = leaseHolder("a", ttl: .seconds(1))
        let sync = service(lease: dead)
        try makeSession("s1", files: ["creds.json": "{\"v\":1}"])
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        running.cancel()  // stands for SIGKILL: no release (it never got the flush done)...
        _ = try await running.value
        // ...as a kill leaves it: held, not released.
        var head = try #require(try await sessionStore.head(SessionID("s1")!))
        head.head.released = nil
        try await sessionStore.writeHead(head.head, session: SessionID("s1")!, condition: .ifMatch(etag: head.etag))

        let started = ContinuousClock.now
        #expect(try await acquirer(leaseHolder("b"), wait: .seconds(60)).acquire(SessionID("s1")!) == .leaseExpired)
        #expect(ContinuousClock.now - started >= .seconds(1), "a whole TTL on the acquirer's clock")
        let taken = try #require(try await sessionStore.head(SessionID("s1")!))

        try makeSession("s1", files: ["creds.json": "{\"stale\":1}"])
        let restarted = service(lease: leaseHolder("a", ttl: .seconds(1)))
        let again = Task { try await restarted.run(shutdownTimeout: .seconds(60)) }
        defer { again.cancel() }
        try await waitFor(restarted, "s1", "fenced") { $0.state == .fenced }
        #expect(try await sessionStore.head(SessionID("s1")!)?.etag == taken.etag)
        #expect(try await restored("s1") == "{\"v\":1}")
        again.cancel()
        _ = try await again.value
    }

    @Test func stoppingReleasesEveryFlushedSessionSoTheNextAcquireDoesNotWait() async throws {
        let sync = service(lease: leaseHolder("a", ttl: .seconds(60)))
        for name in ["s1", "s2"] { try makeSession(name, files: ["creds.json": "{\"\(name)\":1}"]) }
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        try await waitFor(sync, "s2", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        try makeSession("s2", files: ["creds.json": "{\"s2\":2}"])
        running.cancel()
        let report = try await running.value
        #expect(report.isComplete && report.released.map(\.rawValue) == ["s1", "s2"])
        for name in ["s1", "s2"] {
            #expect(try await acquirer(leaseHolder("b"), wait: .zero).acquire(SessionID(name)!) == .released)
        }
        #expect(try await restored("s2") == "{\"s2\":2}")
    }

    /// The lease costs one write per TTL/3 for the agent, however many sessions it holds; idle
    /// sessions cost none.
    @Test func renewingTheLeaseCostsOneWritePerIntervalWhateverTheNumberOfSessions() async throws {
        let sessions = 50
        for index in 0..<sessions { try makeSession("s\(index)", files: ["creds.json": "{\"i\":\(index)}"]) }
        let sync = service(lease: leaseHolder("a", ttl: .seconds(3)))
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        for index in 0..<sessions { try await waitFor(sync, "s\(index)", "synced") { $0.state == .synced && $0.lastSnapshot != nil } }
        let before = store.keysWritten.count
        let started = ContinuousClock.now
        try await Task.sleep(for: .seconds(6))
        let elapsed = ContinuousClock.now - started
        let written = store.keysWritten.dropFirst(before)
        #expect(written.allSatisfy { $0.hasPrefix("agents/") }, "\(written.filter { !$0.hasPrefix("agents/") })")
        // One per second (TTL/3); a loaded machine may delay renewals, never add any.
        #expect(written.count <= Int(elapsed / .seconds(1)) + 1)
        #expect(written.count >= 1)
        running.cancel()
        _ = try await running.value
    }
}

extension SyncServiceTests {
    /// A second agent on a sessions root of its own, on the same store.
    func otherAgent(_ agent: String) throws -> (SyncService, root: String) {
        let root = workspace.file("sessions-\(agent)")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var settings = WatchSettings()
        settings.watcher.quietPeriod = .milliseconds(50)
        settings.watcher.maxDelay = .milliseconds(500)
        let service = SyncService(
            root: root, sessionStore: sessionStore, owner: "\(agent)/1", mode: .local, conditionalWrites: true,
            settings: settings, lease: leaseHolder(agent), logger: Logger(label: "test"))
        return (service, root)
    }

    /// The worker's runtime move: release on A, acquire on B (restored, then watched without a new
    /// snapshot of what it restored), B's writes committed and A's ignored; then B's logout.
    @Test func aRunningAgentAcquiresAReleasedSessionWatchesItAndLogsItOut() async throws {
        let a = service(lease: leaseHolder("a"))
        try makeSession("s1", files: ["creds.json": "{\"v\":1}"])
        let runningA = Task { try await a.run(shutdownTimeout: .seconds(60)) }
        defer { runningA.cancel() }
        try await waitFor(a, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        try makeSession("s1", files: ["creds.json": "{\"v\":2}"])
        _ = try await a.release(SessionID("s1")!, timeout: .seconds(120))
        let releasedHead = try #require(try await sessionStore.head(SessionID("s1")!)?.head)

        let (b, rootB) = try otherAgent("b")
        let runningB = Task { try await b.run(shutdownTimeout: .seconds(60)) }
        defer { runningB.cancel() }
        let report = try await b.acquire(SessionID("s1")!, options: AcquireOptions(waitRelease: .seconds(60)))
        #expect(report.recoveredSessions.map(\.acquired) == ["released"])
        #expect(report.recoveredSessions.map(\.status) == ["restored"])
        #expect(try String(contentsOfFile: "\(rootB)/s1/creds.json", encoding: .utf8) == "{\"v\":2}")
        try await waitFor(b, "s1", "synced") { $0.state == .synced }
        try await Task.sleep(for: .seconds(2))
        let acquiredHead = try #require(try await sessionStore.head(SessionID("s1")!)?.head)
        // The swap is no change: at most one snapshot, of the restored state (here the chain is due
        // for a new base: its one delta is as large as its base).
        #expect(acquiredHead.latest!.sequence <= releasedHead.latest!.sequence + 1, "\(acquiredHead)")
        #expect(try await restored("s1") == "{\"v\":2}")
        #expect(acquiredHead.agent == "b" && acquiredHead.released == nil)

        try makeSession("s1", files: ["creds.json": "{\"v\":3}"])  // A's old copy: not A's any more
        try Data("{\"v\":4}".utf8).write(to: URL(fileURLWithPath: "\(rootB)/s1/creds.json"))
        let flushed = try await b.flush(SessionID("s1")!, timeout: .seconds(120))
        #expect(flushed.snapshot != nil && flushed.snapshot != releasedHead.latest.map { "\($0)" })
        #expect(try await restored("s1") == "{\"v\":4}")

        _ = try await b.logout(SessionID("s1")!, timeout: .seconds(120))
        #expect(!FileManager.default.fileExists(atPath: "\(rootB)/s1"))
        #expect(try await sessionStore.head(SessionID("s1")!)?.head.isTombstoned == true)
        let unknown = await #expect(throws: SessionControlError.self) { _ = try await b.flush(SessionID("nope")!, timeout: .seconds(1)) }
        #expect(unknown?.reason == .unknownSession)
        runningA.cancel()
        runningB.cancel()
        _ = try await runningA.value
        _ = try await runningB.value
    }
}

extension SyncServiceTests {
    /// A holder dead long ago (its lease file written an hour before, as the store lists it) is
    /// taken at the first look, not a TTL later.
    @Test func aLeaseTheStoreListsAsLongStaleIsExpiredWithoutWaitingATTL() async throws {
        let dead = leaseHolder("a", ttl: .seconds(60))
        try await dead.renew()
        try await sessionStore.writeHead(
            SessionHead(generation: 1, owner: dead.agent.instance, latest: nil, latestKind: nil, base: nil, updatedAt: Date())
                .claimed(owner: dead.agent.instance, agent: "a", at: Date()),
            session: SessionID("s1")!, condition: nil)
        let leaseFile = workspace.file("store/" + LeaseStore.key(agent: "a", naming: try await sessionStore.naming()!))
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: leaseFile)

        let started = ContinuousClock.now
        #expect(try await acquirer(leaseHolder("b"), wait: .seconds(120)).acquire(SessionID("s1")!) == .leaseExpired)
        #expect(ContinuousClock.now - started < .seconds(60), "decided from the store's times, not after a TTL")
    }
}

/// What keeps a planned move short: a release that commits at once, and chains kept short across holders.
extension SyncServiceTests {
    /// The write pause (`WritePause`: a time without writes before a snapshot's reads) holds a snapshot back so it
    /// does not take half of a writer's transaction; a release is asked once the worker stopped
    /// writing, so it commits what is there at once. Here the pause is 30 s: the release comes well
    /// before it is over, and still names the last write.
    @Test func aReleaseCommitsAtOnceWithoutWaitingOutTheWritePause() async throws {
        let sync = service(lease: leaseHolder("a")) { $0.writePause = WritePause(length: .seconds(30), patience: .seconds(300)) }
        try makeSession("s1", files: ["creds.json": "{\"v\":1}"])
        // Written long ago: the first upload has no pause to wait for.
        for path in ["\(sessionsRoot)/s1/creds.json", "\(sessionsRoot)/s1"] {
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: path)
        }
        let running = Task { try await sync.run(shutdownTimeout: .seconds(60)) }
        defer { running.cancel() }
        try await waitFor(sync, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        try makeSession("s1", files: ["creds.json": "{\"v\":2}"])
        let started = ContinuousClock.now
        _ = try await sync.release(SessionID("s1")!, timeout: .seconds(120))
        #expect(ContinuousClock.now - started < .seconds(30), "the release waited out the write pause")
        #expect(try await restored("s1") == "{\"v\":2}")
        running.cancel()
        _ = try await running.value
    }

    /// A session moved back and forth never reaches `maxChainLength` (500) by one holder's deltas,
    /// yet each acquire downloads its whole chain: the agent that acquires a chain of
    /// `maxChainLengthAfterAcquire` deltas or more writes a base at once, so the next move
    /// restores a short one. A shorter chain is left as it is.
    @Test func anAcquiredLongChainGetsABaseAtOnceAndAShortOneDoesNot() async throws {
        let a = service(lease: leaseHolder("a"))
        // A large file no delta rewrites: the deltas never add up to the base (deltaToBaseRatio).
        let large = (0..<4000).map { "\"k\($0)\":\($0 * 7919 % 104_729)" }.joined(separator: ",")
        try makeSession("s1", files: ["creds.json": "{\"v\":0}", "app-state-sync-key-1.json": "{\(large)}"])
        let runningA = Task { try await a.run(shutdownTimeout: .seconds(60)) }
        defer { runningA.cancel() }
        try await waitFor(a, "s1", "synced") { $0.state == .synced && $0.lastSnapshot != nil }
        let session = SessionID("s1")!
        func chainLength() async throws -> Int {
            try await sessionStore.chain(session, head: try #require(try await sessionStore.head(session)?.head)).count
        }
        for version in 1...3 {
            try makeSession("s1", files: ["creds.json": "{\"v\":\(version)}"])
            _ = try await a.flush(session, timeout: .seconds(120))
        }
        _ = try await a.release(session, timeout: .seconds(120))
        #expect(try await chainLength() == 4)

        let (b, rootB) = try otherAgent("b")
        let runningB = Task { try await b.run(shutdownTimeout: .seconds(60)) }
        defer { runningB.cancel() }
        _ = try await b.acquire(session, options: AcquireOptions(waitRelease: .seconds(60)))
        try await waitFor(b, "s1", "synced") { $0.state == .synced }
        try await Task.sleep(for: .seconds(1))
        #expect(try await chainLength() == 4, "a chain of 3 deltas is restored as it is")

        for version in 4...11 {
            try Data("{\"v\":\(version)}".utf8).write(to: URL(fileURLWithPath: "\(rootB)/s1/creds.json"))
            _ = try await b.flush(session, timeout: .seconds(120))
        }
        #expect(try await chainLength() == 12)
        _ = try await b.release(session, timeout: .seconds(120))

        // Back to A, which acquires the 11 deltas and writes a base without a change to upload.
        _ = try await a.acquire(session, options: AcquireOptions(waitRelease: .seconds(60)))
        let deadline = ContinuousClock.now + .seconds(180)
        while try await chainLength() != 1, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
        let head = try #require(try await sessionStore.head(session)?.head)
        #expect(head.latestKind == .base && head.agent == "a" && head.released == nil)
        #expect(try await restored("s1") == "{\"v\":11}")
        // Then A's changes are deltas again, against the new base.
        try makeSession("s1", files: ["creds.json": "{\"v\":12}"])
        _ = try await a.flush(session, timeout: .seconds(120))
        #expect(try await sessionStore.head(session)?.head.latestKind == .delta)
        #expect(try await chainLength() == 2)
        runningA.cancel()
        runningB.cancel()
        _ = try await runningA.value
        _ = try await runningB.value
    }
}
