import Foundation
@testable import SyncEngine
import Testing

@Suite("A snapshot waits for a pause in its session's writes")
struct WritePauseTests {
    let pause = WritePause(length: .milliseconds(100), patience: .seconds(1))
    let second: Int64 = 1_000_000_000

    @Test func aWriteInThePauseBeforeTheReadsOrDuringThemIsRecent() {
        let start = 50 * second
        #expect(!pause.isRecent(start - second, readsStartedAt: start, now: start + 10))
        #expect(!pause.isRecent(start - 100_000_000, readsStartedAt: start, now: start + 10))
        #expect(pause.isRecent(start - 99_000_000, readsStartedAt: start, now: start + 10))
        #expect(pause.isRecent(start + 5, readsStartedAt: start, now: start + 10))
        // A modification time in the future is a clock's doing, not a writer's.
        #expect(!pause.isRecent(start + second, readsStartedAt: start, now: start + 10))
    }

    @Test func theNextTryComesOnceThePauseAfterTheLastWriteIsOver() {
        let now = 50 * second
        #expect(pause.remaining(afterWriteAt: now - 30_000_000, now: now) == .milliseconds(71))
        #expect(pause.remaining(afterWriteAt: now - second, now: now) == .milliseconds(1))
    }

    @Test func patienceEndsTheWait() {
        #expect(pause.isPatient(after: .milliseconds(999)))
        #expect(!pause.isPatient(after: .seconds(1)))
    }
}
