import Dispatch
import Synchronization

/// Runs the tasks that prefer it (`withTaskExecutorPreference`) on a thread of its own rather than
/// on the cooperative pool. The pool has one thread a core (two here), and blocking work anywhere
/// in the process (a file system call, an fsync on a busy disk) can hold both for seconds: what
/// must keep answering meanwhile (the agent's endpoint, a liveness probe's `/healthz`) runs here.
/// Work it starts that may take long goes back to the pool (`globalConcurrentExecutor`), so one
/// slow call never holds the others up.
///
/// A pthread (`startLoopThread`), not a dispatch queue: libdispatch's threads for a queue's
/// priority run out (255) when many loops hold them, and an endpoint waiting for one answers
/// nothing. The thread ends once the executor is released and its jobs have run.
public final class ThreadExecutor: TaskExecutor, Sendable {
    private let jobs: JobQueue

    public init(label: String) throws(SystemError) {
        let jobs = JobQueue()
        self.jobs = jobs
        try startLoopThread(named: label) { jobs.runUntilClosed() }
    }

    deinit {
        jobs.close()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        jobs.append(UnownedJob(job), on: asUnownedTaskExecutor())
    }
}

/// The jobs a `ThreadExecutor`'s thread runs, in order, until the executor is released.
private final class JobQueue: Sendable {
    private struct State {
        var jobs: [(job: UnownedJob, executor: UnownedTaskExecutor)] = []
        var closed = false
    }

    private let state = Mutex(State())
    /// Signalled once per job and once at close.
    private let signal = DispatchSemaphore(value: 0)

    func append(_ job: UnownedJob, on executor: UnownedTaskExecutor) {
        state.withLock { $0.jobs.append((job, executor)) }
        signal.signal()
    }

    func close() {
        state.withLock { $0.closed = true }
        signal.signal()
    }

    func runUntilClosed() {
        while true {
            signal.wait()
            let next = state.withLock { state -> (job: UnownedJob, executor: UnownedTaskExecutor)?? in
                if !state.jobs.isEmpty { return state.jobs.removeFirst() }
                return state.closed ? .some(nil) : nil
            }
            switch next {
            case .some(.some(let next)): next.job.runSynchronously(on: next.executor)
            case .some(.none): return
            case .none: continue
            }
        }
    }
}
