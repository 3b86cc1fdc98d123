import Glibc

/// Starts `body` on a thread of its own, for a loop that blocks for as long as its owner lives
/// (inotify's poll, curl's multi loop); `name` says what for when the thread cannot start.
///
/// A pthread, not a dispatch queue: libdispatch gives the queues of one priority at most 255
/// threads, and loops held there for good (one per watcher, one per S3 client: over a hundred at
/// once in a test run) left none to `runBlocking`'s short work, whose callers then waited for
/// minutes.
public func startLoopThread(named name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
    let context = Unmanaged.passRetained(LoopThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { context in
        Unmanaged<LoopThreadBody>.fromOpaque(context!).takeRetainedValue().body()
        return nil
    }, context)
    guard result == 0 else {
        Unmanaged<LoopThreadBody>.fromOpaque(context).release()
        throw SystemError("cannot start a thread for \(name)", errno: result)
    }
    pthread_detach(thread)
}

private final class LoopThreadBody {
    let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
    }
}
