import Dispatch

/// Runs `work`, which blocks its thread (file system calls, fsync, syncfs, compression), on a
/// thread of its own rather than one of the cooperative pool's: the pool has one thread a core,
/// and a task blocked there stalls every other task waiting for that thread (on two cores, a few
/// restores fsyncing starve the rest of the process).
public func runBlocking<Value: Sendable, Failure: Error>(
    _ work: @escaping @Sendable () throws(Failure) -> Value
) async throws(Failure) -> Value {
    let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Value, Failure>, Never>) in
        // A serial queue of its own: serial queues overcommit, so the work gets a thread even when
        // others block. A concurrent queue shares a pool about as wide as the cores, and a few
        // long restores there held up every store write behind them for a minute.
        DispatchQueue(label: "sync-agent.blocking-work").async {
            continuation.resume(returning: Result { () throws(Failure) in try work() })
        }
    }
    return try result.get()
}
