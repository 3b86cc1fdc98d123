import Dispatch

/// Runs the tasks that prefer it on a serial dispatch queue, that is on a thread of its own rather
/// than on the cooperative pool. The pool has as many threads as cores (two here), and with the
/// whole suite running, other tests' blocking work was seen to hold both for many seconds: an
/// in-process server under a timing test (the endpoint's connection lifetime) runs here instead.
public final class DedicatedExecutor: TaskExecutor, @unchecked Sendable {
    private let queue: DispatchQueue

    public init(label: String) {
        queue = DispatchQueue(label: label)
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
