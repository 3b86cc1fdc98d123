/// Which sessions upload next: in the order they were queued, each queued once however often it
/// is asked for, at most `limit` uploading at once. Decisions only: `SyncService` starts what
/// `next()` hands it and says when each upload ends. Queued is not the same as pending: a failed
/// or unsettled upload leaves its session pending but waiting for its retry, not queued.
struct UploadQueue {
    /// Sessions uploading at once.
    let limit: Int
    private(set) var waiting: [SessionID] = []
    private var queued: Set<SessionID> = []
    private(set) var running = 0

    init(limit: Int) {
        self.limit = limit
    }

    /// Nothing waits and nothing runs.
    var isIdle: Bool { running == 0 && waiting.isEmpty }

    mutating func enqueue(_ id: SessionID) {
        guard queued.insert(id).inserted else { return }
        waiting.append(id)
    }

    /// The next session to look at when a slot is free; nil when none is. The caller calls
    /// `started()` if it starts its upload (it may find nothing to upload).
    mutating func next() -> SessionID? {
        guard running < limit, !waiting.isEmpty else { return nil }
        let id = waiting.removeFirst()
        queued.remove(id)
        return id
    }

    mutating func started() {
        running += 1
    }

    mutating func finished() {
        running -= 1
    }
}
