import Synchronization
import SystemSupport
import Testing

@Suite struct ConcurrentMapTests {
    /// How many transforms run at once, and the most there ever were.
    final class Occupancy: Sendable {
        private let state = Mutex((running: 0, most: 0))
        func enter() { state.withLock { $0.running += 1; $0.most = max($0.most, $0.running) } }
        func leave() { state.withLock { $0.running -= 1 } }
        var most: Int { state.withLock { $0.most } }
    }

    struct Refused: Error, Equatable {}

    @Test func keepsTheElementsOrder() async throws {
        let results = try await Array(0..<50).concurrentMap(limit: 4) { value in
            // Later elements finish first.
            try await Task.sleep(for: .milliseconds(50 - value))
            return value * 2
        }
        #expect(results == Array(0..<50).map { $0 * 2 })
    }

    @Test func runsAtMostLimitAtOnce() async throws {
        let occupancy = Occupancy()
        _ = try await Array(0..<40).concurrentMap(limit: 3) { value in
            occupancy.enter()
            defer { occupancy.leave() }
            try await Task.sleep(for: .milliseconds(5))
            return value
        }
        #expect(occupancy.most == 3)
    }

    @Test func rethrowsTheFirstErrorAndStartsNoMore() async {
        let started = Mutex(0)
        await #expect(throws: Refused.self) {
            _ = try await Array(0..<100).concurrentMap(limit: 2) { value in
                started.withLock { $0 += 1 }
                if value == 3 { throw Refused() }
                try await Task.sleep(for: .milliseconds(5))
                return value
            }
        }
        #expect(started.withLock { $0 } < 100)
    }

    @Test func mapsAnEmptyCollection() async throws {
        #expect(try await [Int]().concurrentMap(limit: 1) { $0 }.isEmpty)
    }

    @Test func runsBlockingWorkAndItsError() async throws {
        #expect(try await runBlocking { () throws(Refused) in 42 } == 42)
        await #expect(throws: Refused.self) { try await runBlocking { () throws(Refused) -> Int in throw Refused() } }
    }
}
