import Synchronization

/// Lets at most `limit` holders through at once; the others wait, first come first served.
/// Release is synchronous, so a holder can give its place back in a `defer`.
public final class ConcurrencyLimit: Sendable {
    private struct State {
        var available: Int
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    public init(_ limit: Int) {
        precondition(limit > 0, "a limit lets at least one through")
        state = Mutex(State(available: limit))
    }

    public func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let admitted = state.withLock { state in
                guard state.available > 0 else {
                    state.waiting.append(continuation)
                    return false
                }
                state.available -= 1
                return true
            }
            if admitted { continuation.resume() }
        }
    }

    /// Gives a place back: to the first waiting, if any.
    public func release() {
        let next = state.withLock { state in
            guard !state.waiting.isEmpty else {
                state.available += 1
                return nil as CheckedContinuation<Void, Never>?
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}
