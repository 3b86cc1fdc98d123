import Synchronization
import SyncEngine
import Testing

@Suite("ConcurrencyLimit")
struct ConcurrencyLimitTests {
    @Test func holdersBeyondTheLimitWaitForARelease() async throws {
        let limit = ConcurrencyLimit(2)
        await limit.acquire()
        await limit.acquire()
        let events = Mutex<[String]>([])
        let third = Task {
            await limit.acquire()
            events.withLock { $0.append("third admitted") }
            limit.release()
        }
        // Time for the third to run ahead if the limit let it through.
        try await Task.sleep(for: .milliseconds(50))
        events.withLock { $0.append("one released") }
        limit.release()
        await third.value
        #expect(events.withLock { $0 } == ["one released", "third admitted"])
        limit.release()
        // Both places are free again: two acquire without waiting.
        await limit.acquire()
        await limit.acquire()
    }
}
