import Dispatch

/// Runs `work`, which blocks its thread (file system calls, fsync, syncfs, compression), on a
/// thread of its own rather than one of the cooperative pool's: the pool has one thread a core,
/// and a task blocked there stalls every other task waiting for that thread (on two cores, a few
/// restores fsyncing starve the rest of the process).
public func runBlocking<Value: Sendable, Failure: Error>(
    _ work: @escaping @Sendable () throws(Failure) -> Value
) async throws(Failure) -> Value {
    let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Value, Failure>, Never>) in
        blockingWorkQueue.async {
            continuation.resume(returning: Result { () throws(Failure) in try work() })
        }
    }
    return try result.get()
}

private let blockingWorkQueue = DispatchQueue(label: "sync-agent.blocking-work", attributes: .concurrent)
