/// What the store last said, by a probe or an upload: readiness follows it.
enum StoreHealth: Equatable {
    case unknown
    case answered
    case failed(String)

    /// An upload failed with `error`. Only a store that does not answer or refuses makes it
    /// unhealthy; `committed`: the primary store took the snapshot and something after it failed
    /// (the mirror's copy), which says nothing about the primary store's health.
    mutating func uploadFailed(_ error: any Error, committed: Bool) {
        guard !committed, let storeError = error as? StoreError else { return }
        switch storeError {
        case .unavailable, .rejected: self = .failed("\(storeError)")
        case .preconditionFailed, .io, .invalidObject: break
        }
    }
}

extension Readiness {
    /// Ready once the start-up scan has had every session it found compared (uploaded, found
    /// unchanged, or failed: `startupComparison` holds those left, nil until the scan) and the
    /// store answered its last probe or upload. `notBackedUp` is named beside "ready".
    static func of(store: StoreHealth, startupComparison: Set<SessionID>?, notBackedUp: [String]) -> Readiness {
        switch store {
        case .unknown: return Readiness(isReady: false, reason: "waiting for the store's first answer")
        case .failed(let reason): return Readiness(isReady: false, reason: "the store does not answer: \(reason)")
        case .answered: break
        }
        guard let remaining = startupComparison else {
            return Readiness(isReady: false, reason: "starting: watching the sessions directory")
        }
        guard remaining.isEmpty else {
            return Readiness(isReady: false, reason: "starting: \(remaining.count) session(s) to compare with the store")
        }
        return Readiness(isReady: true, reason: (["ready"] + notBackedUp).joined(separator: "; "))
    }

    /// What readiness names beside "ready": none of it is fixed by waiting, so it does not make
    /// the agent unready (and its pod leave service), but it is never left unsaid.
    /// `skippedFiles`: the files left out, for each session backed up without some.
    static func notBackedUp(
        refused: [SessionID: Refusal], skippedFiles: [[SkippedFile]], identityChanged: Int, unwatched: Int,
        comparedEvery interval: Duration
    ) -> [String] {
        var notes: [String] = []
        if !refused.isEmpty {
            let named = refused.keys.sorted().prefix(5).map { "\($0) (\(refused[$0]!.rawValue))" }
            notes.append("\(refused.count) session(s) not backed up: \(named.joined(separator: ", "))\(refused.count > 5 ? ", …" : "")")
        }
        let partial = skippedFiles.filter { !$0.isEmpty }
        if !partial.isEmpty {
            let files = partial.map(\.count).reduce(0, +)
            notes.append("\(files) file(s) not backed up in \(partial.count) session(s) (see /sessions)")
        }
        if identityChanged > 0 {
            notes.append("\(identityChanged) session(s) whose registered identity was replaced (identity_changed, see /sessions)")
        }
        if unwatched > 0 {
            notes.append("\(unwatched) session(s) without an inotify watch (fs.inotify.max_user_watches reached), "
                + "compared every \(interval)")
        }
        return notes
    }
}
