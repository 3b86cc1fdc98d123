import Dispatch

/// Runs the tasks that prefer it (`withTaskExecutorPreference`) on a serial dispatch queue, that
/// is on a thread of its own rather than on the cooperative pool. The pool has one thread a core
/// (two here), and blocking work anywhere in the process (a file system call, an fsync on a busy
/// disk) can hold both for seconds: what must keep answering meanwhile (the agent's endpoint, a
/// liveness probe's `/healthz`) runs here. Work it starts that may take long goes back to the
/// pool (`globalConcurrentExecutor`), so one slow call never holds the others up.
public final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let queue: DispatchQueue

    public init(label: String) {
        queue = DispatchQueue(label: label)
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
